"""The cross-role relay: the attacker between a victim cluster and the real
region, forwarding each side's challenge to the other and each answer back.

The victim cluster connects to the attacker (the test's discovery document
points it here); for each such connection the attacker opens its own
connection to the real region, posing as a cluster. How it presents itself
to each side is chosen per run:

``secure``
    It speaks the secure channel: to the victim it answers ``SecureChannel``
    (with the capabilities the region answered, so that both sides see the
    same announcements) and starts TLS as the server with its own
    certificate; to the region it sends ``SecureChannel`` with the victim's
    capabilities and starts TLS as the client.
``legacy``
    It poses as a MAAS peer: to the victim it answers ``SecureChannel``
    with ``UNHANDLED``, as a MAAS region does, and speaks plain AMP; to the
    region it sends no ``SecureChannel`` (its first box is ``Identify``,
    which a region answers during the handshake) and speaks plain AMP.

Once both of its connections are up it relays every box either way. It
holds each side's ``Authenticate`` challenge until the other side's has come
too, and each answer until both answers have come, so that both sides get
what they need to decide at the same moment (a relay that forwarded as it
went would let the faster side hang up first, and the slower side would
only time out); whatever has come after ``--hold`` seconds is released
anyway.

It also tries commands of its own, on both connections, once they are up
(``early``) and again right after the answers were released (``late``), when
a side that had accepted a relayed proof would let them through: on the
victim, ``Identify`` (to learn its UUID) and ``EatCheez``; on the region,
``Register`` under the victim's UUID, ``Tally`` (the test extension's
counted command) and ``Ping``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory
from twisted.protocols import amp
from wire import (
    Authenticate,
    EatCheez,
    Identify,
    Ping,
    Register,
    SecureChannel,
    Side,
    Tally,
    clientOptions,
    connect,
    describe,
    emit,
    serverOptions,
)

__all__ = ["Relay"]

_AUTHENTICATE = Authenticate.commandName


class Pair:
    """One victim connection and the attacker's connection to the region."""

    def __init__(self, relay: Relay, number: int) -> None:
        self.relay = relay
        self.number = number
        self.cluster = Side("cluster", self.fromCluster, number)
        self.region = Side("region", self.fromRegion, number)
        self.offer: amp.AmpBox | None = None
        self.uuid: str | None = None
        self.challenges: list[tuple[Side, amp.AmpBox]] = []
        self.released = 0
        self.responses: list[tuple[Side, amp.AmpBox]] = []
        self.timers: dict[str, Any] = {}
        self.started = False
        self.regionCapabilities: list[str] = []
        for side in (self.cluster, self.region):
            side.onReady.append(self.sideReady)
            side.lost.addCallback(self.sideLost, side)

    # Setting up each side's channel.

    def fromCluster(self, side: Side, box: amp.AmpBox) -> None:
        if self.offer is None and box.get(amp.COMMAND) == SecureChannel.commandName:
            self.offer = box
            emit("offer", number=self.number, box=describe(box))
            self.connectRegion()
            if self.relay.toCluster == "legacy":
                # As a MAAS region: it does not know the command.
                reply = amp.AmpBox()
                reply[amp.ERROR] = box[amp.ASK]
                reply[amp.ERROR_CODE] = amp.UNHANDLED_ERROR_CODE
                reply[amp.ERROR_DESCRIPTION] = b"Unhandled Command: b'SecureChannel'"
                side.sendNow(reply)
                side.setReady()
            elif self.relay.toRegion == "legacy":
                self.answerOffer(["chunked-values"])
            return
        if not side.ready:
            emit("early-box", side=side.name, number=self.number, box=describe(box))
            return
        self.route(side, self.region, box)

    def answerOffer(self, capabilities: list[str]) -> None:
        assert self.offer is not None
        self.cluster.answer(self.offer, capabilities=capabilities)
        assert self.cluster.wire is not None
        self.cluster.wire.startTLSNow(serverOptions())

    def connectRegion(self) -> None:
        host, port = self.relay.regionAddress
        d = connect(self.relay.reactor, self.region, host, port)
        d.addCallbacks(self.regionConnected, self.regionRefused)

    def regionRefused(self, failure: Any) -> None:
        emit("region-refused", number=self.number, error=failure.getErrorMessage())
        self.cluster.close()

    def regionConnected(self, wire: Any) -> None:
        emit(
            "region-connected", number=self.number, local=wire.transport.getHost().port
        )
        if self.relay.toRegion == "legacy":
            # A first box that is not SecureChannel: a "MAAS cluster".
            self.region.setReady()
            self.region.call(Identify)
            return
        assert self.offer is not None
        offered = SecureChannel.parseArguments(self.offer, None)["capabilities"]
        d = self.region.call(SecureChannel, now=True, capabilities=offered or [])
        d.addCallback(self.regionAnswered)

    def regionAnswered(self, outcome: dict[str, Any]) -> None:
        if "answer" not in outcome:
            self.cluster.close()
            return
        answer = SecureChannel.parseResponse(outcome["raw"], None)
        self.regionCapabilities = answer["capabilities"] or []
        assert self.region.wire is not None
        self.region.wire.startTLSNow(clientOptions())

    def sideReady(self, side: Side) -> None:
        if (
            side is self.region
            and self.relay.toRegion == "secure"
            and self.relay.toCluster == "secure"
        ):
            # Answer the victim only now, with what the region announced.
            self.answerOffer(self.regionCapabilities)
        if self.cluster.ready and self.region.ready and not self.started:
            self.started = True
            emit("both-ready", number=self.number)
            self.inject("early")

    def sideLost(self, reason: Any, side: Side) -> Any:
        other = self.region if side is self.cluster else self.cluster
        if not other.closed:
            # Let the other side decide by itself, a little while.
            self.relay.reactor.callLater(self.relay.linger, other.close)
        if self.cluster.closed and self.region.closed:
            for timer in self.timers.values():
                if timer.active():
                    timer.cancel()
            self.relay.pairDone(self)
        return None

    # Relaying.

    def fromRegion(self, side: Side, box: amp.AmpBox) -> None:
        if not side.ready:
            emit("early-box", side=side.name, number=self.number, box=describe(box))
            return
        self.route(side, self.cluster, box)

    def route(self, source: Side, target: Side, box: amp.AmpBox) -> None:
        command = box.get(amp.COMMAND)
        if command is not None:
            tag = box.get(amp.ASK)
            if tag is not None:
                target.relayed[tag] = command
            emit(
                "relay",
                number=self.number,
                source=source.name,
                target=target.name,
                box=describe(box),
            )
            if command == _AUTHENTICATE and self.relay.hold > 0:
                self.holdChallenge(target, box)
            else:
                target.send(box)
            return
        tag = box.get(amp.ANSWER, box.get(amp.ERROR))
        name = source.relayed.pop(tag, None) if tag is not None else None
        if name is None:
            emit("stray", side=source.name, number=self.number, box=describe(box))
            return
        emit(
            "relay-response",
            number=self.number,
            source=source.name,
            target=target.name,
            command=name.decode(),
            box=describe(box),
        )
        if name == _AUTHENTICATE and self.relay.hold > 0:
            self.holdResponse(target, box)
        else:
            target.send(box)

    def holdChallenge(self, target: Side, box: amp.AmpBox) -> None:
        self.challenges.append((target, box))
        if len(self.challenges) >= 2:
            self.releaseChallenges()
        elif "challenges" not in self.timers:
            self.timers["challenges"] = self.relay.reactor.callLater(
                self.relay.hold, self.releaseChallenges
            )

    def releaseChallenges(self) -> None:
        timer = self.timers.pop("challenges", None)
        if timer is not None and timer.active():
            timer.cancel()
        held, self.challenges = self.challenges, []
        self.released += len(held)
        emit("released-challenges", number=self.number, count=len(held))
        for target, box in held:
            target.send(box)

    def holdResponse(self, target: Side, box: amp.AmpBox) -> None:
        self.responses.append((target, box))
        if len(self.responses) >= self.released:
            self.releaseResponses()
        elif "responses" not in self.timers:
            self.timers["responses"] = self.relay.reactor.callLater(
                self.relay.hold, self.releaseResponses
            )

    def releaseResponses(self) -> None:
        timer = self.timers.pop("responses", None)
        if timer is not None and timer.active():
            timer.cancel()
        held, self.responses = self.responses, []
        emit("released-responses", number=self.number, count=len(held))
        for target, box in held:
            target.send(box)
        self.inject("late")

    # The attacker's own commands.

    def inject(self, stage: str) -> None:
        origin = f"attacker-{stage}"
        self.cluster.call(EatCheez, name=f"Gouda ({stage})", origin=origin)
        self.region.call(Tally, origin=origin)
        self.region.call(Ping)
        if stage == "early":
            self.cluster.call(Identify).addCallback(self.learnedUUID)

    def learnedUUID(self, outcome: dict[str, Any]) -> None:
        ident = outcome.get("answer", {}).get("ident")
        if ident:
            self.uuid = ident
            emit("victim-uuid", number=self.number, uuid=ident)
            self.region.call(Register, uuid=ident)


