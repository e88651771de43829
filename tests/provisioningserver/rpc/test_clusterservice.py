"""ClusterClientService's polling policy, under an injected clock, with the
region's event-loops connected in memory."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from maasserver.rpc.regionservice import RegionServer, RegionService
from provisioningserver.rpc.clusterservice import (
    ClusterClientService,
    DiscoveryError,
    parseDiscovery,
)
from provisioningserver.rpc.discovery import DiscoveryLimits, makeDiscoveryDocument
from provisioningserver.rpc.exceptions import NoConnectionsAvailable
from provisioningserver.rpc.testing import connect_in_memory

successResultOf = SynchronousTestCase().successResultOf
failureResultOf = SynchronousTestCase().failureResultOf

SECRET = bytes(range(16))
UUID = "7f1d2c3b-4a59-4e68-9d7c-6b5a4f3e2d1c"
URL = "http://region.example/MAAS"


class FakeRegion:
    """Region event-loops reachable in memory, and their discovery answer."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.services: dict[tuple[str, int], RegionService] = {}
        self.refused: set[tuple[str, int]] = set()
        self.answer: dict | None = {}
        self.fail_with: Exception | None = None
        self.body: bytes | None = None  # Served instead of the signed answer.
        self.pending: defer.Deferred | None = None  # Served instead, if set.
        self.fetched: list[str] = []
        self.pumps: list = []
        self.attempts: list[tuple[str, int]] = []

    def add(self, name: str, *endpoints: tuple[str, int]) -> RegionService:
        service = RegionService(SECRET, name, reactor=self.clock)
        for endpoint in endpoints:
            self.services[endpoint] = service
        assert self.answer is not None
        self.answer[name] = [list(e) for e in endpoints]
        return service

    def remove(self, name: str) -> None:
        assert self.answer is not None
        del self.answer[name]

    def fetch(self, url: str) -> defer.Deferred:
        self.fetched.append(url)
        if self.fail_with is not None:
            return defer.fail(self.fail_with)
        if self.pending is not None:
            return self.pending
        if self.body is not None:
            return defer.succeed(self.body)
        return defer.succeed(makeDiscoveryDocument(SECRET, self.answer))

    def connect(self, host: str, port: int, factory) -> defer.Deferred:
        self.attempts.append((host, port))
        if (host, port) in self.refused or (host, port) not in self.services:
            return defer.fail(ConnectionRefusedError(host, port))
        client = factory.buildProtocol(None)
        server = RegionServer(self.services[(host, port)])
        pump = connect_in_memory(server, client, clock=self.clock)
        self.pumps.append(pump)
        pump.flush()
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


def make_service(
    clock: Clock, region: FakeRegion, randomness=lambda: 0.5, **kwargs
) -> ClusterClientService:
    """A cluster service polling ``region``; by default without jitter, so
    delays are exact."""
    return ClusterClientService(
        URL,
        SECRET,
        UUID,
        reactor=clock,
        fetch=region.fetch,
        connect=region.connect,
        intervals=(2, 10, 30),
        randomness=randomness,
        **kwargs,
    )


def poll_calls(clock: Clock) -> list:
    """The scheduled polls (of every cluster service on ``clock``)."""
    return [
        c for c in clock.getDelayedCalls() if getattr(c.func, "__name__", "") == "_poll"
    ]


def next_poll(clock: Clock) -> float:
    calls = poll_calls(clock)
    assert len(calls) == 1, calls
    return calls[0].getTime() - clock.seconds()


def test_polls_at_once_then_every_30s_when_fully_connected():
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.1", 5250))
    region.add("host:pid=2", ("127.0.0.1", 5251))
    service = make_service(clock, region)
    service.startService()
    assert next_poll(clock) == 0
    clock.advance(0)
    assert region.fetched == [URL + "/rpc/"]
    assert set(service.connections) == {"host:pid=1", "host:pid=2"}
    assert service.interval == 30
    assert next_poll(clock) == 30
    service.getClient()  # Does not raise.
    assert len(service.getAllClients()) == 2


