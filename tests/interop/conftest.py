"""Fixtures of the interop tests: a stock MAAS peer linked to this package.

``link`` is a working :class:`harness.Link` in each of the two
arrangements (the stock peer as a MAAS cluster of this package's region,
and as a MAAS region event-loop of this package's cluster). It is shared
by the tests of a module and rebuilt when a test left it broken. A failed
test's report ends with the stock peer's log.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def load(name: str) -> Any:
    """Import a helper module of this folder (pytest runs in importlib mode).

    :param name: the module's file name without ``.py``.
    :return: the module, imported once.
    """
    qualified = f"maas_rpc_interop_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


harness = load("harness")  # Shared with the test modules.


@pytest.fixture(scope="module", autouse=True)
def legacy_peers_allowed():
    """``MAAS_RPC_ALLOW_LEGACY_PEERS=1`` for this folder's tests only: the
    stock peer speaks MAAS's plain handshake."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(harness.LEGACY, "1")
        yield


class Links:
    """One arrangement's link, rebuilt on demand."""

    def __init__(self, role: str, workdir: Path) -> None:
        self.role = role
        self.workdir = workdir
        self.current: Any = None

    def get(self) -> Any:
        if self.current is not None and not self.current.healthy():
            self.current.close()
            self.current = None
        if self.current is None:
            if self.role == "peer-is-cluster":
                self.current = harness.peerIsCluster(self.workdir)
            else:
                self.current = harness.peerIsRegion(self.workdir)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


@pytest.fixture(scope="module", params=["peer-is-cluster", "peer-is-region"])
def links(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    legacy_peers_allowed: None,
):
    holder = Links(request.param, tmp_path_factory.mktemp("interop"))
    yield holder
    holder.close()


@pytest.fixture
def link(links: Links) -> Any:
    """A connected :class:`harness.Link` between this package and a stock
    MAAS peer (in both arrangements)."""
    return links.get()


@pytest.fixture
def peers(tmp_path: Path):
    """Start stock peers and links of a test's own; all are stopped after
    it. Call ``peers.add(link_or_peer)`` to have one stopped."""

    class Started(list):
        def add(self, thing: Any) -> Any:
            self.append(thing)
            return thing

    started = Started()
    yield started
    for thing in reversed(started):
        if hasattr(thing, "close"):
            thing.close()
        else:
            thing.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        shown = []
        current = funcargs.get("link")
        if current is not None:
            shown.append(current.peer)
        for thing in funcargs.get("peers", []) or []:
            shown.append(getattr(thing, "peer", thing))
        for peer in shown:
            if not hasattr(peer, "tail"):
                continue
            report.sections.append(
                (f"stock peer pid {peer.pid} ({peer.logPath.name})", peer.tail())
            )
    return report
