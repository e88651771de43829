"""What both ends of an RPC connection share.

* :class:`Identify` and :class:`Authenticate`, the two commands both the
  region and the clusters answer (re-exported by
  :mod:`provisioningserver.rpc.cluster` and :mod:`provisioningserver.rpc.region`).
* :class:`RPCProtocol`, the AMP protocol both sides speak. It is stock
  :class:`amp.AMP` in behaviour, faster, with the deliberate differences
  listed in the documentation ("Differences from stock AMP"); it is built
  in layers, one module each: framing (:mod:`~provisioningserver.rpc.framing`),
  answering commands (:mod:`~provisioningserver.rpc.dispatch`), calling
  (:mod:`~provisioningserver.rpc.calling`), and here the connection's life
  and its secure channel (:mod:`~provisioningserver.rpc.channel`).
* :class:`~provisioningserver.rpc.client.Client` and
  :func:`~provisioningserver.rpc.client.callWithFallback`, re-exported from
  :mod:`provisioningserver.rpc.client`, where they are documented.
"""

from __future__ import annotations

import time
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from provisioningserver.rpc.calling import CallingProtocol
from provisioningserver.rpc.channel import (
    CAPABILITIES,
    LEGACY,
    MTLS,
    MUTUAL_TLS,
    SECURE,
    SecureChannel,
    capabilityTranscript,
    exportBinding,
    parseCapabilities,
    throwawayCertificate,
    tlsOptions,
)
from provisioningserver.rpc.client import (
    DEFAULT_CALL_TIMEOUT,
    Client,
    callWithFallback,
)
from provisioningserver.rpc.dispatch import (
    NOT_AUTHENTICATED,
    SHUTTING_DOWN,
    TOO_MANY_ASKS,
    UNHANDLED,
)
from provisioningserver.rpc.exceptions import (
    AuthenticationFailed,
    ChallengeRefused,
    LegacyPeerRefused,
)
from provisioningserver.rpc.framing import peerAddress
from provisioningserver.rpc.handshake import LEGACY_PROOF, ChannelProof, answerChallenge
from provisioningserver.rpc.interfaces import IConnection
from provisioningserver.rpc.limits import Limits
from provisioningserver.rpc.tls import certificateRole
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.text import printable
from provisioningserver.utils.twisted import DeferredValue

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "NOT_AUTHENTICATED",
    "SHUTTING_DOWN",
    "TOO_MANY_ASKS",
    "UNHANDLED",
    "Authenticate",
    "Client",
    "Identify",
    "RPCProtocol",
    "callWithFallback",
    "peerAddress",
    "refuseStartTLS",
    "releaseFailure",
    "shorten",
]

log = Logger()

#: The most commands a connecting side holds while it waits to learn
#: whether its peer offers the secure channel (a MAAS region sends two).
_MAX_HELD = 4


class Identify(amp.Command):
    """Ask the peer who it is.

    A cluster answers its UUID; a region event-loop answers its name,
    ``<hostname>:pid=<pid>``.

    :since: 1.0
    """

    arguments = []
    response = [(b"ident", amp.Unicode())]


class Authenticate(amp.Command):
    """Challenge the peer to prove that it knows the shared secret.

    The caller sends a random 16-byte ``message``. The peer picks 16 fresh
    random bytes as ``salt`` and answers them with ``digest``: over the
    secure channel, an HMAC-SHA256 bound to the connection
    (:func:`provisioningserver.rpc.channel.boundDigest`); with a legacy
    (MAAS) peer, MAAS's ``HMAC-SHA256(secret, message ‖ salt)``
    (:func:`provisioningserver.security.calculate_digest`). The caller
    computes the same and compares.

    Errors: :class:`~provisioningserver.rpc.exceptions.ChallengeRefused` for
    a challenge the peer will not answer (see
    :mod:`provisioningserver.rpc.handshake`).

    :since: 1.0
    """

    arguments = [(b"message", amp.String())]
    response = [(b"digest", amp.String()), (b"salt", amp.String())]
    errors = {ChallengeRefused: b"ChallengeRefused"}