def test_polls_every_10s_while_partly_connected():
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.1", 5250))
    region.add("host:pid=2", ("127.0.0.1", 5251))
    region.refused.add(("127.0.0.1", 5251))
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    assert set(service.connections) == {"host:pid=1"}
    assert next_poll(clock) == 10
    # The refused event-loop comes up; the next poll connects to it.
    region.refused.clear()
    clock.advance(10)
    assert set(service.connections) == {"host:pid=1", "host:pid=2"}
    assert next_poll(clock) == 30


def test_polls_every_2s_while_disconnected_and_logs_errors_once(logged):
    clock = Clock()
    region = FakeRegion(clock)
    region.fail_with = DiscoveryError("HTTP 503 from the region")
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    assert next_poll(clock) == 2
    clock.advance(2)
    clock.advance(2)
    assert len(region.fetched) == 3
    complaints = [e for e in logged if "did not answer usefully" in formatEvent(e)]
    assert len(complaints) == 1
    assert "503" in formatEvent(complaints[0])
    with pytest.raises(NoConnectionsAvailable):
        service.getClient()
    # The region recovers.
    region.fail_with = None
    region.add("host:pid=1", ("127.0.0.1", 5250))
    clock.advance(2)
    assert set(service.connections) == {"host:pid=1"}
    assert [e for e in logged if "answers again" in formatEvent(e)]


def test_region_not_advertising_yet_means_ask_again_soon():
    clock = Clock()
    region = FakeRegion(clock)
    region.answer = None
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    assert service.connections == {}
    assert next_poll(clock) == 2


def test_tries_each_advertised_address_until_one_answers():
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.2", 5250), ("127.0.0.1", 5250))
    region.refused.add(("127.0.0.2", 5250))
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    assert region.attempts == [("127.0.0.2", 5250), ("127.0.0.1", 5250)]
    assert set(service.connections) == {"host:pid=1"}
    assert service.connections["host:pid=1"].address == ("127.0.0.1", 5250)


def test_drops_event_loops_no_longer_advertised():
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.1", 5250))
    gone = region.add("host:pid=2", ("127.0.0.1", 5251))
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    assert set(service.connections) == {"host:pid=1", "host:pid=2"}
    region.remove("host:pid=2")
    clock.advance(30)
    region.flush()
    assert set(service.connections) == {"host:pid=1"}
    assert gone.connections == {}


def test_polls_at_once_after_losing_a_connection():
    clock = Clock()
    region = FakeRegion(clock)
    service_a = region.add("host:pid=1", ("127.0.0.1", 5250))
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    assert next_poll(clock) == 30
    clock.advance(5)
    old = service.connections["host:pid=1"]
    # The region event-loop drops the connection. The pump runs calls due
    # now (it advances the clock by zero), so the cluster polls and
    # reconnects without any time passing.
    (server,) = service_a.connections[UUID]
    server.transport.loseConnection()
    region.flush()
    assert clock.seconds() == 5
    assert len(region.fetched) == 2
    assert len(region.attempts) == 2
    assert service.connections["host:pid=1"] is not old
    assert next_poll(clock) == 30


def test_stop_drops_connections_and_stops_polling():
    clock = Clock()
    region = FakeRegion(clock)
    service_a = region.add("host:pid=1", ("127.0.0.1", 5250))
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    d = service.stopService()
    region.flush()
    assert d.called
    assert service.connections == {}
    assert service_a.connections == {}
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"{}",
        b'{"eventloops": []}',
        b'{"eventloops": {"a": [["127.0.0.1"]]}}',
        b'{"eventloops": {"a": [["127.0.0.1", "port"]]}}',
        b'{"eventloops": {"a": 5}}',
    ],
)
def test_parse_discovery_refuses_malformed_answers(body):
    with pytest.raises(DiscoveryError):
        parseDiscovery(body)


def test_parse_discovery():
    assert parseDiscovery(b'{"eventloops": null}') is None
    assert parseDiscovery(
        b'{"eventloops": {"h:pid=1": [["127.0.0.1", 5250], ["::1", 5251]]}}'
    ) == {"h:pid=1": [("127.0.0.1", 5250), ("::1", 5251)]}


# Discovery under attack (issues 12 and 13).


