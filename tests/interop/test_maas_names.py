"""MAAS's exception constructors and names, and their wire round trip.

A declared error travels as its wire code and its message; the caller
rebuilds it as ``ExceptionType(description)``. So an exception whose one
argument is not its message (``NoSuchCluster(uuid)`` used to wrap its
argument in a sentence) comes out garbled on the other side. These tests
raise each exception in a responder and receive it in a caller, through
this package's protocol and through stock AMP.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from twisted.protocols import amp as stock_amp

from maasserver.utils import asynchronous
from provisioningserver.rpc.common import RPCProtocol
from provisioningserver.rpc.exceptions import CannotRegisterCluster, NoSuchCluster
from provisioningserver.rpc.testing import connect_in_memory
from provisioningserver.twisted.protocols import amp

UUID = "7c1f0e5a-9a3b-4d7e-8f00-5e1ec7ed0001"


class FindCluster(amp.Command):
    arguments = [(b"uuid", amp.Unicode())]
    response: list = []
    errors = {NoSuchCluster: b"NoSuchCluster"}


class RefuseCluster(amp.Command):
    arguments = [(b"uuid", amp.Unicode()), (b"reason", amp.Unicode())]
    response: list = []
    errors = {CannotRegisterCluster: b"CannotRegisterCluster"}


def find(self: Any, uuid: str) -> dict:
    raise NoSuchCluster.from_uuid(uuid)


def refuse(self: Any, uuid: str, reason: str) -> dict:
    raise CannotRegisterCluster.from_uuid(uuid, reason)


class Responders(RPCProtocol):
    find = FindCluster.responder(find)
    refuse = RefuseCluster.responder(refuse)


class StockResponders(stock_amp.AMP):
    find = FindCluster.responder(find)
    refuse = RefuseCluster.responder(refuse)


def call(server: Any, client: Any, command: type, **kwargs: Any) -> Exception:
    """Call ``command`` from ``client`` on ``server`` in memory; return the
    exception the caller received."""
    pump = connect_in_memory(server, client)
    outcome: list = []
    client.callRemote(command, **kwargs).addBoth(outcome.append)
    pump.flush()
    assert len(outcome) == 1, "no answer arrived"
    failure = outcome[0]
    assert server.transport is not None and not server.transport.disconnecting
    return failure.value


PAIRS = {
    "maas-rpc to maas-rpc": (Responders, RPCProtocol),
    "stock responder, maas-rpc caller": (StockResponders, RPCProtocol),
    "maas-rpc responder, stock caller": (Responders, stock_amp.AMP),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_no_such_cluster_crosses_the_wire_intact(pair):
    server, client = PAIRS[pair]
    error = call(server(), client(), FindCluster, uuid=UUID)
    assert type(error) is NoSuchCluster
    assert str(error) == str(NoSuchCluster.from_uuid(UUID))
    assert UUID in str(error)
    assert error.uuid is None  # Only the message travels.


@pytest.mark.parametrize("pair", list(PAIRS))
def test_cannot_register_cluster_crosses_the_wire_intact(pair):
    server, client = PAIRS[pair]
    reason = "Name: caf\u00e9 is taken.\nSecond line."
    error = call(server(), client(), RefuseCluster, uuid=UUID, reason=reason)
    assert type(error) is CannotRegisterCluster
    assert str(error) == str(CannotRegisterCluster.from_uuid(UUID, reason))


def test_rebuilding_from_the_message_does_not_garble_it():
    original = NoSuchCluster.from_uuid(UUID)
    assert str(NoSuchCluster(str(original))) == str(original)
    refused = CannotRegisterCluster.from_uuid(UUID, "why")
    assert str(CannotRegisterCluster(str(refused))) == str(refused)


def test_from_uuid_signatures_are_maas_signatures():
    """MAAS: ``NoSuchCluster.from_uuid(uuid)`` and
    ``CannotRegisterCluster.from_uuid(uuid, message)``, both classmethods
    returning an instance."""
    assert list(inspect.signature(NoSuchCluster.from_uuid).parameters) == ["uuid"]
    assert list(inspect.signature(CannotRegisterCluster.from_uuid).parameters) == [
        "uuid",
        "message",
    ]


def test_from_uuid_messages():
    missing = NoSuchCluster.from_uuid(UUID)
    assert isinstance(missing, NoSuchCluster)
    assert missing.uuid == UUID
    assert UUID in str(missing) and "found" in str(missing)
    refused = CannotRegisterCluster.from_uuid(UUID, "the name is taken")
    assert isinstance(refused, CannotRegisterCluster)
    assert refused.uuid == UUID
    first, second = str(refused).split("\n", 1)
    assert UUID in first and "registered" in first
    assert second == "the name is taken"


def test_plain_messages_are_kept_as_they_are():
    assert str(NoSuchCluster("anything at all")) == "anything at all"
    assert NoSuchCluster("x").uuid is None
    assert str(CannotRegisterCluster("nope")) == "nope"
    assert str(NoSuchCluster()) == ""


def test_iterator_reused_error_is_maas_name_for_already_iterated():
    """MAAS raises ``IteratorReusedError`` (importable from
    ``maasserver.utils.async``, here ``maasserver.utils.asynchronous``)."""
    from maasserver.utils.asynchronous import IteratorReusedError, UseOnceIterator

    assert IteratorReusedError is asynchronous.AlreadyIterated
    assert "IteratorReusedError" in asynchronous.__all__
    values = UseOnceIterator([1, 2])
    assert list(values) == [1, 2]
    with pytest.raises(IteratorReusedError):
        list(values)
