"""The secure channel, in memory with real TLS: on by default, bound to each
connection, no downgrade, legacy (MAAS) peers only by the operator's leave.

The MAAS peers here are built from stock :mod:`twisted.protocols.amp` only,
with the handshake commands declared as MAAS declares them."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp as stock
from twisted.trial.unittest import SynchronousTestCase

from maasserver.rpc.regionservice import RegionServer, RegionService
from provisioningserver.rpc.channel import SecureChannel
from provisioningserver.rpc.cluster import EatCheez
from provisioningserver.rpc.clusterservice import ClusterClient, ClusterClientService
from provisioningserver.rpc.common import Authenticate, Identify, RPCProtocol
from provisioningserver.rpc.exceptions import ChallengeRefused
from provisioningserver.rpc.handshake import CLUSTER, REGION, makeChallenge
from provisioningserver.rpc.region import Register
from provisioningserver.rpc.testing import connect_in_memory
from provisioningserver.twisted.protocols import amp

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf

SECRET = bytes(range(16))
UUID = "5f1c6c36-8c11-4c3e-9d0b-8f0f57d9d7a1"
EVENTLOOP = "region:pid=7"


# MAAS's handshake commands, declared as MAAS declares them, on stock AMP.


class MaasIdentify(stock.Command):
    commandName = b"Identify"
    response = [(b"ident", stock.Unicode())]


class MaasAuthenticate(stock.Command):
    commandName = b"Authenticate"
    arguments = [(b"message", stock.String())]
    response = [(b"digest", stock.String()), (b"salt", stock.String())]


class MaasRegister(stock.Command):
    commandName = b"Register"
    arguments = [(b"uuid", stock.Unicode())]
    response: list = []


def maasDigest(message: bytes, salt: bytes) -> bytes:
    return hmac.new(SECRET, message + salt, hashlib.sha256).digest()


class MaasRegion(stock.AMP):
    """A MAAS region event-loop: answers Identify and Authenticate (any
    challenge, as MAAS does), challenges the cluster on connection."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[bool] = []

    @MaasIdentify.responder
    def identify(self):
        return {"ident": EVENTLOOP}

    @MaasAuthenticate.responder
    def authenticate(self, message):
        salt = os.urandom(16)
        return {"digest": maasDigest(message, salt), "salt": salt}

    @MaasRegister.responder
    def register(self, uuid):
        return {}

    def connectionMade(self) -> None:
        super().connectionMade()
        challenge = os.urandom(16)

        def check(answer):
            self.checked.append(
                answer["digest"] == maasDigest(challenge, answer["salt"])
            )

        self.callRemote(MaasIdentify).addCallback(
            lambda _: self.callRemote(MaasAuthenticate, message=challenge)
        ).addCallbacks(check, lambda _: self.checked.append(False))


class MaasCluster(stock.AMP):
    """A MAAS cluster: challenges the region first, answers any challenge."""

    def __init__(self) -> None:
        super().__init__()
        self.outcome: list = []

    @MaasIdentify.responder
    def identify(self):
        return {"ident": UUID}

    @MaasAuthenticate.responder
    def authenticate(self, message):
        salt = os.urandom(16)
        return {"digest": maasDigest(message, salt), "salt": salt}

    def connectionMade(self) -> None:
        super().connectionMade()
        challenge = os.urandom(16)

        def check(answer):
            assert answer["digest"] == maasDigest(challenge, answer["salt"])
            return self.callRemote(MaasRegister, uuid=UUID)

        d = self.callRemote(MaasAuthenticate, message=challenge)
        d.addCallback(check).addBoth(self.outcome.append)


class Mesh:
    def __init__(self, *, legacy: bool = False) -> None:
        self.clock = Clock()
        self.region = RegionService(
            SECRET, EVENTLOOP, reactor=self.clock, allowLegacyPeers=legacy
        )
        self.cluster = ClusterClientService(
            "http://region/MAAS",
            SECRET,
            UUID,
            reactor=self.clock,
            allowLegacyPeers=legacy,
        )

    def server(self) -> RegionServer:
        return RegionServer(self.region)

    def client(self) -> ClusterClient:
        return ClusterClient(self.cluster, EVENTLOOP, ("127.0.0.1", 5250))


