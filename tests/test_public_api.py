"""The documented import paths resolve, and public modules declare
``__all__`` naming only things that exist."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import maasserver
import provisioningserver

#: (module, names) pairs documented as the public API (DESIGN.md).
DOCUMENTED = [
    ("provisioningserver.twisted.protocols.amp", ["Command", "AMP", "Unicode"]),
    (
        "provisioningserver.rpc.common",
        ["RPCProtocol", "Client", "Identify", "Authenticate"],
    ),
    ("provisioningserver.rpc.cluster", ["EatCheez", "Identify", "Authenticate"]),
    ("provisioningserver.rpc.region", ["Register", "Identify", "Authenticate"]),
    (
        "provisioningserver.rpc.exceptions",
        [
            "NoConnectionsAvailable",
            "AuthenticationFailed",
            "RegistrationFailed",
            "CannotRegisterCluster",
            "NoSuchCluster",
            "NoSuchCheese",
        ],
    ),
    ("provisioningserver.rpc.interfaces", ["IConnection"]),
    ("provisioningserver.rpc.arguments", ["Bytes", "StructureAsJSON", "ParsedURL"]),
    ("provisioningserver.security", ["calculate_digest"]),
    (
        "provisioningserver.utils.twisted",
        [
            "asynchronous",
            "synchronous",
            "deferred",
            "FOREVER",
            "LONGTIME",
            "DeferredValue",
            "deferWithTimeout",
            "callOut",
            "pause",
            "retries",
        ],
    ),
]


def public_modules():
    for package in (provisioningserver, maasserver):
        yield package.__name__
        for info in pkgutil.walk_packages(
            package.__path__, prefix=package.__name__ + "."
        ):
            if not any(part.startswith("_") for part in info.name.split(".")):
                yield info.name


@pytest.mark.parametrize(("module", "names"), DOCUMENTED)
def test_documented_names_resolve(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert hasattr(mod, name), f"{module}.{name} is missing"
        assert name in mod.__all__, f"{module}.{name} is not in __all__"


def test_amp_is_twisteds_own():
    from twisted.protocols import amp as stock

    from provisioningserver.twisted.protocols import amp

    for name in stock.__all__:
        assert getattr(amp, name) is getattr(stock, name)


@pytest.mark.parametrize("module", sorted(public_modules()))
def test_public_module_has_all(module):
    mod = importlib.import_module(module)
    assert hasattr(mod, "__all__"), f"{module} has no __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"
