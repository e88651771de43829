"""Handshake outcomes between a RegionServer and a ClusterClient, connected in
memory and driven by an injected clock."""

from __future__ import annotations

import crochet
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from maasserver.rpc.regionservice import RegionServer, RegionService
from provisioningserver.rpc.cluster import EatCheez, Identify
from provisioningserver.rpc.clusterservice import ClusterClient, ClusterClientService
from provisioningserver.rpc.common import Client
from provisioningserver.rpc.exceptions import NoConnectionsAvailable
from provisioningserver.rpc.region import Register
from provisioningserver.rpc.testing import connect_in_memory

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf

SECRET = bytes(range(16))
OTHER_SECRET = bytes(range(1, 17))
UUID = "0b9e6a3c-2f2d-4b7e-9f63-2a8f0f4f7a11"
EVENTLOOP = "region-host:pid=4242"


class Mesh:
    """A region service and a cluster service sharing one clock."""

    def __init__(self, region_secret=SECRET, cluster_secret=SECRET, uuid=UUID):
        self.clock = Clock()
        self.region = RegionService(
            region_secret, EVENTLOOP, reactor=self.clock, handshakeTimeout=30
        )
        self.cluster = ClusterClientService(
            "http://region.example/MAAS",
            cluster_secret,
            uuid,
            reactor=self.clock,
            handshakeTimeout=30,
        )

    def connect(self, server_class=RegionServer, client_class=ClusterClient):
        server = server_class(self.region)
        client = client_class(self.cluster, EVENTLOOP, ("127.0.0.1", 5250))
        pump = connect_in_memory(server, client, clock=self.clock)
        return server, client, pump


@crochet.wait_for(timeout=10)
def in_reactor(func):
    """Run ``func`` in the reactor thread, where clients return Deferreds."""
    return defer.maybeDeferred(func)


def test_successful_handshake_enters_rotation_on_both_sides():
    in_reactor(_successful_handshake)


def _successful_handshake():
    mesh = Mesh()
    server, client, pump = mesh.connect()
    pump.flush()
    assert successResultOf(client.ready.get()) is True
    assert server.ident == UUID
    assert server.registered
    assert mesh.region.connections == {UUID: {server}}
    assert mesh.cluster.connections == {EVENTLOOP: client}
    # Calls now flow both ways.
    region_client = successResultOf(mesh.region.getClientFor(UUID, timeout=0))
    d = region_client(EatCheez, name="Brie", origin="France", _timeout=None)
    pump.flush()
    assert successResultOf(d) == {"rating": 8}
    d = mesh.cluster.getClient()(Identify, _timeout=None)
    pump.flush()
    assert successResultOf(d) == {"ident": EVENTLOOP}
    # The handshake deadlines were cancelled; only the cluster's keepalive
    # remains scheduled.
    (keepalive,) = mesh.clock.getDelayedCalls()
    assert keepalive.getTime() - mesh.clock.seconds() == 30


def test_cluster_with_wrong_secret_is_dropped_and_logged(logged):
    mesh = Mesh(cluster_secret=OTHER_SECRET)
    server, client, pump = mesh.connect()
    pump.flush()
    assert mesh.region.connections == {}
    assert mesh.cluster.connections == {}
    assert not server.registered
    assert client.ready.isSet
    failureResultOf(client.ready.get())
    assert not server.isConnected() and not client.isConnected()
    # The cluster found the region's digest wrong first and hung up; the
    # region says what that means, with the peer's address.
    lines = logged.lines("disconnected before completing the handshake")
    assert len(lines) == 1, lines
    assert "shared secret" in lines[0]
    assert UUID in lines[0] or "(unidentified)" in lines[0]


def test_region_with_wrong_secret_is_dropped_by_the_cluster(logged):
    mesh = Mesh(region_secret=OTHER_SECRET)
    server, client, pump = mesh.connect()
    pump.flush()
    assert mesh.cluster.connections == {}
    assert mesh.region.connections == {}
    failure = failureResultOf(client.ready.get())
    assert "wrong digest" in str(failure.value)
    assert logged.lines("Handshake with region at")


class LyingClusterClient(ClusterClient):
    """Registers under a UUID other than the one it identified with."""

    async def _handshake(self):
        from provisioningserver.rpc.handshake import CLUSTER, challengePeer

        await self.openChannel()
        assert await challengePeer(self, self.service.secret, CLUSTER, self.proof())
        self.peerAuthenticated = True
        await self.callRemote(Register, uuid="not-" + self.service.uuid)


