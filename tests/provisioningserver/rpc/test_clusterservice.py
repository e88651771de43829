"""ClusterClientService's polling policy, under an injected clock, with the
region's event-loops connected in memory."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from maasserver.rpc.regionservice import RegionServer, RegionService
from provisioningserver.rpc.clusterservice import (
    ClusterClientService,
    DiscoveryError,
    parseDiscovery,
)
from provisioningserver.rpc.discovery import makeDiscoveryDocument
from provisioningserver.rpc.exceptions import NoConnectionsAvailable
from provisioningserver.rpc.testing import connect_in_memory

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
