"""Probes of the secure channel, one connection each: what an attacker
without the secret tries besides the relay.

Against the region (the attacker connects, posing as a cluster), one
variant per connection, in turn:

``plaintext-same-segment``
    ``SecureChannel`` and, in the same TCP write, ``Register`` and ``Tally``
    in the clear, hoping they are handled before TLS starts.
``plaintext-instead-of-tls``
    ``SecureChannel``, then, when it is answered, a ``Tally`` in the clear
    where the TLS handshake should be.
``tls12``
    ``SecureChannel``, then TLS with at most TLS 1.2 (whose exporter is
    weaker without the extended master secret).
``abuse``
    The secure channel, then inside TLS, before authenticating: a second
    ``SecureChannel``, stock AMP's ``StartTLS``, ``Tally``, ``Ping``,
    ``Register``, and ``EatCheez`` (a cluster command); it answers the
    region's ``Identify`` with a made-up UUID and its ``Authenticate`` with
    random bytes.
``reflect``
    The secure channel; the region's ``Authenticate`` challenge is sent back
    to the region on the same connection, and its answer returned as the
    attacker's.
``error-text``
    The secure channel; the region's challenge is answered with the declared
    error ``ChallengeRefused``, whose description is the attacker's text: a
    newline, a forged log line, a terminal escape, 20,000 more characters.
``malformed-answer``
    The secure channel; the region's ``Identify`` is answered with an empty
    answer (no ``ident``).

Against the victim cluster (the attacker listens, posing as a region), the
same ideas, one variant per connection the victim makes:
``plaintext-same-segment`` (the answer to ``SecureChannel`` followed by
``EatCheez`` in the clear, in one write), ``command-before-answer``
(``EatCheez`` in the clear, then the answer, in one write),
``plaintext-instead-of-tls``, ``tls12``, ``abuse`` (``SecureChannel``,
``StartTLS``, ``EatCheez``, ``AskRegion`` inside TLS; a random digest),
``reflect``, ``error-text`` and ``malformed-answer`` (the victim's
challenge answered with no ``digest`` and no ``salt``).
"""

from __future__ import annotations

import os
import uuid as uuidlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from wire import (
    AskRegion,
    Authenticate,
    EatCheez,
    Identify,
    Ping,
    Register,
    SecureChannel,
    Side,
    Tally,
    boxBytes,
    clientOptions,
    commandBox,
    connect,
    describe,
    emit,
    serverOptions,
)

__all__ = ["CLUSTER_VARIANTS", "REGION_VARIANTS", "ClusterProbes", "RegionProbes"]

REGION_VARIANTS = (
    "plaintext-same-segment",
    "plaintext-instead-of-tls",
    "tls12",
    "abuse",
    "reflect",
    "error-text",
    "malformed-answer",
)

CLUSTER_VARIANTS = (
    "plaintext-same-segment",
    "command-before-answer",
    "plaintext-instead-of-tls",
    "tls12",
    "abuse",
    "reflect",
    "error-text",
    "malformed-answer",
)

#: What ``error-text`` answers a challenge with: a declared error whose
#: description starts a new, forged, log line, clears the screen, and runs
#: long.
FORGED = (
    "no\nFORGED info: Cluster 00000000-0000-0000-0000-000000000000 at "
    "127.0.0.1:1 registered (secure).\n\x1b[2J" + "A" * 20000
)

_OFFER = ["chunked-values"]


class _Probe:
    """One probing connection; it answers the peer's handshake commands as
    its variant says.

    :param side: the connection.
    :param variant: what to try.
    :param uuid: the identity to answer ``Identify`` with.
    :param reactor: the reactor.
    """

    def __init__(self, side: Side, variant: str, uuid: str, reactor: Any) -> None:
        self.reactor = reactor
        self.side = side
        self.variant = variant
        self.uuid = uuid
        side.onBox = self.onBox
        side.lost.addCallback(self.ended)

    def ended(self, reason: Any) -> None:
        emit(
            "probe-end",
            side=self.side.name,
            number=self.side.number,
            variant=self.variant,
        )

    def onBox(self, side: Side, box: amp.AmpBox) -> None:
        command = box.get(amp.COMMAND)
        emit("peer-box", side=side.name, number=side.number, box=describe(box))
        if self.variant == "malformed-answer" and command in (
            Identify.commandName,
            Authenticate.commandName,
        ):
            # An answer without the values the command's response declares.
            reply = amp.AmpBox()
            reply[amp.ANSWER] = box[amp.ASK]
            side.sendNow(reply)
        elif command == Identify.commandName:
            side.answer(box, ident=self.uuid)
        elif command == Authenticate.commandName:
            if self.variant == "reflect":
                self.reflect(box)
            elif self.variant == "error-text":
                reply = amp.AmpBox()
                reply[amp.ERROR] = box[amp.ASK]
                reply[amp.ERROR_CODE] = b"ChallengeRefused"
                reply[amp.ERROR_DESCRIPTION] = FORGED.encode()
                side.sendNow(reply)
            else:
                side.answer(box, digest=os.urandom(32), salt=os.urandom(16))

    def reflect(self, box: amp.AmpBox) -> None:
        message = Authenticate.parseArguments(box, None)["message"]

        def answered(outcome: dict[str, Any]) -> None:
            if "raw" in outcome:
                got = Authenticate.parseResponse(outcome["raw"], None)
                self.side.answer(box, digest=got["digest"], salt=got["salt"])

        self.side.call(Authenticate, message=message).addCallback(answered)

    def insideTLS(self, side: Side) -> None:
        """Commands of the attacker's own, once TLS is up (``abuse``)."""
        if self.variant != "abuse":
            return
        side.call(SecureChannel, capabilities=_OFFER)
        side.rawCall(b"StartTLS")
        if side.name == "region":
            side.call(Tally, origin="attacker-inside-tls")
            side.call(Ping)
            side.call(Register, uuid=self.uuid)
            side.call(EatCheez, name="Gouda", origin="attacker-inside-tls")
        else:
            side.call(EatCheez, name="Gouda", origin="attacker-inside-tls")
            side.call(AskRegion, origin="attacker-inside-tls")