def test_the_secure_channel_is_the_default():
    mesh = Mesh()
    server, client = mesh.server(), mesh.client()
    pump = connect_in_memory(server, client, clock=mesh.clock)
    pump.flush()
    assert server.mode == client.mode == "secure"
    assert server.registered and client.ready.value is True
    assert server.peerCapabilities == client.peerCapabilities == {"chunked-values"}
    # Each end derived the same binding from this TLS connection.
    assert server.proof().binding == client.proof().binding
    assert len(server.proof().binding) == 32
    # The region presents its throwaway certificate; clusters present none.
    assert client.getPeerCertificate() is not None
    assert server.getPeerCertificate() is None
    d = server.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    assert successResultOf(d) == {"rating": 8}


def test_each_connection_has_its_own_binding():
    mesh = Mesh()
    bindings = []
    for _ in range(2):
        server, client = mesh.server(), mesh.client()
        connect_in_memory(server, client, clock=mesh.clock).flush()
        bindings.append(server.proof().binding)
    assert bindings[0] != bindings[1]


class Relay:
    """An attacker without the secret, holding two connections: one to the
    real region (posing as a cluster) and one from the victim cluster
    (posing as the region). It forwards each side's challenge to the other
    and each answer back: the cross-role relay."""

    def __init__(self) -> None:
        self.toRegion: RPCProtocol | None = None
        self.toCluster: RPCProtocol | None = None
        self.relayed: list[bytes] = []

    def forward(self, target: RPCProtocol | None, message: bytes):
        assert target is not None
        self.relayed.append(message)
        return target.callRemote(Authenticate, message=message)


def _relaying(relay: Relay, role: str, identity: str) -> RPCProtocol:
    class Attacker(RPCProtocol):
        channelRole = role

        @Identify.responder
        def identify(self):
            return {"ident": identity}

        @Authenticate.responder
        def authenticate(self, message):
            # Answer with whatever the other victim answers, once the
            # attacker holds a channel to it.
            other = relay.toCluster if role == "client" else relay.toRegion
            assert other is not None
            ready = other.channelReady.get()
            return ready.addCallback(lambda _: relay.forward(other, message))

    return Attacker()


@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy-allowed"])
def test_the_cross_role_relay_fails_on_both_sides(logged, legacy):
    """The attack that got in before: relay the region's challenge to the
    victim cluster and the victim's challenge to the region. Over the
    secure channel each answer is bound to the connection it was made on,
    so neither verifies; no command of the attacker's reaches a responder."""
    mesh = Mesh(legacy=legacy)
    relay = Relay()
    region, victim = mesh.server(), mesh.client()
    asRegion = _relaying(relay, "server", EVENTLOOP)  # Faces the victim.
    asCluster = _relaying(relay, "client", UUID)  # Faces the region.
    relay.toRegion, relay.toCluster = asCluster, asRegion
    pumpR = connect_in_memory(region, asCluster, clock=mesh.clock)
    asCluster.openChannel()
    pumpR.flush()
    assert asCluster.mode == "secure"
    pumpC = connect_in_memory(asRegion, victim, clock=mesh.clock)
    for _ in range(10):
        pumpR.flush()
        pumpC.flush()
    if relay.toCluster.transport is not None and asCluster.mode == "secure":
        # The attacker tries to register the victim's UUID.
        d = asCluster.callRemote(Register, uuid=UUID)
        d.addErrback(lambda _: None)
        for _ in range(10):
            pumpR.flush()
            pumpC.flush()
    assert relay.relayed, "the attacker relayed nothing: the test tested nothing"
    assert mesh.region.connections == {}
    assert mesh.cluster.connections == {}
    assert not region.registered
    assert not (victim.ready.isSet and victim.ready.value is True)
    assert logged.lines("Authentication of cluster") or logged.lines(
        "gave a wrong digest"
    )