def test_a_spoofed_discovery_document_is_ignored(logged):
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.1", 5250))
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    assert set(service.connections) == {"host:pid=1"}
    # Whoever answers the cluster's HTTP request: valid JSON, a MAC made
    # without the secret, other event-loops.
    evil = {"evil:pid=1": [("10.6.6.6", 5250)]}
    region.body = makeDiscoveryDocument(bytes(16), evil)
    for _ in range(4):
        clock.advance(30)
    assert set(service.connections) == {"host:pid=1"}
    assert ("10.6.6.6", 5250) not in region.attempts
    assert service.eventloops == {"host:pid=1": [("127.0.0.1", 5250)]}
    # Four polls in 90 s: one line naming the URL, then one a minute later
    # that says how many were held back.
    lines = logged.lines("Ignoring the discovery document")
    assert len(lines) == 2, lines
    assert URL + "/rpc/" in lines[0]
    assert "does not verify" in lines[0]
    assert "more like this" in lines[1]


def test_a_spoofed_document_never_replaces_the_last_known_eventloops():
    clock = Clock()
    region = FakeRegion(clock)
    service_a = region.add("host:pid=1", ("127.0.0.1", 5250))
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    region.body = makeDiscoveryDocument(bytes(16), {})
    # The connection drops: the cluster reconnects to the event-loop it knew,
    # though discovery now says (falsely) that there is none.
    (server,) = service_a.connections[UUID]
    server.transport.loseConnection()
    region.flush()
    clock.advance(1)
    assert set(service.connections) == {"host:pid=1"}


def test_an_unsigned_document_needs_legacy_peers_allowed(logged):
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.1", 5250))
    region.body = makeDiscoveryDocument(None, {"host:pid=1": [("127.0.0.1", 5250)]})
    strict = make_service(clock, region)
    strict.startService()
    clock.advance(0)
    assert strict.connections == {}
    assert logged.lines("MAAS_RPC_ALLOW_LEGACY_PEERS=1 to accept it")
    successResultOf(strict.stopService())
    legacy = make_service(clock, region, allowLegacyPeers=True)
    legacy.startService()
    clock.advance(0)
    assert set(legacy.connections) == {"host:pid=1"}
    assert len(logged.lines("Accepted an unsigned discovery document")) == 1


def test_a_fetch_that_never_finishes_is_abandoned_at_the_deadline(logged):
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.1", 5250))
    service = make_service(clock, region, discoveryLimits=DiscoveryLimits(timeout=5))
    service.startService()
    clock.advance(0)
    assert set(service.connections) == {"host:pid=1"}
    cancelled = []
    region.pending = defer.Deferred(cancelled.append)  # A body dripping forever.
    clock.advance(30)
    assert not cancelled
    clock.advance(4.9)
    assert not cancelled
    clock.advance(0.1)
    assert len(cancelled) == 1
    [line] = logged.lines("did not answer usefully")
    assert "no complete answer within 5 seconds (MAAS_RPC_DISCOVERY_TIMEOUT)" in line
    # The next poll comes, and the connection it had is kept.
    region.pending = None
    assert next_poll(clock) <= 30
    assert set(service.connections) == {"host:pid=1"}


def test_stopping_abandons_a_fetch_in_progress_at_once(logged):
    clock = Clock()
    region = FakeRegion(clock)
    cancelled = []
    region.pending = defer.Deferred(cancelled.append)
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    assert region.fetched
    d = service.stopService()
    assert cancelled
    successResultOf(d)
    assert clock.getDelayedCalls() == []
    assert not logged.lines("did not answer usefully")
    assert not logged.lines("Updating connections failed")


def test_stopping_abandons_connection_attempts_in_progress():
    clock = Clock()
    region = FakeRegion(clock)
    region.answer = {f"h:pid={n}": [["127.0.0.1", 6000 + n]] for n in range(3)}
    attempts = []

    def connect(host, port, factory):
        attempts.append(defer.Deferred())
        return attempts[-1]

    service = make_service(clock, region)
    service._connect = connect
    service.startService()
    clock.advance(0)
    assert len(attempts) == 3
    successResultOf(service.stopService())
    assert all(attempt.called for attempt in attempts)  # Cancelled.
    assert service.connecting == {}
    assert clock.getDelayedCalls() == []


