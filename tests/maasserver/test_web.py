"""The discovery web server's bounds, in memory under a Clock (issue 13,
rows 5 and 6), and the seams of Twisted web it relies on."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from maasserver.web import DiscoveryChannel, HTTPLimits, makeSite
from provisioningserver.config import ConfigError
from provisioningserver.rpc.discovery import readDiscovery

SECRET = bytes(range(16))
LOOPS = {"h:pid=1": [("127.0.0.1", 5250)]}


class Advertising:
    """The parts of RegionAdvertisingService the resource reads."""

    def __init__(self, loops=LOOPS):
        self.advertising = SimpleNamespace(isSet=loops is not None)
        self.reads: list[defer.Deferred] = []
        self.loops = loops
        self.store = SimpleNamespace(eventloops=self._read)
        self.rpc = SimpleNamespace(secret=SECRET, clock=Clock())
        self.later = False

    def _read(self):
        d = defer.Deferred()
        self.reads.append(d)
        if not self.later:
            d.callback(self.loops)
        return d


class Client:
    """One connection to the site, in memory."""

    def __init__(self, site, host="127.0.0.2", port=40000):
        self.site = site
        self.channel = site.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", host, port),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 5240),
        )
        self.lost = False
        if self.channel is not None:
            self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def answer(self) -> bytes:
        return self.transport.value()

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def close(self) -> None:
        """The transport reports the connection lost (as the reactor does)."""
        if not self.lost:
            self.lost = True
            self.channel.connectionLost(Failure(ConnectionDone()))


def site(limits=None, loops=LOOPS):
    clock = Clock()
    return makeSite(Advertising(loops), limits, reactor=clock), clock


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def test_get_answers_a_signed_document_and_closes():
    s, _ = site()
    client = Client(s)
    client.send(b"GET /MAAS/rpc/ HTTP/1.1\r\nHost: region\r\n\r\n")
    assert client.answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in client.answer
    discovery = readDiscovery(body_of(client.answer), SECRET)
    assert discovery.signed
    assert discovery.eventloops == LOOPS
    assert client.closing


def test_answers_are_reused_for_a_second_and_read_once_meanwhile():
    advertising = Advertising()
    s = makeSite(advertising, None, reactor=Clock())
    advertising.later = True
    first, second = Client(s, port=40001), Client(s, port=40002)
    for client in (first, second):
        client.send(b"GET /MAAS/rpc/ HTTP/1.1\r\nHost: region\r\n\r\n")
    assert len(advertising.reads) == 1  # One read serves both.
    advertising.reads[0].callback(LOOPS)
    assert body_of(first.answer) == body_of(second.answer)
    third = Client(s, port=40003)
    third.send(b"GET /MAAS/rpc/ HTTP/1.1\r\nHost: region\r\n\r\n")
    assert len(advertising.reads) == 1  # Reused within the second.
    assert readDiscovery(body_of(third.answer), SECRET).eventloops == LOOPS
    advertising.rpc.clock.advance(1.5)
    advertising.later = False
    fourth = Client(s, port=40004)
    fourth.send(b"GET /MAAS/rpc/ HTTP/1.1\r\nHost: region\r\n\r\n")
    assert len(advertising.reads) == 2  # Stale: read again.


def test_not_advertising_yet_is_signed_too():
    s, _ = site(loops=None)
    client = Client(s)
    client.send(b"GET /MAAS/rpc HTTP/1.1\r\n\r\n")
    document = json.loads(body_of(client.answer))
    assert document["eventloops"] is None
    assert readDiscovery(body_of(client.answer), SECRET).signed


@pytest.mark.parametrize(
    "head",
    [
        b"POST /MAAS/rpc/ HTTP/1.1\r\nContent-Length: 209715200\r\n\r\n",
        b"POST /MAAS/rpc/ HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"GET /MAAS/rpc/ HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
        b"PUT /MAAS/rpc/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /MAAS/rpc/ HTTP/1.1\r\nContent-Length: 100\r\n"
        b"Expect: 100-continue\r\n\r\n",
    ],
)
def test_a_request_with_a_body_is_refused_before_its_body_is_read(head, logged):
    s, _ = site()
    client = Client(s)
    client.send(head)
    assert client.answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert b"100 Continue" not in client.answer
    assert client.closing
    # Whatever else arrives is not read: no request is processed, nothing
    # is written, nothing is kept.
    request = client.channel.requests[-1]
    before = client.answer
    client.send(b"x" * 100_000)
    assert client.answer == before
    assert request.content is None
    assert len(logged.lines("Refused an HTTP request with a body")) == 1


@pytest.mark.parametrize(
    "method, status", [(b"POST", b"405"), (b"DELETE", b"405"), (b"OPTIONS", b"405")]
)
def test_a_method_other_than_get_is_refused(method, status):
    s, _ = site()
    client = Client(s)
    client.send(method + b" /MAAS/rpc/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert client.answer.startswith(b"HTTP/1.1 " + status)
    assert b"eventloops" not in client.answer
    assert client.closing


def test_head_is_answered():
    s, _ = site()
    client = Client(s)
    client.send(b"HEAD /MAAS/rpc/ HTTP/1.1\r\n\r\n")
    assert client.answer.startswith(b"HTTP/1.1 200 OK\r\n")


def test_too_many_headers_are_refused():
    s, _ = site(HTTPLimits(maxHeaders=5))
    client = Client(s)
    client.send(b"GET /MAAS/rpc/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 6 + b"\r\n")
    assert client.answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert client.closing


@pytest.mark.parametrize(
    "head",
    [
        b"GET /MAAS/rpc/ HTTP/1.1\r\n" + b"X-A: " + b"b" * 2000 + b"\r\n\r\n",
        b"GET /MAAS/rpc/ HTTP/1.1\r\n" + (b"X-A: " + b"b" * 400 + b"\r\n") * 3,
        b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n",
        # One line, never ended.
        b"GET /MAAS/rpc/ HTTP/1.1\r\nX-A: " + b"b" * 5000,
    ],
)
def test_header_bytes_are_capped(head):
    s, _ = site(HTTPLimits(maxHeaderBytes=1024))
    client = Client(s)
    client.send(head)
    assert client.closing
    assert not client.answer.startswith(b"HTTP/1.1 200")


def test_a_fixed_deadline_that_bytes_do_not_extend(logged):
    s, clock = site(HTTPLimits(timeout=10))
    client = Client(s)
    for _ in range(9):
        client.send(b"X")  # A header trickling in, a byte a second.
        clock.advance(1)
    assert not client.closing
    clock.advance(1)
    assert client.transport.disconnected  # Aborted.
    client.close()
    assert s.total == 0
    assert clock.getDelayedCalls() == []
    assert logged.lines("not done within 10 seconds (MAAS_RPC_HTTP_TIMEOUT)")


def test_the_deadline_ends_with_the_connection():
    s, clock = site()
    client = Client(s)
    client.send(b"GET /MAAS/rpc/ HTTP/1.1\r\n\r\n")
    client.close()
    assert clock.getDelayedCalls() == []


def test_connections_per_address_are_capped_and_released(logged):
    s, _ = site(HTTPLimits(maxPerAddress=3, maxConnections=100))
    clients = [Client(s, port=40000 + n) for n in range(3)]
    assert all(c.channel is not None for c in clients)
    refused = [Client(s, port=41000 + n) for n in range(50)]
    assert all(c.channel is None for c in refused)
    # Another address is not affected.
    assert Client(s, host="127.0.0.1").channel is not None
    assert s.connections == {"127.0.0.2": 3, "127.0.0.1": 1}
    clients[0].close()
    assert Client(s, port=42000).channel is not None
    # One line for the 50 refusals.
    assert len(logged.lines("MAAS_RPC_HTTP_MAX_PER_ADDRESS")) == 1


def test_connections_in_all_are_capped(logged):
    s, _ = site(HTTPLimits(maxPerAddress=100, maxConnections=4))
    clients = [Client(s, host=f"127.0.0.{n + 2}") for n in range(4)]
    assert all(c.channel is not None for c in clients)
    assert Client(s, host="127.0.0.99").channel is None
    for client in clients:
        client.close()
        client.close()  # Counted once.
    assert s.total == 0 and s.connections == {}
    assert Client(s, host="127.0.0.99").channel is not None
    assert len(logged.lines("MAAS_RPC_HTTP_MAX_CONNECTIONS")) == 1


def test_limits_from_env():
    assert HTTPLimits.from_env({}) == HTTPLimits()
    assert HTTPLimits.from_env(
        {
            "MAAS_RPC_HTTP_TIMEOUT": "3",
            "MAAS_RPC_HTTP_MAX_HEADERS": "7",
            "MAAS_RPC_HTTP_MAX_HEADER_BYTES": "2048",
            "MAAS_RPC_HTTP_MAX_CONNECTIONS": "9",
            "MAAS_RPC_HTTP_MAX_PER_ADDRESS": "2",
        }
    ) == HTTPLimits(3, 7, 2048, 9, 2)
    with pytest.raises(ConfigError, match="MAAS_RPC_HTTP_MAX_PER_ADDRESS"):
        HTTPLimits.from_env({"MAAS_RPC_HTTP_MAX_PER_ADDRESS": "0"})


def test_the_seams_of_twisted_web_used_exist():
    """DiscoveryChannel relies on these names of HTTPChannel (public, but
    not all documented as seams): a Twisted upgrade that drops one fails
    here rather than silently unbounding the server."""
    for name in (
        "maxHeaders",
        "totalHeadersSize",
        "MAX_LENGTH",
        "length",
        "allHeadersReceived",
        "checkPersistence",
        "loseConnection",
        "requests",
    ):
        assert hasattr(HTTPChannel, name) or name in HTTPChannel().__dict__, name
    assert issubclass(DiscoveryChannel, HTTPChannel)
