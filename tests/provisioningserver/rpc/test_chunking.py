"""Large values travel in chunks; values that fit travel exactly as stock
AMP sends them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from provisioningserver.rpc.chunking import CHUNK_BYTES, joinChunks, splitLargeValues
from provisioningserver.rpc.common import RPCProtocol
from provisioningserver.rpc.exceptions import ArgumentTooLarge, RemoteResponderFailed
from provisioningserver.rpc.limits import Limits
from provisioningserver.rpc.testing import connect_in_memory, open_channel
from provisioningserver.twisted.protocols import amp

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf

MIB = 1024 * 1024


class Echo(amp.Command):
    """Echo a payload, in both directions.

    :since: test
    """

    arguments = [(b"payload", amp.Unicode()), (b"blob", amp.String())]
    response = [(b"payload", amp.Unicode()), (b"blob", amp.String())]


class Big(amp.Command):
    """Answer ``size`` bytes.

    :since: test
    """

    arguments = [(b"size", amp.Integer())]
    response = [(b"blob", amp.String())]


class EchoServer(RPCProtocol):
    @Echo.responder
    def echo(self, payload, blob):
        return {"payload": payload, "blob": blob}

    @Big.responder
    def big(self, size):
        return {"blob": b"b" * size}


class StockEchoServer(amp.AMP):
    @Echo.responder
    def echo(self, payload, blob):
        return {"payload": payload, "blob": blob}


def test_split_uses_the_key_scheme():
    box = amp.AmpBox({b"name": b"x" * (2 * CHUNK_BYTES + 10), b"small": b"s"})
    split = splitLargeValues(box)
    assert sorted(split) == [b"name", b"name.2", b"name.3", b"small"]
    assert len(split[b"name"]) == CHUNK_BYTES
    assert len(split[b"name.2"]) == CHUNK_BYTES
    assert len(split[b"name.3"]) == 10
    assert type(split) is amp.AmpBox
    assert joinChunks(split) == box


def test_boxes_that_fit_are_left_alone():
    box = amp.AmpBox({b"name": b"x" * CHUNK_BYTES})
    assert splitLargeValues(box) is box


@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=20).filter(lambda k: b"." not in k),
        st.integers(min_value=0, max_value=4 * CHUNK_BYTES),
        max_size=4,
    )
)
def test_split_then_join_round_trips(sizes):
    box = amp.AmpBox({key: bytes([len(key)]) * size for key, size in sizes.items()})
    split = splitLargeValues(box)
    assert all(len(v) <= CHUNK_BYTES for v in split.values())
    # Through the real wire format.
    parsed = amp.parseString(split.serialize())[0] if split else amp.AmpBox()
    assert joinChunks(parsed) == box


def agreed(server: RPCProtocol, client: RPCProtocol):
    """Connect two protocols over the secure channel, where both announce
    that they reassemble chunked values."""
    pump = connect_in_memory(server, client)
    assert open_channel(server, client, pump) == "secure"
    return pump


@pytest.mark.parametrize("size", [65535, 65536, 4 * MIB])
def test_large_values_cross_the_wire_both_ways(size):
    server = EchoServer()
    client = RPCProtocol()
    pump = agreed(server, client)
    text = "é" * (size // 2)  # Unicode, encoded to about `size` bytes.
    blob = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    d = client.callRemote(Echo, payload=text, blob=blob)
    pump.flush()
    assert successResultOf(d) == {"payload": text, "blob": blob}
    # An answer larger than one value, too.
    d = client.callRemote(Big, size=size)
    pump.flush()
    assert successResultOf(d) == {"blob": b"b" * size}


@pytest.mark.parametrize("size", [65536, 4 * MIB])
def test_without_agreement_a_large_value_is_refused_before_sending(size):
    server = EchoServer()
    client = RPCProtocol()
    pump = connect_in_memory(server, client)
    with pytest.raises(ArgumentTooLarge) as raised:
        client.callRemote(Echo, payload="", blob=b"x" * size)
    assert raised.value.key == b"blob" and raised.value.size == size
    assert "does not reassemble" in str(raised.value)
    assert isinstance(raised.value, amp.TooLong)
    assert client.transport.stream == []  # Nothing was sent.
    # Nor in an answer: an error answer, not a truncated value.
    d = client.callRemote(Big, size=size)
    pump.flush()
    failure = failureResultOf(d, RemoteResponderFailed)
    assert failure.value.reference is not None
    d = client.callRemote(Big, size=65535)
    pump.flush()
    assert successResultOf(d) == {"blob": b"b" * 65535}


def test_an_answer_too_large_to_send_is_an_error_not_a_dropped_connection():
    server = EchoServer(limits=Limits(maxValueBytes=100_000))
    client = RPCProtocol()
    pump = agreed(server, client)
    d = client.callRemote(Big, size=100_001)
    pump.flush()
    failure = failureResultOf(d, RemoteResponderFailed)
    assert failure.value.reference is not None
    d = client.callRemote(Big, size=10)
    pump.flush()
    assert successResultOf(d) == {"blob": b"b" * 10}


def test_a_receiver_caps_what_it_reassembles():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        server = EchoServer(limits=Limits(maxBoxBytes=200_000))
        client = RPCProtocol()
        pump = agreed(server, client)
        d = client.callRemote(Echo, payload="x", blob=b"y" * 300_000)
        pump.flush()
        failureResultOf(d)
        assert not server.isConnected()
        assert [e for e in events if "sent a box of more than" in formatEvent(e)]
    finally:
        globalLogPublisher.removeObserver(events.append)


def _bytes_sent(proto, command, **kwargs):
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.callRemote(command, **kwargs).addErrback(lambda _: None)
    return transport.value()


@given(
    payload=st.text(max_size=200),
    blob=st.binary(max_size=CHUNK_BYTES).map(lambda b: b[:CHUNK_BYTES]),
)
def test_values_that_fit_are_byte_for_byte_stock_amp(payload, blob):
    ours = _bytes_sent(RPCProtocol(), Echo, payload=payload, blob=blob)
    stock = _bytes_sent(amp.AMP(), Echo, payload=payload, blob=blob)
    assert ours == stock


def test_large_value_boundary_on_the_wire():
    at = _bytes_sent(RPCProtocol(), Echo, payload="", blob=b"a" * 65535)
    assert at == _bytes_sent(amp.AMP(), Echo, payload="", blob=b"a" * 65535)
    agreeing = RPCProtocol()
    agreeing.peerCapabilities = frozenset({"chunked-values"})
    over = amp.parseString(_bytes_sent(agreeing, Echo, payload="", blob=b"a" * 65536))[
        0
    ]
    assert len(over[b"blob"]) == 65535 and over[b"blob.2"] == b"a"


def test_a_stock_amp_peer_talks_to_us_for_values_that_fit():
    server = StockEchoServer()
    client = RPCProtocol()
    pump = connect_in_memory(server, client)
    d = client.callRemote(Echo, payload="Brie", blob=b"\x00" * 65535)
    pump.flush()
    assert successResultOf(d) == {"payload": "Brie", "blob": b"\x00" * 65535}
    # And the other way round.
    server = EchoServer()
    stock = amp.AMP()
    pump = connect_in_memory(server, stock)
    d = stock.callRemote(Echo, payload="Brie", blob=b"\x01" * 65535)
    pump.flush()
    assert successResultOf(d) == {"payload": "Brie", "blob": b"\x01" * 65535}