def test_a_legacy_cluster_is_refused_by_default(logged):
    mesh = Mesh()
    server, maas = mesh.server(), MaasCluster()
    connect_in_memory(server, maas, clock=mesh.clock).flush()
    assert not server.registered and mesh.region.connections == {}
    (failure,) = maas.outcome
    assert "MAAS_RPC_ALLOW_LEGACY_PEERS" in failure.getErrorMessage()
    lines = logged.lines("does not offer the secure channel")
    assert len(lines) == 1 and "MAAS_RPC_ALLOW_LEGACY_PEERS" in lines[0]


def test_a_legacy_cluster_is_accepted_when_the_operator_allows_it(logged):
    mesh = Mesh(legacy=True)
    server, maas = mesh.server(), MaasCluster()
    connect_in_memory(server, maas, clock=mesh.clock).flush()
    assert server.mode == "legacy"
    assert maas.outcome == [{}]  # Registered.
    assert mesh.region.connections == {UUID: {server}}
    assert logged.lines("this connection is not encrypted")


def test_a_legacy_region_is_refused_by_default(logged):
    mesh = Mesh()
    maas, client = MaasRegion(), mesh.client()
    connect_in_memory(maas, client, clock=mesh.clock).flush()
    failure = failureResultOf(client.ready.get())
    assert "MAAS_RPC_ALLOW_LEGACY_PEERS" in failure.getErrorMessage()
    assert mesh.cluster.connections == {}
    # The region's own challenge was never answered.
    assert maas.checked in ([], [False])


def test_a_legacy_region_is_accepted_when_the_operator_allows_it():
    mesh = Mesh(legacy=True)
    maas, client = MaasRegion(), mesh.client()
    connect_in_memory(maas, client, clock=mesh.clock).flush()
    assert client.mode == "legacy"
    assert successResultOf(client.ready.get()) is True
    assert maas.checked == [True]


def test_no_downgrade_between_two_maas_rpc_peers(logged):
    """Someone on the path answers the cluster's SecureChannel with
    UNHANDLED, as a MAAS region would, and opens its own legacy connection
    to the region, relaying the handshake: even with legacy peers allowed on
    both, each side refuses the other's maas-rpc challenge."""
    mesh = Mesh(legacy=True)
    region, victim = mesh.server(), mesh.client()
    refusals: list = []

    class Stripper(RPCProtocol):
        """Faces the victim cluster as a 'MAAS region'."""

        @Authenticate.responder
        def authenticate(self, message):
            return toRegion.callRemote(Authenticate, message=message)

    toRegion = RPCProtocol()
    stripper = Stripper()
    pumpR = connect_in_memory(region, toRegion, clock=mesh.clock)
    pumpC = connect_in_memory(stripper, victim, clock=mesh.clock)
    # The relay challenges the victim with the region's tagged challenge.
    toRegion.callRemote(Authenticate, message=makeChallenge(SECRET, CLUSTER))
    d = stripper.callRemote(Authenticate, message=makeChallenge(SECRET, REGION))
    d.addErrback(refusals.append)
    for _ in range(10):
        pumpR.flush()
        pumpC.flush()
    assert victim.mode == "legacy"
    assert refusals and refusals[0].check(ChallengeRefused)
    assert mesh.region.connections == {} and mesh.cluster.connections == {}
    assert logged.lines("Refused to answer a challenge")


def test_bytes_injected_after_secure_channel_drop_the_connection(logged):
    mesh = Mesh()
    server = mesh.server()
    peer = RPCProtocol()
    pump = connect_in_memory(server, peer, clock=mesh.clock)
    offer = SecureChannel.makeArguments({"capabilities": ["chunked-values"]}, peer)
    offer[b"_command"] = b"SecureChannel"
    offer[b"_ask"] = b"1"
    injected = amp.AmpBox(_command=b"Register", _ask=b"2", uuid=UUID.encode())
    peer.transport.write(offer.serialize() + injected.serialize())
    pump.flush()
    assert not server.isConnected()
    assert logged.lines("in the clear after asking for TLS")
    assert mesh.region.connections == {}