class RegionProbes:
    """Runs the region variants in turn, one connection each.

    :param reactor: the reactor.
    :param address: the region event-loop's ``(host, port)``.
    :param variants: the variants to run.
    """

    def __init__(self, reactor: Any, address: tuple[str, int], variants: list[str]):
        self.reactor = reactor
        self.address = address
        self.variants = list(variants)
        self.number = 0

    async def run(self) -> None:
        for variant in self.variants:
            self.number += 1
            side = Side("region", lambda s, b: None, self.number)
            probe = _Probe(side, variant, str(uuidlib.uuid4()), self.reactor)
            emit("probe-start", side="region", number=self.number, variant=variant)
            wire = await connect(self.reactor, side, *self.address)
            emit(
                "probe-connected",
                side="region",
                number=self.number,
                variant=variant,
                local=wire.transport.getHost().port,
            )
            self.start(probe)
            await side.lost

    def start(self, probe: _Probe) -> None:
        side, variant = probe.side, probe.variant
        offer = commandBox(SecureChannel, b"atk.offer", capabilities=_OFFER)
        if variant == "plaintext-same-segment":
            register = commandBox(Register, b"atk.r", uuid=probe.uuid)
            tally = commandBox(Tally, b"atk.t", origin="attacker-same-segment")
            side.write(boxBytes(offer) + boxBytes(register) + boxBytes(tally))
            return
        d = side.call(SecureChannel, now=True, capabilities=_OFFER)

        def answered(outcome: dict[str, Any]) -> None:
            if "answer" not in outcome:
                return
            assert side.wire is not None
            if variant == "plaintext-instead-of-tls":
                side.wire.deaf = True
                tally = commandBox(Tally, b"atk.t", origin="attacker-instead-of-tls")
                side.write(boxBytes(tally))
            elif variant == "tls12":
                side.wire.startTLSNow(clientOptions("TLSv1_2"))
            else:
                side.onReady.append(probe.insideTLS)
                side.wire.startTLSNow(clientOptions())

        d.addCallback(answered)


class ClusterProbes:
    """Answers the victim's connections, one variant each, in turn; later
    connections are turned away.

    :param reactor: the reactor.
    :param variants: the variants, in the order of the victim's connections.
    """

    def __init__(self, reactor: Any, variants: list[str]) -> None:
        self.reactor = reactor
        self.variants = list(variants)
        self.number = 0
        self.finished: Deferred[None] = Deferred()
        self.ended = 0

    def factory(self) -> Factory:
        probes = self

        class VictimFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Any:
                if probes.number >= len(probes.variants):
                    emit("victim-turned-away")
                    return None
                variant = probes.variants[probes.number]
                probes.number += 1
                side = Side("cluster", lambda s, b: None, probes.number)
                probe = _ClusterProbe(
                    side, variant, "not-a-region:pid=1", probes.reactor
                )
                probe.side.lost.addCallback(probes.probeEnded)
                emit(
                    "probe-start",
                    side="cluster",
                    number=probes.number,
                    variant=variant,
                    peer=addr.port,
                )
                return side.wireUp()

        return VictimFactory()

    def probeEnded(self, _: Any) -> None:
        self.ended += 1
        if self.ended == len(self.variants):
            emit("cluster-probes-done")


class _ClusterProbe(_Probe):
    """A probe facing the victim: it waits for the victim's
    ``SecureChannel``."""

    def onBox(self, side: Side, box: amp.AmpBox) -> None:
        if box.get(amp.COMMAND) != SecureChannel.commandName or side.ready:
            super().onBox(side, box)
            return
        emit("offer", number=side.number, box=describe(box))
        assert side.wire is not None
        answer = SecureChannel.makeResponse({"capabilities": _OFFER}, None)
        answer[amp.ANSWER] = box[amp.ASK]
        cheez = commandBox(EatCheez, b"atk.e", name="Gouda", origin="attacker-clear")
        variant = self.variant
        if variant == "plaintext-same-segment":
            side.wire.deaf = True
            side.write(boxBytes(answer) + boxBytes(cheez))
        elif variant == "command-before-answer":
            side.wire.deaf = True
            side.write(boxBytes(cheez) + boxBytes(answer))
        elif variant == "plaintext-instead-of-tls":
            side.wire.deaf = True
            side.write(boxBytes(answer))
            # Where the TLS ServerHello should come: an AMP box.
            self.reactor.callLater(0.05, side.write, boxBytes(cheez))
        elif variant == "tls12":
            side.write(boxBytes(answer))
            side.wire.startTLSNow(serverOptions("TLSv1_2"))
        else:
            side.onReady.append(self.insideTLS)
            side.write(boxBytes(answer))
            side.wire.startTLSNow(serverOptions())
