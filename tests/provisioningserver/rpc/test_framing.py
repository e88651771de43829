"""The framing layer: budgets on what a peer can make a connection hold, the
bytes handed on at a protocol switch, and connections freed without a
garbage collection (in memory, deterministic)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from maasserver.rpc.regionservice import RegionServer, RegionService
from provisioningserver.rpc.clusterservice import ClusterClient, ClusterClientService
from provisioningserver.rpc.common import RPCProtocol
from provisioningserver.rpc.framing import ENTRY_OVERHEAD, serializeBox
from provisioningserver.rpc.limits import Limits
from provisioningserver.rpc.testing import connect_in_memory
from provisioningserver.twisted.protocols import amp

SECRET = bytes(range(16))
UUID = "0b9e6a3c-2f2d-4b7e-9f63-2a8f0f4f7a11"
EVENTLOOP = "region:pid=1"


def box_bytes(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """Encode key/value pairs as one box, in the order given."""
    out = b""
    for key, value in pairs:
        out += len(key).to_bytes(2, "big") + key + len(value).to_bytes(2, "big")
        out += value
    return out + b"\x00\x00"


def connected(proto: amp.AMP) -> StringTransport:
    transport = StringTransport()
    proto.makeConnection(transport)
    return transport


class Gated(RPCProtocol):
    """A protocol with a handshake gate, for the unauthenticated budgets."""

    handshakeCommands = frozenset({b"Identify"})


@pytest.mark.parametrize(
    ("authenticated", "cap"), [(False, 32), (True, 1024)], ids=["before", "after"]
)
def test_a_box_with_too_many_keys_drops_the_peer(logged, authenticated, cap):
    proto = Gated()
    proto.peerAuthenticated = authenticated
    transport = connected(proto)
    # Many distinct tiny keys with empty values: cheap on the wire, costly
    # in memory; the key count stops them before the byte budget does.
    proto.dataReceived(box_bytes([(b"k%d" % n, b"") for n in range(cap)])[:-2])
    assert not transport.disconnecting
    proto.dataReceived(box_bytes([(b"last", b"")]))
    assert transport.disconnecting
    assert logged.lines(f"more than {cap} keys")
    # Its buffers are freed at once, not when the connection is collected.
    assert proto._box is None and proto._buffer == b""


def test_entries_count_their_overhead_against_the_byte_budget(logged):
    proto = Gated(limits=Limits(maxUnauthenticatedBoxBytes=10 * ENTRY_OVERHEAD))
    transport = connected(proto)
    proto.dataReceived(box_bytes([(b"k%d" % n, b"") for n in range(9)])[:-2])
    assert not transport.disconnecting
    proto.dataReceived(box_bytes([(b"x", b""), (b"y", b"")]))
    assert transport.disconnecting
    assert logged.lines("more than 1280 bytes")


def test_a_value_that_cannot_fit_is_refused_before_it_arrives(logged):
    proto = Gated()  # 64 KiB before authentication.
    transport = connected(proto)
    # The key and the length of a 65,535-byte value: nothing more is waited
    # for.
    proto.dataReceived(b"\x00\x01k\xff\xff" + b"v" * 10)
    assert transport.disconnecting
    assert proto._buffer == b""


def test_after_authentication_the_wider_budget_applies():
    proto = Gated()
    proto.peerAuthenticated = True
    transport = connected(proto)
    proto.dataReceived(box_bytes([(b"_command", b"Nope"), (b"v", b"x" * 65535)]))
    assert not transport.disconnecting


class Echo(amp.Command):
    """Echo a value.

    :since: test
    """

    arguments = [(b"value", amp.String())]
    response = [(b"value", amp.String())]


class Switch(amp.ProtocolSwitchCommand):
    """Switch to a raw byte-collecting protocol.

    :since: test
    """


def test_bytes_after_a_protocol_switch_go_to_the_new_protocol():
    from twisted.internet.protocol import Protocol

    received: list[bytes] = []

    class Raw(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    class Switching(RPCProtocol):
        @Switch.responder
        def switch(self):
            return Raw()

    proto = Switching()
    connected(proto)
    command = serializeBox({b"_command": b"Switch", b"_ask": b"1"})
    proto.dataReceived(command + b"after the switch")
    proto.dataReceived(b" and more")
    assert b"".join(received) == b"after the switch and more"


def test_bytes_in_the_clear_after_asking_for_tls_drop_the_peer(logged):
    proto = RPCProtocol()
    transport = connected(proto)

    # Simulate the moment TLS is due: the box being handled says so.
    original = proto.ampBoxReceived

    def receive(box: amp.AmpBox) -> None:
        proto.expectTLSNext()
        original(box)

    proto.ampBoxReceived = receive  # type: ignore[method-assign]
    proto.dataReceived(
        serializeBox({b"_command": b"X"}) + serializeBox({b"_command": b"Y"})
    )
    assert transport.disconnecting or proto._lost
    assert logged.lines("sent bytes in the clear after asking for TLS")


# Connections are freed by reference counting alone.


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _mesh(clock: Clock, *, legacy: bool = False):
    region = RegionService(SECRET, EVENTLOOP, reactor=clock, allowLegacyPeers=legacy)
    cluster = ClusterClientService(
        "http://r/MAAS", SECRET, UUID, reactor=clock, allowLegacyPeers=legacy
    )
    return region, cluster


def _pair(kind: str, clock: Clock):
    region, cluster = _mesh(clock)
    if kind == "bare":
        return RPCProtocol(), RPCProtocol()
    if kind == "raw-legacy-peer":
        return RegionServer(region), RPCProtocol()
    return RegionServer(region), ClusterClient(cluster, EVENTLOOP, ("127.0.0.1", 1))


@pytest.mark.parametrize(
    ("kind", "midBox"),
    [
        ("bare", False),
        ("bare", True),
        ("mesh", False),
        ("mesh", True),
        ("raw-legacy-peer", True),
    ],
)
def test_a_dropped_connection_is_freed_without_a_garbage_collection(
    no_gc, kind, midBox
):
    clock = Clock()
    server, client = _pair(kind, clock)
    pump = connect_in_memory(server, client, clock=clock)
    pump.flush()
    if kind == "raw-legacy-peer":
        # A peer refused for not offering the secure channel.
        client.callRemote(Echo, value=b"hello").addErrback(lambda _: None)
        pump.flush()
    if midBox:
        # Half a box, parsed but not complete, held when the peer goes.
        server.dataReceived(b"\x00\x03key\x00\x10half")
    refs = [weakref.ref(server), weakref.ref(client)]
    for proto in (server, client):
        if proto.transport is not None:
            proto.transport.abortConnection()
    pump.flush()
    clock.advance(60)  # Any timer of theirs has run or been cancelled.
    del server, client, pump, proto
    assert [ref() for ref in refs] == [None, None]