def test_a_region_that_floods_before_answering_secure_channel_is_dropped(logged):
    mesh = Mesh()
    client = mesh.client()
    flooder = stock.AMP()
    pump = connect_in_memory(flooder, client, clock=mesh.clock, greet=False)
    for _ in range(5):
        flooder.callRemote(MaasIdentify).addErrback(lambda _: None)
    pump.flush()
    assert not client.isConnected()
    assert logged.lines("before answering SecureChannel")


def test_secure_channel_is_not_answered_twice():
    """Once the channel is up, SecureChannel is an unknown command: the
    mode cannot be changed afterwards."""
    mesh = Mesh()
    server, client = mesh.server(), mesh.client()
    pump = connect_in_memory(server, client, clock=mesh.clock)
    pump.flush()
    d = client.callRemote(SecureChannel, capabilities=[])
    pump.flush()
    failure = failureResultOf(d, stock.UnhandledCommand)
    assert "Unhandled Command" in str(failure.value)
    assert server.mode == "secure" and server.isConnected()


def test_start_tls_is_refused_once_the_channel_is_up():
    mesh = Mesh()
    server, client = mesh.server(), mesh.client()
    pump = connect_in_memory(server, client, clock=mesh.clock)
    pump.flush()
    d = client.callRemote(stock.StartTLS)
    pump.flush()
    failure = failureResultOf(d, stock.UnknownRemoteError)
    assert "secure channel" in str(failure.value)
    assert server.isConnected()


def test_observers_hear_a_legacy_refusal():
    from provisioningserver.rpc import observers

    heard: list = []

    class Observer:
        def callCompleted(self, *args):
            pass

        def connectionChanged(self, *args):
            heard.append(("changed", *args))

        def handshakeFailed(self, *args):
            heard.append(("failed", *args))

        def reconnected(self, *args):
            pass

    observers.setObserver(Observer())
    try:
        mesh = Mesh()
        server, maas = mesh.server(), MaasCluster()
        connect_in_memory(server, maas, clock=mesh.clock).flush()
    finally:
        observers.setObserver(None)
    assert ("failed", "region", "legacy-refused") in heard
    assert ("changed", "region", "handshake", 1) in heard
    assert ("changed", "region", "handshake", -1) in heard


class Fatal(amp.Command):
    """A command whose error closes the connection.

    :since: test
    """

    arguments: list = []
    response: list = []
    fatalErrors = {ValueError: b"FATAL"}


class FatalRegion(RegionServer):
    @Fatal.responder
    def fatal(self):
        raise ValueError("closes the connection")


def test_closing_the_transport_closes_a_secure_connection():
    """The protocol is its transport's producer; TLS waits for producers to
    unregister before it closes. A plain ``transport.loseConnection()`` (a
    user's, or stock AMP's after a fatal error) must still close it."""
    mesh = Mesh()
    server, client = mesh.server(), mesh.client()
    pump = connect_in_memory(server, client, clock=mesh.clock)
    pump.flush()
    client.transport.loseConnection()
    pump.flush()
    assert not server.isConnected() and not client.isConnected()
    assert successResultOf(server.onConnectionLost) is None


def test_a_fatal_error_closes_a_secure_connection_as_stock_amp_does():
    mesh = Mesh()
    server, client = FatalRegion(mesh.region), mesh.client()
    pump = connect_in_memory(server, client, clock=mesh.clock)
    pump.flush()
    d = client.callRemote(Fatal)
    pump.flush()
    failureResultOf(d, ValueError)
    assert successResultOf(client.onConnectionLost) is None
    assert not server.isConnected()