def test_register_with_mismatched_uuid_is_refused(logged):
    mesh = Mesh()
    server, client, pump = mesh.connect(client_class=LyingClusterClient)
    pump.flush()
    assert mesh.region.connections == {}
    failure = failureResultOf(client.ready.get())
    assert "CannotRegisterCluster" in repr(failure.value) or "refused" in str(
        failure.value
    )
    assert logged.lines("asked to register as not-")
    assert not server.isConnected()


class SlowIdentifyClusterClient(ClusterClient):
    """Answers Identify only when the test says so."""

    pending: list[defer.Deferred] = []

    @Identify.responder
    def identify(self):
        d = defer.Deferred()
        self.pending.append(d)
        return d


def test_early_register_waits_for_the_region_check():
    SlowIdentifyClusterClient.pending = []
    mesh = Mesh()
    server, client, pump = mesh.connect(client_class=SlowIdentifyClusterClient)
    pump.flush()
    # The cluster has authenticated the region and sent Register; the region
    # is still waiting for Identify, so Register is not answered yet.
    assert len(SlowIdentifyClusterClient.pending) == 1
    assert not client.ready.isSet
    assert mesh.region.connections == {}
    SlowIdentifyClusterClient.pending.pop().callback({"ident": UUID})
    pump.flush()
    assert successResultOf(client.ready.get()) is True
    assert mesh.region.connections == {UUID: {server}}


def test_handshake_timeout_drops_a_silent_cluster(logged):
    SlowIdentifyClusterClient.pending = []
    mesh = Mesh()
    server, client, pump = mesh.connect(client_class=SlowIdentifyClusterClient)
    pump.flush()
    mesh.clock.advance(29)
    pump.flush()
    assert not not server.isConnected()
    mesh.clock.advance(1)
    pump.flush()
    assert not server.isConnected()
    assert mesh.region.connections == {}
    assert logged.lines("did not complete within 30")
    failureResultOf(client.ready.get())


def test_get_client_for_waits_for_the_cluster_to_connect():
    mesh = Mesh()
    waiting = mesh.region.getClientFor(UUID, timeout=10)
    assert not waiting.called
    server, client, pump = mesh.connect()
    pump.flush()
    assert successResultOf(waiting) == Client(server)
    assert mesh.region.waiters == {}


def test_get_client_for_times_out_with_the_uuid():
    mesh = Mesh()
    waiting = mesh.region.getClientFor(UUID, timeout=10)
    mesh.clock.advance(9.9)
    assert not waiting.called
    mesh.clock.advance(0.2)
    failure = failureResultOf(waiting, NoConnectionsAvailable)
    assert failure.value.uuid == UUID
    assert mesh.region.waiters == {}
    # Without a timeout it fails at once.
    failure = failureResultOf(mesh.region.getClientFor(UUID, timeout=0))
    assert failure.value.uuid == UUID


def test_get_all_clients_returns_one_client_per_connection():
    mesh = Mesh()
    first, _, pump1 = mesh.connect()
    # Another process of the same cluster (high availability): same UUID,
    # its own cluster service.
    mesh.cluster = ClusterClientService(
        "http://region.example/MAAS", SECRET, UUID, reactor=mesh.clock
    )
    second, _, pump2 = mesh.connect()
    pump1.flush()
    pump2.flush()
    clients = mesh.region.getAllClients()
    assert set(clients) == {Client(first), Client(second)}
    assert len(clients) == 2
    # A lost connection leaves the rotation.
    first.transport.loseConnection()
    pump1.flush()
    assert mesh.region.getAllClients() == [Client(second)]


def test_stopping_the_service_fails_clients_still_waiting():
    """Regression: cancelling a waiter removes it from the table being
    iterated (``dictionary changed size during iteration``)."""
    mesh = Mesh()
    mesh.region.startService = lambda: None  # Not listening: nothing to bind.
    mesh.region.running = True
    waiting = [mesh.region.getClientFor(UUID, timeout=30) for _ in range(2)]
    other = mesh.region.getClientFor("another", timeout=30)
    successResultOf(mesh.region.stopService())
    for d in [*waiting, other]:
        failureResultOf(d)
    assert mesh.region.waiters == {}
