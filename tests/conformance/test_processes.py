"""Between two real processes over TCP on 127.0.0.1: an ``async def``
responder, one returning ``Failure(DeclaredError())``, and a protocol
subclass overriding ``dispatchCommand`` behave as in stock AMP.

``peer.py`` serves the commands from a process of its own, with a bare
``RPCProtocol`` or with stock AMP; this process calls it with stock AMP and
with ``RPCProtocol``, in crochet's reactor. Every combination must give the
callers what stock AMP calling stock AMP gives them.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crochet
import pytest
from provisioningserver.rpc.common import RPCProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols import amp

from maas_rpc_conformance import peer

HERE = Path(__file__).resolve().parent
PEER = HERE / "peer.py"

CALLS: list[tuple[type[amp.Command], dict[str, Any]]] = [
    (peer.AsyncEcho, {"text": "hello"}),
    (peer.FailDeclared, {"text": "no such cheese"}),
    (peer.Forbidden, {}),
    (peer.Allowed, {}),
    (peer.AsyncEcho, {"text": "still there"}),
]


class Peer:
    """A ``peer.py`` process."""

    def __init__(self, kind: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(
            [sys.executable, str(PEER), kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.port = self._readPort(timeout=30)

    def _readPort(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.stop()
                    raise AssertionError(f"peer gave no port within {timeout} s")
                chunk = os.read(self.process.stdout.fileno(), 1)
                if not chunk:
                    _, err = self.stop()
                    raise AssertionError(f"peer exited before listening: {err!r}")
                line += chunk
        if not line.startswith(b"PORT "):
            self.stop()
            raise AssertionError(f"peer said {line!r}")
        return int(line.split()[1])

    def stop(self) -> tuple[int | None, bytes]:
        """Stop the process (by its PID), at most 10 s; return its exit
        status and what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
        return self.process.returncode, err


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, Peer]]:
    started: dict[str, Peer] = {}
    try:
        for kind in ("rpc", "stock"):
            started[kind] = Peer(kind)
        yield started
    finally:
        for peer in started.values():
            peer.stop()


def callerClass(base: type[amp.AMP]) -> type[amp.AMP]:
    class Caller(base):
        def connectionMade(self) -> None:
            super().connectionMade()
            self.gone: Deferred[None] = Deferred()

        def connectionLost(self, reason: Any) -> None:
            super().connectionLost(reason)
            self.gone.callback(None)

    return Caller


CALLERS = {"stock": callerClass(amp.AMP), "rpc": callerClass(RPCProtocol)}


@crochet.wait_for(timeout=30)
async def callPeer(port: int, caller: str) -> list[tuple[Any, ...]]:
    from twisted.internet import reactor

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    proto = await connectProtocol(endpoint, CALLERS[caller]())
    results: list[tuple[Any, ...]] = []
    try:
        for command, kwargs in CALLS:
            try:
                answer = await proto.callRemote(command, **kwargs)
            except Exception as e:  # noqa: BLE001 - what the caller got
                results.append(("failed", type(e).__name__, str(e)))
            else:
                results.append(("answer", answer))
    finally:
        proto.transport.loseConnection()
        await proto.gone
    return results


EXPECTED = [
    ("answer", {"text": "HELLO"}),
    ("failed", "DeclaredError", "no such cheese"),
    ("failed", "UnknownRemoteError", "Code<UNKNOWN>: refused by dispatchCommand"),
    ("answer", {"ran": True}),
    ("answer", {"text": "STILL THERE"}),
]


def test_stock_caller_and_stock_peer_agree_with_expected(peers, reactor_thread) -> None:
    """The reference: stock AMP on both sides, each in its own process."""
    assert callPeer(peers["stock"].port, "stock") == EXPECTED


@pytest.mark.parametrize(
    "caller, responder",
    [("stock", "rpc"), ("rpc", "stock"), ("rpc", "rpc")],
    ids=["stock->rpc", "rpc->stock", "rpc->rpc"],
)
def test_between_processes(peers, reactor_thread, caller: str, responder: str) -> None:
    expected = callPeer(peers["stock"].port, "stock")
    actual = callPeer(peers[responder].port, caller)
    differing = [
        f"{command.__name__}({kwargs}):\n  stock AMP: {e}\n  here:      {a}"
        for (command, kwargs), e, a in zip(CALLS, expected, actual, strict=True)
        if e != a
    ]
    assert not differing, (
        f"{caller} caller -> {responder} peer process differs from stock AMP:\n"
        + "\n".join(differing)
    )
