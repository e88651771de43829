"""The discovery document: signing, verifying, bounding, and the bounded
fetch (through a real Agent over in-memory connections, under a Clock)."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SynchronousTestCase

from provisioningserver.config import ConfigError
from provisioningserver.rpc.discovery import (
    MAC_CONTEXT,
    DiscoveryError,
    DiscoveryFetcher,
    DiscoveryLimits,
    UnverifiedDiscovery,
    canonicalEventloops,
    makeDiscoveryDocument,
    parseDiscovery,
    readDiscovery,
    signEventloops,
)

_case = SynchronousTestCase()
successResultOf = _case.successResultOf
failureResultOf = _case.failureResultOf

SECRET = bytes(range(16))
OTHER = bytes(range(1, 17))
LOOPS = {"h:pid=1": [("127.0.0.1", 5250), ("::1", 5251)], "h:pid=2": []}


def test_the_mac_is_the_one_design_pins():
    import hashlib
    import hmac

    value = {"b": [["10.0.0.1", 5250]], "a": []}
    canonical = b'{"a":[],"b":[["10.0.0.1",5250]]}'
    assert canonicalEventloops(value) == canonical
    assert canonicalEventloops(None) == b"null"
    assert MAC_CONTEXT == b"maas-rpc discovery v1\0"
    expected = hmac.new(SECRET, MAC_CONTEXT + canonical, hashlib.sha256).hexdigest()
    assert signEventloops(SECRET, value) == expected


def test_a_signed_document_reads_back():
    body = makeDiscoveryDocument(SECRET, LOOPS)
    discovery = readDiscovery(body, SECRET)
    assert discovery.signed
    assert discovery.eventloops == LOOPS
    assert discovery.droppedEventloops == discovery.droppedAddresses == 0
    none = readDiscovery(makeDiscoveryDocument(SECRET, None), SECRET)
    assert none.signed and none.eventloops is None


def test_the_mac_does_not_depend_on_key_order_or_spacing():
    value = {"z": [["1.2.3.4", 1]], "a": [["5.6.7.8", 2]]}
    body = json.dumps(
        {"mac": signEventloops(SECRET, value), "eventloops": value}, indent=3
    ).encode()
    assert readDiscovery(body, SECRET).signed


@pytest.mark.parametrize(
    "forge",
    [
        # Valid JSON, a MAC made with another secret.
        lambda: makeDiscoveryDocument(OTHER, LOOPS),
        # The right MAC, on other event-loops.
        lambda: json.dumps(
            {
                "eventloops": {"evil:pid=1": [["10.6.6.6", 5250]]},
                "mac": signEventloops(SECRET, {"h:pid=1": [["127.0.0.1", 5250]]}),
            }
        ).encode(),
        # Malformed MACs.
        lambda: json.dumps({"eventloops": None, "mac": "00"}).encode(),
        lambda: json.dumps({"eventloops": None, "mac": 5}).encode(),
        lambda: json.dumps({"eventloops": None, "mac": "zz" * 32}).encode(),
    ],
)
def test_a_forged_document_is_refused_even_with_legacy_peers_allowed(forge):
    body = forge()
    for allowUnsigned in (False, True):
        with pytest.raises(UnverifiedDiscovery):
            readDiscovery(body, SECRET, allowUnsigned=allowUnsigned)


def test_an_unsigned_document_only_with_legacy_peers_allowed():
    body = makeDiscoveryDocument(None, LOOPS)
    assert "mac" not in json.loads(body)
    with pytest.raises(UnverifiedDiscovery, match="MAAS_RPC_ALLOW_LEGACY_PEERS"):
        readDiscovery(body, SECRET)
    discovery = readDiscovery(body, SECRET, allowUnsigned=True)
    assert not discovery.signed
    assert discovery.eventloops == LOOPS


def test_caps_on_eventloops_and_addresses_apply_after_the_mac():
    loops = {
        f"h:pid={n}": [("127.0.0.1", 1000 + a) for a in range(10)] for n in range(7)
    }
    body = makeDiscoveryDocument(SECRET, loops)
    limits = DiscoveryLimits(maxEventloops=3, maxAddresses=4)
    discovery = readDiscovery(body, SECRET, limits=limits)
    assert discovery.signed
    assert list(discovery.eventloops) == ["h:pid=0", "h:pid=1", "h:pid=2"]
    assert all(len(ends) == 4 for ends in discovery.eventloops.values())
    assert discovery.totalEventloops == 7
    assert discovery.droppedEventloops == 4
    assert discovery.droppedAddresses == 3 * 6


def test_hosts_too_long_to_be_a_name_are_dropped():
    loops = {"h:pid=1": [("x" * 254, 1), ("127.0.0.1", 2), ("", 3)]}
    discovery = readDiscovery(makeDiscoveryDocument(SECRET, loops), SECRET)
    assert discovery.eventloops == {"h:pid=1": [("127.0.0.1", 2)]}
    assert discovery.droppedAddresses == 2


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # Nesting deeper than the parser goes.
        b'{"eventloops": {"a": [["127.0.0.1", 0]]}}',
        b'{"eventloops": {"a": [["127.0.0.1", 65536]]}}',
        b'{"eventloops": {"a": [["127.0.0.1", true]]}}',
        b'{"eventloops": {"a": [[5, 5250]]}}',
        b'{"eventloops": {"a": [["127.0.0.1", 5250, 1]]}}',
        b'{"eventloops": {"a": ["ab"]}}',
        b"[]",
        b"null",
    ],
)
def test_malformed_documents(body):
    with pytest.raises(DiscoveryError):
        parseDiscovery(body)


def test_limits_from_env():
    assert DiscoveryLimits.from_env({}) == DiscoveryLimits()
    limits = DiscoveryLimits.from_env(
        {
            "MAAS_RPC_DISCOVERY_TIMEOUT": "2.5",
            "MAAS_RPC_DISCOVERY_MAX_BYTES": "4096",
            "MAAS_RPC_DISCOVERY_MAX_EVENTLOOPS": "3",
            "MAAS_RPC_DISCOVERY_MAX_ADDRESSES": "2",
            "MAAS_RPC_CONNECT_CONCURRENCY": "1",
        }
    )
    assert limits == DiscoveryLimits(2.5, 4096, 3, 2, 1)
    with pytest.raises(ConfigError, match="MAAS_RPC_DISCOVERY_MAX_EVENTLOOPS"):
        DiscoveryLimits.from_env({"MAAS_RPC_DISCOVERY_MAX_EVENTLOOPS": "0"})
    with pytest.raises(ConfigError, match="MAAS_RPC_DISCOVERY_TIMEOUT"):
        DiscoveryLimits.from_env({"MAAS_RPC_DISCOVERY_TIMEOUT": "-1"})


# The fetch, through twisted.web.client.Agent, on a MemoryReactorClock.


class Server:
    """The server end of the fetcher's connection, in memory."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        # Older Twisted resolves the name (and so connects) one turn later.
        reactor.advance(0)
        [(host, port, factory, timeout, _)] = reactor.tcpClients
        self.host, self.port, self.timeout = host, port, timeout
        self.client = factory.buildProtocol(None)
        self.transport = FakeTransport(self.client, isServer=False)
        self.client.makeConnection(self.transport)

    @property
    def request(self) -> bytes:
        return b"".join(self.transport.stream)

    def send(self, data: bytes) -> None:
        self.client.dataReceived(data)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting or self.transport.disconnected)


