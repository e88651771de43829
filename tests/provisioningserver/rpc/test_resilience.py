"""Timing policies for failure, under an injected clock: reconnect backoff
with jitter, the last known event-loops, keepalive, and idle connections."""

from __future__ import annotations

import importlib.util
import random
import statistics
from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock

from maasserver.rpc.regionservice import RegionServer, RegionService
from provisioningserver.rpc.clusterservice import (
    ClusterClient,
    ClusterClientService,
    DiscoveryError,
)
from provisioningserver.rpc.region import Ping
from provisioningserver.rpc.testing import connect_in_memory

_spec = importlib.util.spec_from_file_location(
    "_clusterservice_tests", Path(__file__).with_name("test_clusterservice.py")
)
_cs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cs)
FakeRegion = _cs.FakeRegion

SECRET = bytes(range(16))
UUID = _cs.UUID


service_for = _cs.make_service


def poll_delays(clock, service, count):
    """Advance to each of the next ``count`` polls; return the delays."""
    delays = []
    for _ in range(count):
        delay = _cs.next_poll(clock)
        delays.append(delay)
        clock.advance(delay)
    return delays


def lose_region(region, service_a):
    """The region goes away: its connections drop and discovery fails."""
    region.fail_with = DiscoveryError("HTTP 503")
    region.refused.update(region.services)
    for conn in list(service_a.live):
        conn.transport.loseConnection()
    region.flush()


def test_after_a_loss_retries_at_once_then_backs_off():
    clock = Clock()
    region = FakeRegion(clock)
    service_a = region.add("host:pid=1", ("127.0.0.1", 5250))
    service = service_for(clock, region)
    service.startService()
    clock.advance(0)
    assert service.connections
    fetched = len(region.fetched)
    lose_region(region, service_a)
    # At once (the in-memory pump runs calls due now, so it already has)...
    assert len(region.fetched) == fetched + 1
    # ...then 0.5, 1, 2 and the disconnected interval (2 s) after that.
    assert poll_delays(clock, service, 5) == [0.5, 1, 2, 2, 2]
    # The region comes back: connected again, and steady polling resumes.
    region.fail_with = None
    region.refused.clear()
    clock.advance(2)
    assert service.connections
    assert poll_delays(clock, service, 1) == [30]


def test_jitter_spreads_clusters_that_lost_the_same_region():
    clock = Clock()
    region = FakeRegion(clock)
    service_a = region.add("host:pid=1", ("127.0.0.1", 5250))
    rng = random.Random(4242)
    services = [service_for(clock, region, randomness=rng.random) for _ in range(100)]
    for service in services:
        # One at a time, so in-memory connections do not nest.
        service.startService()
        clock.advance(0)
    assert all(s.connections for s in services)
    lose_region(region, service_a)
    # Each retried at once; the next retries are spread out, not lock-step.
    retries = sorted(c.getTime() - clock.seconds() for c in _cs.poll_calls(clock))
    assert len(retries) == 100
    print(
        f"next retries of 100 clusters: min {min(retries):.3f}s, max "
        f"{max(retries):.3f}s, stdev {statistics.stdev(retries):.3f}s"
    )
    assert all(0.25 <= d < 0.75 for d in retries)
    assert max(retries) - min(retries) > 0.4
    assert len({round(d, 4) for d in retries}) > 90
    for service in services:
        service.stopService()


def test_uses_the_last_known_event_loops_when_discovery_fails(logged):
    clock = Clock()
    region = FakeRegion(clock)
    service_a = region.add("host:pid=1", ("127.0.0.1", 5250))
    service = service_for(clock, region)
    service.startService()
    clock.advance(0)
    # The event-loop drops us, and MAAS_URL stops answering, but the
    # event-loop itself still listens.
    region.fail_with = DiscoveryError("HTTP 502")
    (conn,) = service_a.live
    conn.transport.loseConnection()
    region.flush()
    assert set(service.connections) == {"host:pid=1"}
    assert logged.lines("did not answer usefully")
    assert region.attempts == [("127.0.0.1", 5250)] * 2


class SilentRegionServer(RegionServer):
    """A region event-loop that stops answering pings (a blackhole)."""

    @Ping.responder
    def ping(self):
        return defer.Deferred()


def connect_pair(clock, server_class=RegionServer, **cluster_kwargs):
    region = RegionService(SECRET, "host:pid=1", reactor=clock)
    cluster = ClusterClientService(
        "http://r/MAAS", SECRET, UUID, reactor=clock, **cluster_kwargs
    )
    server = server_class(region)
    client = ClusterClient(cluster, "host:pid=1", ("127.0.0.1", 5250))
    pump = connect_in_memory(server, client, clock=clock)
    pump.flush()
    assert cluster.connections
    return region, cluster, server, client, pump


def test_keepalive_keeps_a_healthy_connection():
    clock = Clock()
    region, cluster, server, client, pump = connect_pair(clock)
    for _ in range(10):
        clock.advance(30)
        pump.flush()
    assert client.isConnected() and cluster.connections


def test_keepalive_drops_a_connection_that_stops_answering(logged):
    clock = Clock()
    region, cluster, server, client, pump = connect_pair(
        clock, SilentRegionServer, keepaliveInterval=30, keepaliveTimeout=10
    )
    clock.advance(30)
    pump.flush()
    clock.advance(9.9)
    pump.flush()
    assert client.isConnected()
    clock.advance(0.1)
    pump.flush()
    assert not client.isConnected()
    assert cluster.connections == {}
    assert logged.lines("did not answer a keepalive within 10")


def test_keepalive_accepts_an_older_region_without_ping():
    clock = Clock()

    class OldRegionServer(RegionServer):
        # Refuse Ping as a region that does not know it would: UNHANDLED.
        def locateResponder(self, name):
            if name == Ping.commandName:
                return None
            return super().locateResponder(name)

    region, cluster, server, client, pump = connect_pair(clock, OldRegionServer)
    for _ in range(3):
        clock.advance(30)
        pump.flush()
    assert client.isConnected()


def test_the_region_drops_connections_it_hears_nothing_from(logged):
    clock = Clock()
    region = RegionService(SECRET, "host:pid=1", reactor=clock, idleTimeout=90)
    region.startService = lambda: None  # Not listening; only the sweep.
    from twisted.internet.task import LoopingCall

    sweeper = LoopingCall(region._dropIdle)
    sweeper.clock = clock
    sweeper.start(30, now=False)
    cluster = ClusterClientService(
        "http://r/MAAS", SECRET, UUID, reactor=clock, keepaliveInterval=1000
    )
    server = RegionServer(region)
    client = ClusterClient(cluster, "host:pid=1", ("127.0.0.1", 5250))
    pump = connect_in_memory(server, client, clock=clock)
    pump.flush()
    clock.advance(60)
    pump.flush()
    assert server.isConnected()
    clock.advance(60)  # 120 s without a byte from the cluster.
    pump.flush()
    assert not server.isConnected()
    assert logged.lines("Heard nothing from cluster")
    sweeper.stop()