def refuseStartTLS(protocol: Any) -> dict[str, Any]:
    """A ``StartTLS`` responder that refuses: for protocols whose TLS is set
    up by the secure channel and never changed afterwards (stock AMP's own
    responder would start anonymous TLS on request).

    :param protocol: the protocol asked.
    :return: never.
    :raises amp.RemoteAmpError: (``TLS_ERROR``) always.
    """
    raise amp.RemoteAmpError(
        b"TLS_ERROR", "StartTLS is not supported: the secure channel sets up TLS"
    )


def releaseFailure(failure: Failure) -> Failure:
    """Drop a failure's traceback (and those of the exceptions it chains),
    once it has been logged.

    A failure kept on a connection (say, as why its handshake failed) would
    otherwise keep the frames of the coroutine that raised it, and through
    them the connection itself: a reference cycle that only a full garbage
    collection frees.

    :param failure: the failure.
    :return: the same failure, cleaned.
    """
    failure.cleanFailure()
    error: BaseException | None = failure.value
    seen = 0
    while error is not None and seen < 16:
        error.__traceback__ = None
        error = error.__cause__ or error.__context__
        seen += 1
    return failure


def shorten(value: bytes, limit: int = 64) -> str:
    """Render a peer-supplied value for a log line, bounded and escaped.

    :param value: bytes (or text) from the peer.
    :param limit: the most characters shown.
    :return: printable text (see :func:`provisioningserver.utils.text.printable`).
    """
    return printable(value, limit)


# The states of a connection's channel.
_BARE = 0  # No channel: a bare RPCProtocol, as stock AMP.
_FIRST_BOX = 1  # Accepting side: waiting for the peer's first box.
_OFFERED = 2  # Connecting side: SecureChannel sent, answer awaited.
_TLS = 3  # TLS is starting.
_READY = 4  # The channel is up (secure, mtls or legacy).
_REFUSED = 5  # The peer was refused; nothing more is handled.