def fetchVia(limit: int = 1000, url: str = "http://127.0.0.1:5240/MAAS/rpc/"):
    reactor = MemoryReactorClock()
    fetcher = DiscoveryFetcher(reactor, connectTimeout=7, maxBytes=limit)
    d = fetcher(url)
    return reactor, d


def test_fetch_connects_on_the_injected_reactor_and_reads_the_body():
    reactor, d = fetchVia()
    server = Server(reactor)
    assert (server.port, server.timeout) == (5240, 7)
    assert server.request.startswith(b"GET /MAAS/rpc/ HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:5240\r\n" in server.request
    body = makeDiscoveryDocument(SECRET, LOOPS)
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert successResultOf(d) == body


def test_fetch_refuses_a_declared_length_over_the_limit_at_once():
    reactor, d = fetchVia(limit=1000)
    server = Server(reactor)
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
    failure = failureResultOf(d, DiscoveryError)
    assert "MAAS_RPC_DISCOVERY_MAX_BYTES" in failure.getErrorMessage()
    assert server.closed


def test_fetch_cuts_off_a_body_that_grows_over_the_limit():
    reactor, d = fetchVia(limit=1000)
    server = Server(reactor)
    server.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        server.send(b"190\r\n" + b"x" * 400 + b"\r\n")
    failure = failureResultOf(d, DiscoveryError)
    assert "larger than 1000 bytes" in failure.getErrorMessage()
    assert server.closed


def test_fetch_fails_on_an_http_error_without_reading_the_body():
    reactor, d = fetchVia()
    server = Server(reactor)
    server.send(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 100000\r\n\r\n")
    assert failureResultOf(d, DiscoveryError).getErrorMessage() == "HTTP 503"
    assert server.closed


def test_cancelling_a_fetch_mid_body_closes_the_connection():
    reactor, d = fetchVia()
    server = Server(reactor)
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n{")
    assert not d.called
    d.cancel()
    failureResultOf(d, defer.CancelledError)
    assert server.closed


def test_cancelling_a_fetch_while_connecting():
    reactor, d = fetchVia()
    assert reactor.tcpClients
    d.cancel()
    failureResultOf(d, defer.CancelledError)


def test_fetch_logs_no_factory_noise(logged):
    reactor, d = fetchVia()
    server = Server(reactor)
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    successResultOf(d)
    server.client.connectionLost(Failure(Exception("done")))
    assert not logged.lines("Starting factory")
    assert not logged.lines("Stopping factory")


def test_a_fetch_without_a_deadline_of_its_own_is_bounded_by_the_service():
    # The deadline belongs to ClusterClientService (it covers injected
    # fetches too); see test_clusterservice. Here: cancellation works with
    # addTimeout, which is what the service uses.
    reactor, d = fetchVia()
    server = Server(reactor)
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n{")
    clock = Clock()
    d.addTimeout(5, clock)
    clock.advance(5)
    failureResultOf(d, defer.TimeoutError)
    assert server.closed