def test_a_document_of_5000_eventloops_is_capped_and_attempts_are_bounded(logged):
    clock = Clock()
    region = FakeRegion(clock)
    region.answer = {f"h:pid={n}": [["127.0.0.1", 10000 + n]] for n in range(5000)}
    inFlight = []
    most = [0]

    def connect(host, port, factory):
        d = defer.Deferred()
        inFlight.append(d)
        most[0] = max(most[0], len(inFlight))

        def refuse():
            inFlight.remove(d)
            d.errback(ConnectionRefusedError(host, port))

        clock.callLater(0.1, refuse)
        return d

    limits = DiscoveryLimits(maxEventloops=50, connectConcurrency=8)
    service = make_service(clock, region, discoveryLimits=limits)
    service._connect = connect
    service.startService()
    clock.pump([0] + [0.1] * 20)
    assert most[0] == 8
    assert len(service.eventloops) == 50
    assert not inFlight
    [dropped] = logged.lines("dropped")
    assert "lists 5000 event-loops; dropped 4950 event-loops" in dropped
    [failed] = logged.lines("Could not connect")
    assert "Could not connect to 50 of 50 region event-loops" in failed
    # Polls every 2 s: still one line of each in the first minute.
    clock.pump([2] * 25)
    assert len(logged.lines("Could not connect")) == 1
    assert len(logged.lines("dropped")) == 1
    successResultOf(service.stopService())


def test_5000_addresses_for_one_eventloop_are_capped_and_tried_a_few_at_a_time():
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.1", 5250))
    region.answer["host:pid=1"] = [["127.0.0.9", n] for n in range(1, 5001)] + [
        ["127.0.0.1", 5250]
    ]
    inFlight: list = []
    most = [0]
    attempted = []

    def connect(host, port, factory):
        attempted.append((host, port))
        if (host, port) == ("127.0.0.1", 5250):
            return region.connect(host, port, factory)
        d = defer.Deferred()
        inFlight.append(d)
        most[0] = max(most[0], len(inFlight))

        def refuse():
            inFlight.remove(d)
            d.errback(ConnectionRefusedError(host, port))

        clock.callLater(1.0, refuse)  # Slow to fail.
        return d

    limits = DiscoveryLimits(maxAddresses=20)
    service = make_service(clock, region, discoveryLimits=limits)
    service._connect = connect
    service.startService()
    clock.advance(0)
    for _ in range(75):
        clock.advance(0.1)
    # Four at a time, 20 in all, so the poll is over within seconds, not
    # 5,000 connect timeouts; the real address was beyond the cap.
    assert most[0] == 4
    assert len(attempted) == 20
    assert service.connecting == {}
    assert service.connections == {}
    assert ("127.0.0.1", 5250) not in region.attempts
    successResultOf(service.stopService())


def test_the_first_address_to_connect_wins_and_later_ones_are_closed():
    clock = Clock()
    region = FakeRegion(clock)
    region.add("host:pid=1", ("127.0.0.2", 5250), ("127.0.0.1", 5250))
    slow = defer.Deferred()

    def connect(host, port, factory):
        if host == "127.0.0.2":
            return slow  # Hangs (a blackholed address).
        return region.connect(host, port, factory)

    service = make_service(clock, region)
    service._connect = connect
    service.startService()
    clock.advance(0)
    assert service.connections == {}
    clock.advance(service.attemptDelay)
    region.flush()
    assert service.connections["host:pid=1"].address == ("127.0.0.1", 5250)
    assert slow.called  # Cancelled.
    d = service.stopService()
    region.flush()
    successResultOf(d)


def test_peer_text_in_discovery_is_escaped_and_bounded_in_logs(logged):
    clock = Clock()
    region = FakeRegion(clock)
    name = "\x1b[2J\nforged line " + "x" * 200_000
    region.answer = {name: [["127.0.0.1", 6000]]}
    service = make_service(clock, region)
    service.startService()
    clock.advance(0)
    [line] = logged.lines("Could not connect")
    assert "\x1b" not in line and "\n" not in line
    assert len(line) < 1000
    successResultOf(service.stopService())