class Relay:
    """Listens for victim clusters and relays each to the region.

    :param reactor: the reactor.
    :param regionAddress: ``(host, port)`` of the real region event-loop.
    :param toCluster: ``"secure"`` or ``"legacy"``, how to pose to victims.
    :param toRegion: ``"secure"`` or ``"legacy"``, how to pose to the region.
    :param hold: seconds to hold a challenge or answer for its counterpart
        (0: forward at once).
    :param linger: seconds to keep one connection after the other closed.
    :param maxVictims: victim connections to relay; later ones are closed at
        once.
    """

    def __init__(
        self,
        reactor: Any,
        regionAddress: tuple[str, int],
        toCluster: str,
        toRegion: str,
        hold: float,
        linger: float,
        maxVictims: int,
    ) -> None:
        self.reactor = reactor
        self.regionAddress = regionAddress
        self.toCluster = toCluster
        self.toRegion = toRegion
        self.hold = hold
        self.linger = linger
        self.maxVictims = maxVictims
        self.pairs = 0
        self.done = 0

    def factory(self) -> Factory:
        relay = self

        class VictimFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Any:
                relay.pairs += 1
                if relay.pairs > relay.maxVictims:
                    emit("victim-turned-away", number=relay.pairs)
                    return None
                emit("victim", number=relay.pairs, peer=f"{addr.host}:{addr.port}")
                return Pair(relay, relay.pairs).cluster.wireUp()

        return VictimFactory()

    def pairDone(self, pair: Pair) -> None:
        self.done += 1
        emit("pair-done", number=pair.number)