@implementer(IConnection, IHandshakeListener)
class RPCProtocol(CallingProtocol):
    """The AMP protocol both the region and the clusters speak.

    A bare ``RPCProtocol`` behaves as :class:`amp.AMP` with the deliberate
    differences of its layers. The region's and the clusters' protocols set
    :attr:`channelRole` to run the secure channel
    (:mod:`provisioningserver.rpc.channel`) before anything else: see
    :meth:`openChannel` and ``channelReady``.

    :param boxReceiver: as for :class:`amp.AMP`.
    :param locator: as for :class:`amp.AMP`.
    :param limits: the :class:`~provisioningserver.rpc.limits.Limits`
        applied to the peer.

    :ivar onConnectionMade: a Deferred that fires with ``None`` when the
        connection is made.
    :ivar onConnectionLost: a Deferred that fires with ``None`` when the
        connection is lost.
    :ivar ident: the peer's identity once known (see
        :class:`~provisioningserver.rpc.interfaces.IConnection`), else
        ``None``.
    :ivar clock: the clock that measures this connection's call deadlines
        (the global reactor when ``None``).
    :ivar mode: ``"secure"``, ``"mtls"`` or ``"legacy"`` once decided;
        ``None`` before, and on a bare protocol.
    :ivar tls: this side's mutual-TLS material
        (:class:`~provisioningserver.rpc.tls.TLSConfig`), or ``None`` for
        the secure channel with a throwaway certificate.
    :ivar allowLegacyPeers: whether a peer that does not offer the secure
        channel is accepted (``MAAS_RPC_ALLOW_LEGACY_PEERS``).
    :ivar channelReady: a :class:`DeferredValue` set to the mode once the
        channel is up, or failed when it cannot be.
    :ivar connectedAt: when the connection was made (:func:`time.time`).
    :ivar callsMade: calls made on this connection through a
        :class:`Client`.
    :ivar callsFailed: those of them that failed (error answers, deadlines,
        lost connection).
    :ivar lastCallAt: when the last of them was made (:func:`time.time`), or
        ``None``.
    """

    __slots__ = (
        "onConnectionMade",
        "onConnectionLost",
        "ident",
        "clock",
        "mode",
        "tls",
        "allowLegacyPeers",
        "channelReady",
        "connectedAt",
        "callsMade",
        "callsFailed",
        "lastCallAt",
        "_channel",
        "_proof",
        "_held",
        "_hostCertificate",
        "_offered",
        "_rpcDeadlines",
    )

    #: ``"server"`` to run the accepting side of the secure channel,
    #: ``"client"`` the connecting side, ``None`` for none (a bare protocol).
    channelRole: str | None = None

    def __init__(
        self,
        boxReceiver: Any = None,
        locator: Any = None,
        *,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(boxReceiver, locator, limits=limits)
        self.onConnectionMade: Deferred[None] = Deferred()
        self.onConnectionLost: Deferred[None] = Deferred()
        self.ident: str | None = None
        self.clock: Any = None
        self.mode: str | None = None
        self.tls: Any = None
        self.allowLegacyPeers = False
        self.channelReady = DeferredValue()
        self.connectedAt = 0.0
        self.callsMade = 0
        self.callsFailed = 0
        self.lastCallAt: float | None = None
        self._channel = _BARE
        self._proof: ChannelProof | None = None
        self._held: list[amp.AmpBox] = []
        self._hostCertificate: Any = None
        self._offered: frozenset[str] = frozenset()
        self._rpcDeadlines: dict[Any, Any] | None = None

    # The connection's life.

    def connectionMade(self) -> None:
        """Note the time, start the channel's accepting side if this is one,
        and fire ``onConnectionMade``."""
        super().connectionMade()
        self.connectedAt = time.time()
        if self.channelRole == "server":
            self.awaitChannel()
        self.onConnectionMade.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fail outstanding calls and what waits for the channel, then fire
        ``onConnectionLost``.

        :param reason: why the connection was lost.
        """
        tlsFailure = None
        if self._channel == _TLS:
            tlsFailure = "TLS with {peer} failed: {reason}"
        elif (
            self._channel == _READY
            and self.mode in (SECURE, MTLS)
            and reason.check(SSL.Error)
        ):
            # A record that does not verify: changed in flight, or forged.
            tlsFailure = (
                "TLS with {peer} failed, closing the connection: {reason} (a "
                "record that does not verify was changed in flight or forged)"
            )
        if tlsFailure is not None:
            self.peerWarn(
                "tls",
                tlsFailure,
                peer=peerAddress(self),
                reason=printable(reason.getErrorMessage(), 300),
            )
        self._lost = True
        self._held = []
        requests = self._outstandingRequests
        if requests:
            self.callsFailed += len(requests)
        if not self.channelReady.isSet:
            self.channelReady.fail(reason)
            self.channelReady.get().addErrback(lambda _: None)
        super().connectionLost(reason)
        deadlines = self._rpcDeadlines
        if deadlines:
            for each in deadlines.values():
                each.stop()
        self._rpcDeadlines = None
        self.onConnectionLost.callback(None)

    def _errorReceived(self, box: amp.AmpBox) -> None:
        self.callsFailed += 1
        super()._errorReceived(box)

    def budgetsApply(self) -> bool:
        """Tell whether the unauthenticated limits apply.

        :return: ``True`` until the peer has completed the handshake, on a
            protocol with a handshake.
        """
        return (
            self.handshakeCommands is not None or self.channelRole is not None
        ) and not self.peerAuthenticated

    # Certificates (MAAS's API).

    def getPeerCertificate(self) -> Any:
        """Return the peer's TLS certificate.

        :return: a :class:`twisted.internet.ssl.Certificate`, or ``None``
            without TLS or when the peer presented none.
        """
        if self.transport is None or self.mode not in (SECURE, MTLS):
            return None
        try:
            return self.peerCertificate
        except Exception:  # noqa: BLE001 - no certificate presented
            return None

    def getHostCertificate(self) -> Any:
        """Return this side's TLS certificate.

        :return: the certificate, or ``None`` without TLS (or on the
            connecting side of the secure channel, which presents none).
        """
        return self._hostCertificate

    def proof(self) -> ChannelProof:
        """What this connection binds ``Authenticate`` digests to.

        :return: a :class:`~provisioningserver.rpc.handshake.ChannelProof`.
        :raises AuthenticationFailed: before the channel is up.
        """
        if self.mode == LEGACY or self.channelRole is None:
            return LEGACY_PROOF  # A legacy peer, or a bare protocol: MAAS's.
        if self._proof is None:
            raise AuthenticationFailed("the channel is not up yet")
        return self._proof

    def answerChallenge(
        self, secret: bytes, message: bytes, role: bytes
    ) -> dict[str, bytes]:
        """Answer the peer's ``Authenticate`` challenge on this connection
        (its digest bound to this connection's channel).

        :param secret: the raw shared secret.
        :param message: the challenge.
        :param role: this side's role.
        :return: ``digest`` and ``salt``.
        :raises ChallengeRefused: for a challenge this side will not answer
            (see :mod:`provisioningserver.rpc.handshake`); it is logged in
            one line, :meth:`challengeRefused` is called, and the connection
            is closed once the refusal is sent.
        """
        try:
            return answerChallenge(secret, message, role, self.proof())
        except ChallengeRefused as error:
            self.peerWarn(
                "challenge",
                "Refused to answer a challenge from {peer}: {error}; closing "
                "the connection.",
                peer=peerAddress(self),
                error=error,
            )
            self.challengeRefused()
            self.closeAfterReply()
            raise

    def challengeRefused(self) -> None:
        """Called when this side refused to answer the peer's challenge
        (the refusal has been logged); a hook for subclasses."""

    # The secure channel: the connecting side.

    def openChannel(self) -> Deferred[str]:
        """Offer the secure channel (the connecting side's first box).

        Commands the peer sends meanwhile are held (a MAAS region sends
        ``Identify`` and ``Authenticate`` at once); they are handled once
        the mode is known, if the peer is an allowed legacy peer.

        :return: ``channelReady``'s Deferred: the mode once the channel
            is up; it fails with
            :class:`~provisioningserver.rpc.exceptions.LegacyPeerRefused`
            for a legacy peer that is not allowed, or with why the channel
            failed.
        """
        self._channel = _OFFERED
        self._offered = self._announced()
        d = self.callRemote(SecureChannel, capabilities=sorted(self._offered))
        d.addCallbacks(self._channelAccepted, self._channelDeclined)
        d.addErrback(self._channelFailed)
        return self.channelReady.get()

    def _channelAccepted(self, answer: dict[str, Any]) -> None:
        if self._channel != _OFFERED or self.transport is None:
            return
        if self._held:
            raise AuthenticationFailed(
                "the peer offered the secure channel but sent commands in the "
                "clear first"
            )
        accepted = parseCapabilities(answer["capabilities"])
        if (MUTUAL_TLS in accepted) != (self.tls is not None):
            raise AuthenticationFailed(
                "this cluster requires mutual TLS (MAAS_RPC_TLS_*) but the region "
                "event-loop does not use it"
                if self.tls is not None
                else "the region event-loop requires mutual TLS (MAAS_RPC_TLS_*) "
                "but this cluster has no certificate"
            )
        # TLS starts now: any byte already received after the answer came in
        # the clear, and is an injection.
        self.expectTLSNext()
        self.peerCapabilities = accepted & CAPABILITIES
        self.acceptsChunks = True
        self._proof = ChannelProof(
            MTLS if self.tls is not None else SECURE,
            transcript=capabilityTranscript(self._offered, accepted),
        )
        self._startTLSNow(server=False)

    def _channelDeclined(self, failure: Failure) -> None:
        if not failure.check(amp.UnhandledCommand) or failure.check(
            *_responderFailures()
        ):
            failure.raiseException()
        # The peer does not know SecureChannel: a legacy (MAAS) region.
        if not self.allowLegacyPeers or self.tls is not None:
            raise LegacyPeerRefused(
                "the region event-loop does not offer the secure channel (a MAAS "
                "region, or someone pretending to be one); set "
                "MAAS_RPC_ALLOW_LEGACY_PEERS=1 to allow legacy peers"
            )
        self._enterLegacy()
        held, self._held = self._held, []
        for box in held:
            if self._lost:
                break
            self.ampBoxReceived(box)

    def _channelFailed(self, failure: Failure) -> None:
        if self._channel != _READY:
            self._channel = _REFUSED
        if not self.channelReady.isSet:
            self.channelReady.fail(failure)
            self.channelReady.get().addErrback(lambda _: None)

    # The secure channel: the accepting side.

    def awaitChannel(self) -> None:
        """Wait for the peer's first box, which must be ``SecureChannel``
        (the accepting side; done on connection when :attr:`channelRole` is
        ``"server"``)."""
        self._channel = _FIRST_BOX

    def _firstBox(self, box: amp.AmpBox) -> None:
        ask = box.get(amp.ASK)
        if box.get(amp.COMMAND) == SecureChannel.commandName and ask is not None:
            self._acceptChannel(box, ask)
            return
        # Anything else: a legacy peer (a MAAS cluster starts with
        # Authenticate), or someone pretending to be one.
        if not self.allowLegacyPeers or self.tls is not None:
            self._refuseLegacyPeer(box)
            return
        self._enterLegacy()
        super().ampBoxReceived(box)

    def _acceptChannel(self, box: amp.AmpBox, ask: bytes) -> None:
        try:
            arguments = SecureChannel.parseArguments(box, self)
            offered = parseCapabilities(arguments["capabilities"])
        except Exception as error:  # noqa: BLE001 - a malformed offer
            self.peerWarn(
                "channel",
                "Peer {peer} sent a malformed SecureChannel ({error}); dropping "
                "the connection.",
                peer=peerAddress(self),
                error=printable(str(error), 120),
            )
            self._channel = _REFUSED
            self.abort()
            return
        announced = self._announced()
        if self.tls is not None and MUTUAL_TLS not in offered:
            self._refuseChannel(
                box,
                "the peer does not use mutual TLS, which this region requires "
                "(MAAS_RPC_TLS_*)",
            )
            return
        self.peerCapabilities = offered & CAPABILITIES
        self.acceptsChunks = True
        self._proof = ChannelProof(
            MTLS if self.tls is not None else SECURE,
            transcript=capabilityTranscript(offered, announced),
        )
        answer = SecureChannel.makeResponse({"capabilities": sorted(announced)}, self)
        answer[amp.ANSWER] = ask
        self.sendBox(answer)
        self.expectTLSNext()
        self._startTLSNow(server=True)

    def _announced(self) -> frozenset[str]:
        if self.tls is not None:
            return CAPABILITIES | {MUTUAL_TLS}
        return CAPABILITIES

    def _refuseChannel(self, box: amp.AmpBox, why: str) -> None:
        self._channel = _REFUSED
        self.peerWarn(
            "channel", "Refused peer at {peer}: {why}.", peer=peerAddress(self), why=why
        )
        self._refusalReply(box, why)

    def _refuseLegacyPeer(self, box: amp.AmpBox) -> None:
        self._channel = _REFUSED
        why = (
            "mutual TLS is required"
            if self.tls is not None
            else "legacy peers are not allowed (MAAS_RPC_ALLOW_LEGACY_PEERS)"
        )
        self.peerWarn(
            "legacy",
            "Refused peer at {peer}: it does not offer the secure channel (a "
            "MAAS peer, or someone pretending to be one) and {why}.",
            peer=peerAddress(self),
            why=why,
        )
        self.legacyRefused()
        self._refusalReply(box, why, LegacyPeerRefused(why))

    def _refusalReply(
        self, box: amp.AmpBox, why: str, error: Exception | None = None
    ) -> None:
        ask = box.get(amp.ASK)
        if ask is not None and amp.COMMAND in box:
            reply = amp.AmpBox()
            reply[amp.ERROR] = ask
            reply[amp.ERROR_CODE] = NOT_AUTHENTICATED
            reply[amp.ERROR_DESCRIPTION] = f"refused: {why}".encode()
            self.sendBox(reply)
        self.disconnect()
        self._lost = True
        if not self.channelReady.isSet:
            self.channelReady.fail(error or AuthenticationFailed(why))
            self.channelReady.get().addErrback(lambda _: None)

    def legacyRefused(self) -> None:
        """Called when a legacy peer is refused; a hook for subclasses (the
        region counts and logs it)."""

    # Both sides.

    def _enterLegacy(self) -> None:
        self.mode = LEGACY
        self._channel = _READY
        log.warn(
            "Peer at {peer} does not offer the secure channel; using the "
            "legacy MAAS handshake (MAAS_RPC_ALLOW_LEGACY_PEERS is set): this "
            "connection is not encrypted.",
            peer=peerAddress(self),
        )
        self.channelReady.set(LEGACY)

    def _startTLSNow(self, server: bool) -> None:
        self._channel = _TLS
        if server:
            self._hostCertificate = (
                self.tls.certificate if self.tls is not None else throwawayCertificate()
            )
        elif self.tls is not None:
            self._hostCertificate = self.tls.certificate
        self.transport.startTLS(tlsOptions(server, self.tls))  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        """TLS is up (``IHandshakeListener``): bind the proofs to it, check
        the peer's certificate role under mutual TLS, and set
        ``channelReady``."""
        if self._channel != _TLS or self._proof is None:
            return
        try:
            binding = exportBinding(self.transport)
        except Exception as error:  # noqa: BLE001 - no usable TLS connection
            self._channelBroken(f"cannot bind to the TLS connection: {error}")
            return
        if self.tls is not None:
            role = certificateRole(self.peerCertificate)
            if role != self.tls.peerRole:
                self._channelBroken(
                    f"the peer presented a certificate for "
                    f"{printable(repr(role), 80)}, not {self.tls.peerRole!r}"
                )
                return
        self._proof = ChannelProof(self._proof.mode, binding, self._proof.transcript)
        self.mode = self._proof.mode
        self._channel = _READY
        self.channelReady.set(self.mode)

    def _channelBroken(self, why: str) -> None:
        self.peerError(
            "tls",
            "TLS with {peer}: {why}; dropping the connection.",
            peer=peerAddress(self),
            why=why,
        )
        self._channel = _REFUSED
        if not self.channelReady.isSet:
            self.channelReady.fail(AuthenticationFailed(why))
            self.channelReady.get().addErrback(lambda _: None)
        self.abort()

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """Handle a box, as AMP does once the channel is up; before, run the
        channel's negotiation (see :mod:`provisioningserver.rpc.channel`).

        :param box: the received box.
        """
        channel = self._channel
        if channel == _BARE or channel == _READY:
            super().ampBoxReceived(box)
        elif channel == _FIRST_BOX:
            self._firstBox(box)
        elif channel == _OFFERED and amp.COMMAND in box:
            if len(self._held) >= _MAX_HELD:
                self.peerWarn(
                    "held",
                    "Peer {peer} sent more than {n} commands before answering "
                    "SecureChannel; dropping the connection.",
                    peer=peerAddress(self),
                    n=_MAX_HELD,
                )
                self.abort()
                return
            self._held.append(box)
        elif channel == _OFFERED:
            super().ampBoxReceived(box)  # The answer to SecureChannel.
        elif channel == _TLS:
            # TLS is starting: nothing may arrive in the clear.
            self._channelBroken("the peer sent a box in the clear before TLS")


def _responderFailures() -> tuple[type, ...]:
    from provisioningserver.rpc.exceptions import RemoteResponderFailed

    return (RemoteResponderFailed,)
