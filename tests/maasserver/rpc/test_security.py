"""The authentication gate, the limits before trust, and the defences
against reflected, relayed and replayed challenges (in memory, under an
injected clock)."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from maasserver.rpc.regionservice import RegionServer, RegionService, _RegionFactory
from provisioningserver.rpc.cluster import Authenticate, EatCheez, Identify
from provisioningserver.rpc.clusterservice import ClusterClient, ClusterClientService
from provisioningserver.rpc.common import RPCProtocol
from provisioningserver.rpc.exceptions import ChallengeRefused, NotAuthenticated
from provisioningserver.rpc.handshake import (
    CLUSTER,
    REGION,
    answerChallenge,
    isOwnChallenge,
    makeChallenge,
)
from provisioningserver.rpc.limits import Limits
from provisioningserver.rpc.testing import connect_in_memory
from provisioningserver.security import calculate_digest
from provisioningserver.twisted.protocols import amp

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf

SECRET = bytes(range(16))
UUID = "c0ffee00-1234-4abc-8def-0123456789ab"
EVENTLOOP = "region:pid=1"


class Greet(amp.Command):
    """A region command outside the handshake.

    :since: test
    """

    arguments = [(b"name", amp.Unicode())]
    response = [(b"greeting", amp.Unicode())]


class CountingRegion(RegionServer):
    greeted = 0

    @Greet.responder
    def greet(self, name):
        CountingRegion.greeted += 1
        return {"greeting": f"hello {name}"}


class CountingCluster(ClusterClient):
    eaten = 0

    @EatCheez.responder
    def eat_cheez(self, name, origin):
        CountingCluster.eaten += 1
        return {"rating": 5}


class RawPeer(RPCProtocol):
    """A peer that never completes a handshake: it identifies itself, never
    answers a challenge, and calls whatever it likes, in the clear (a legacy
    peer)."""

    @Identify.responder
    def identify(self):
        return {"ident": UUID}

    @Authenticate.responder
    def authenticate(self, message):
        return defer.Deferred()  # Never answered.


class ChannelPeer(RawPeer):
    """The same, after opening the secure channel, as a maas-rpc cluster
    without the secret would."""

    channelRole = "client"


class ChannelRegionPeer(RawPeer):
    """A fake region without the secret: it accepts the secure channel and
    then calls whatever it likes."""

    channelRole = "server"


def region(clock, **kwargs):
    return RegionService(SECRET, EVENTLOOP, reactor=clock, **kwargs)


@pytest.mark.parametrize("legacy", [False, True], ids=["secure", "legacy"])
def test_region_refuses_commands_before_the_handshake(logged, legacy):
    CountingRegion.greeted = 0
    clock = Clock()
    server = CountingRegion(region(clock, allowLegacyPeers=legacy))
    peer = RawPeer() if legacy else ChannelPeer()
    pump = connect_in_memory(server, peer, clock=clock)
    if not legacy:
        peer.openChannel()
        pump.flush()
        assert server.mode == peer.mode == "secure"
    d = peer.callRemote(Greet, name="mallory")
    pump.flush()
    failure = failureResultOf(d, NotAuthenticated)
    assert "Greet refused" in str(failure.value)
    assert CountingRegion.greeted == 0
    assert server.refused == 1
    assert logged.lines("Refused Greet from")
    assert server.mode == ("legacy" if legacy else "secure")
    # The handshake's own commands are still answered.
    d = peer.callRemote(Authenticate, message=b"\x01" * 16)
    pump.flush()
    assert set(successResultOf(d)) == {"digest", "salt"}
    # A command the region does not know is UNHANDLED, as stock AMP says,
    # not refused: the gate refuses only what it knows.
    d = peer.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    failure = failureResultOf(d, amp.UnhandledCommand)
    assert "Unhandled Command" in str(failure.value)
    assert server.refused == 1
    clock.advance(30)  # The handshake deadline drops the raw peer.
    pump.flush()
    assert not server.isConnected()


def test_region_dispatches_once_the_cluster_has_registered():
    CountingRegion.greeted = 0
    clock = Clock()
    regionService = region(clock)
    cluster = ClusterClientService("http://r/MAAS", SECRET, UUID, reactor=clock)
    server = CountingRegion(regionService)
    client = ClusterClient(cluster, EVENTLOOP, ("127.0.0.1", 5250))
    pump = connect_in_memory(server, client, clock=clock)
    pump.flush()
    assert server.peerAuthenticated and client.peerAuthenticated
    d = client.callRemote(Greet, name="alice")
    pump.flush()
    assert successResultOf(d) == {"greeting": "hello alice"}
    assert CountingRegion.greeted == 1


@pytest.mark.parametrize("legacy", [False, True], ids=["secure", "legacy"])
def test_cluster_refuses_commands_before_the_region_is_authenticated(logged, legacy):
    CountingCluster.eaten = 0
    clock = Clock()
    cluster = ClusterClientService(
        "http://r/MAAS", SECRET, UUID, reactor=clock, allowLegacyPeers=legacy
    )
    client = CountingCluster(cluster, EVENTLOOP, ("127.0.0.1", 5250))
    fake_region = RawPeer() if legacy else ChannelRegionPeer()
    pump = connect_in_memory(fake_region, client, clock=clock)
    assert client.mode == ("legacy" if legacy else "secure")
    d = fake_region.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    failureResultOf(d, NotAuthenticated)
    assert CountingCluster.eaten == 0
    assert client.refused == 1


def test_unauthenticated_connections_per_address_are_bounded(logged):
    clock = Clock()
    service = region(clock, limits=Limits(maxUnauthenticatedPerAddress=2))
    factory = _RegionFactory(service)
    mallory = IPv4Address("TCP", "127.0.0.9", 40000)
    alice = IPv4Address("TCP", "127.0.0.8", 40000)
    first = factory.buildProtocol(mallory)
    second = factory.buildProtocol(mallory)
    assert first is not None and second is not None
    assert factory.buildProtocol(mallory) is None
    assert logged.lines("Refused a connection from 127.0.0.9")
    # Other addresses are unaffected.
    assert factory.buildProtocol(alice) is not None
    # A connection that ends frees its place.
    service._releaseUnauthenticated(first)
    assert factory.buildProtocol(mallory) is not None


def test_a_peer_with_too_many_commands_in_progress_is_dropped(logged):
    clock = Clock()

    class Slow(amp.Command):
        response = [(b"ok", amp.Boolean())]

    class SlowServer(RPCProtocol):
        @Slow.responder
        def slow(self):
            return defer.Deferred()

    server = SlowServer(limits=Limits(maxOutstandingAsks=3))
    peer = RawPeer()
    pump = connect_in_memory(server, peer, clock=clock)
    for _ in range(3):
        peer.callRemote(Slow).addErrback(lambda _: None)
    pump.flush()
    assert server.isConnected()
    peer.callRemote(Slow).addErrback(lambda _: None)
    pump.flush()
    assert not server.isConnected()
    assert logged.lines("more than 3 commands in progress")


def test_a_peer_that_does_not_read_is_dropped(logged):
    clock = Clock()
    server = RPCProtocol(limits=Limits(maxUnsentBytes=100_000))
    peer = RawPeer()
    pump = connect_in_memory(server, peer, clock=clock)
    pump.flush()
    # The transport says its buffer is full: the peer is not reading.
    server.pauseProducing()
    with pytest.raises(ConnectionLost):
        for _ in range(100):
            server.sendBox(amp.AmpBox({b"_command": b"x", b"v": b"x" * 5000}))
    assert logged.lines("left more than 100000 bytes unread")
    pump.flush()
    assert not server.isConnected()


def test_challenges_carry_their_role():
    region_challenge = makeChallenge(SECRET, REGION)
    assert len(region_challenge) == 16
    assert isOwnChallenge(SECRET, REGION, region_challenge)
    assert not isOwnChallenge(SECRET, CLUSTER, region_challenge)
    # Fresh every time.
    assert makeChallenge(SECRET, REGION) != region_challenge
    # Another secret cannot forge or recognise the tag.
    assert not isOwnChallenge(bytes(16), REGION, region_challenge)


def test_maas_style_random_challenges_are_still_answered():
    message = bytes(range(100, 116))
    answer = answerChallenge(SECRET, message, REGION)
    assert answer["digest"] == calculate_digest(SECRET, message, answer["salt"])


def _legacyRegion(clock):
    return RegionServer(region(clock, allowLegacyPeers=True))


def _legacyCluster(clock):
    return ClusterClient(
        ClusterClientService(
            "http://r/MAAS", SECRET, UUID, reactor=clock, allowLegacyPeers=True
        ),
        EVENTLOOP,
        ("127.0.0.1", 5250),
    )


@pytest.mark.parametrize("issuer", [REGION, CLUSTER], ids=["region", "cluster"])
@pytest.mark.parametrize(
    "make_target", [_legacyRegion, _legacyCluster], ids=["region", "cluster"]
)
def test_legacy_mode_never_answers_a_maas_rpc_challenge(logged, issuer, make_target):
    """Over a legacy connection, a challenge issued by any maas-rpc process
    (this one: reflection; another: relay; a maas-rpc peer made to look like
    a legacy one: downgrade) is refused, as a declared error, in one line."""
    clock = Clock()
    target = make_target(clock)
    attacker = RawPeer()
    if isinstance(target, ClusterClient):
        pump = connect_in_memory(attacker, target, clock=clock)
    else:
        pump = connect_in_memory(target, attacker, clock=clock)
    relayed = makeChallenge(SECRET, issuer)  # As a maas-rpc process issues.
    d = attacker.callRemote(Authenticate, message=relayed)
    pump.flush()
    assert target.mode == "legacy"
    failureResultOf(d, ChallengeRefused)
    lines = logged.lines("Refused to answer a challenge")
    assert len(lines) == 1 and "relay" in lines[0]
    assert not any(event.get("log_failure") for event in logged)
    assert not target.isConnected()
    # The hang-up that follows is not blamed on the secret.
    assert not logged.lines("same shared secret")


def test_a_recorded_answer_does_not_authenticate_a_new_connection(logged):
    clock = Clock()
    service = region(clock, allowLegacyPeers=True)
    # Record a genuine answer to some region challenge.
    challenge = makeChallenge(SECRET, REGION)
    recorded = answerChallenge(SECRET, challenge)  # As MAAS answers.

    class Replayer(RPCProtocol):
        @Identify.responder
        def identify(self):
            return {"ident": UUID}

        @Authenticate.responder
        def authenticate(self, message):
            assert message != challenge  # Fresh challenge per connection.
            return recorded

    server = RegionServer(service)
    replayer = Replayer()
    pump = connect_in_memory(server, replayer, clock=clock)
    # As a MAAS cluster does, it challenges the region first.
    replayer.callRemote(Authenticate, message=bytes(16)).addErrback(lambda _: None)
    pump.flush()
    assert successResultOf(server.authenticated.get()) is False
    assert logged.lines("Authentication of cluster")
    assert service.connections == {}
    assert not server.isConnected()


def test_back_pressure_keeps_the_connection_state():
    """Pausing and resuming (the peer stops reading, then reads again)
    changes nothing but reading."""
    proto = RPCProtocol()
    ready = proto.channelReady
    proto.peerCapabilities = frozenset({"chunked-values"})
    proto.closeAfterReply()
    proto.pauseProducing()
    proto.resumeProducing()
    assert proto.channelReady is ready
    assert proto.peerCapabilities == frozenset({"chunked-values"})
    assert proto._closeAfterReply
