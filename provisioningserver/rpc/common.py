"""What both ends of an RPC connection share.

* :class:`Identify` and :class:`Authenticate`, the two commands both the
  region and the clusters answer (re-exported by
  :mod:`provisioningserver.rpc.cluster` and :mod:`provisioningserver.rpc.region`).
* :class:`RPCProtocol`, the AMP protocol both sides speak: it reports
  connection and disconnection through Deferreds, turns a responder's
  undeclared exception into a non-fatal error the caller can trace, refuses an
  over-long value before sending it, and lets a caller abandon a call without
  leaking its entry.
* :class:`Client`, the object callers use: ``client(Command, **kwargs)``.
"""

from __future__ import annotations

import os
import socket
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from provisioningserver.rpc.chunking import CHUNK_BYTES, joinChunks, splitLargeValues
from provisioningserver.rpc.codec import CommandSpec, serializeBox, specFor
from provisioningserver.rpc.deadlines import Deadlines
from provisioningserver.rpc.exceptions import (
    ArgumentTooLarge,
    CallTimedOut,
    NotAuthenticated,
)
from provisioningserver.rpc.interfaces import IConnection
from provisioningserver.rpc.limits import DEFAULT_LIMITS, Limits
from provisioningserver.rpc.tls import TLSConfig, certificateRole
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.twisted import DeferredValue, asynchronous

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "NOT_AUTHENTICATED",
    "TOO_MANY_ASKS",
    "Authenticate",
    "Client",
    "callWithFallback",
    "shorten",
    "Identify",
    "RPCProtocol",
    "peerAddress",
]

log = Logger()

#: Seconds a call made through a :class:`Client` may take, unless the call
#: passes ``_timeout``.
DEFAULT_CALL_TIMEOUT = 120.0

#: The error code of a command refused because the peer is not
#: authenticated yet.
NOT_AUTHENTICATED = b"NOT_AUTHENTICATED"

#: The error code sent when a peer has too many commands in progress.
TOO_MANY_ASKS = b"TOO_MANY_ASKS"


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
    random bytes as ``salt`` and answers them with
    ``digest = HMAC-SHA256(secret, message ‖ salt)``
    (:func:`provisioningserver.security.calculate_digest`); the caller
    computes the same and compares.

    :since: 1.0
    """

    arguments = [(b"message", amp.String())]
    response = [(b"digest", amp.String()), (b"salt", amp.String())]


#: Per protocol class: command name -> (spec, responder function) for the
#: responders that take the fast path.
_fastResponders: dict[type, dict[bytes, tuple[CommandSpec, Any]]] = {}


class _Ask(Deferred):
    """The Deferred of a call sent on the fast path; it knows how to decode
    its answer."""

    __slots__ = ("spec",)
    spec: CommandSpec


def _anyLarge(box: dict[bytes, bytes]) -> bool:
    for value in box.values():
        if len(value) > CHUNK_BYTES:
            return True
    return False


def shorten(value: bytes, limit: int = 64) -> str:
    """Render a peer-supplied byte string for a log line, bounded.

    :param value: bytes from the peer.
    :param limit: the most bytes shown.
    :return: printable text, cut with an ellipsis and the full length when
        longer than ``limit``.
    """
    text = value[:limit].decode("ascii", "backslashreplace")
    if len(value) > limit:
        return f"{text}... ({len(value)} bytes)"
    return text


def _hostname() -> str:
    return socket.gethostname()


def peerAddress(proto: Any) -> str:
    """Describe a protocol's peer as ``host:port``, for log lines.

    :param proto: a protocol (connected or not).
    :return: its peer's address, or a placeholder when it is not known.
    """
    transport = getattr(proto, "transport", None)
    if transport is None:
        return "(disconnected)"
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


@implementer(IConnection, IHandshakeListener)
class RPCProtocol(amp.AMP):
    """The AMP protocol both the region and the clusters speak.

    It differs from :class:`amp.AMP` in what it does with trouble, never in
    the bytes it sends:

    * an exception a responder raises that its command does not declare goes
      back to the caller as a non-fatal error with code ``UNKNOWN`` (so the
      connection stays up for everyone else), whose description carries a
      reference ``<hostname>:pid=<pid>:cmd=<Command>:ask=<n>`` that is also
      logged with the traceback, so the two can be matched;
    * an argument value longer than AMP allows is refused with
      :class:`~provisioningserver.rpc.exceptions.ArgumentTooLarge` before
      anything is sent;
    * a call's Deferred can be cancelled: its entry among the outstanding
      requests is released at once, and the answer, if it ever comes, is
      dropped quietly;
    * when :attr:`handshakeCommands` is set, only those commands are
      dispatched until ``peerAuthenticated`` is true; any other is
      refused with the non-fatal error code ``NOT_AUTHENTICATED`` (raised in
      a caller of this package as
      :class:`~provisioningserver.rpc.exceptions.NotAuthenticated`), logged
      with the peer's address, and its responder never runs;
    * a peer with more commands in progress than
      ``limits.maxOutstandingAsks``, or that leaves more than
      ``limits.maxUnsentBytes`` unread, is dropped and logged. While the
      peer does not read, this side stops reading from it too.

    :ivar onConnectionMade: a Deferred that fires with ``None`` when the
        connection is made.
    :ivar onConnectionLost: a Deferred that fires with ``None`` when the
        connection is lost.
    :ivar ident: the peer's identity once known (see
        :class:`~provisioningserver.rpc.interfaces.IConnection`), else
        ``None``.
    :ivar limits: the :class:`~provisioningserver.rpc.limits.Limits` applied
        to the peer.
    :ivar refused: how many commands the authentication gate refused.
    :ivar peerAuthenticated: whether the peer has completed the handshake.
    :ivar tls: this side's TLS material; when set, TLS is required before
        anything but ``StartTLS`` is dispatched (see
        :mod:`provisioningserver.rpc.tls`).
    :ivar tlsEstablished: whether TLS is up and the peer's certificate has
        the expected role.
    :ivar tlsReady: once TLS is wanted, a :class:`DeferredValue` set when TLS
        is up with the expected peer (``None`` until then).
    """

    # Per-connection state lives in slots: a region holds one connection per
    # cluster process, and a bigger instance dict costs about 1.5 KiB each.
    __slots__ = (
        "onConnectionMade",
        "onConnectionLost",
        "limits",
        "refused",
        "ident",
        "peerAuthenticated",
        "tls",
        "tlsEstablished",
        "tlsReady",
        "_inProgress",
        "_writePaused",
        "_unsentWhilePaused",
        "_dropAfterAnswer",
        "_parsingBox",
        "_parsingKey",
        "_boxBytes",
        "_lost",
        "_rpcDeadlines",
    )

    #: Commands dispatched before the peer is authenticated; ``None`` for no
    #: gate (every command is dispatched).
    handshakeCommands: frozenset[bytes] | None = None

    #: Whether this side answers ``StartTLS`` (the region does; the cluster
    #: initiates it).
    answersStartTLS = False

    def __init__(
        self,
        boxReceiver: Any = None,
        locator: Any = None,
        *,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(boxReceiver=boxReceiver, locator=locator)
        self.onConnectionMade: Deferred[None] = Deferred()
        self.onConnectionLost: Deferred[None] = Deferred()
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        self.refused = 0
        self._inProgress = 0
        self._writePaused = False
        self._unsentWhilePaused = 0
        self._dropAfterAnswer = False
        self._parsingBox: amp.AmpBox | None = None
        self._parsingKey: bytes | None = None
        self._boxBytes = 0
        self._lost = False
        self._rpcDeadlines: Deadlines | None = None
        self.ident: str | None = None
        self.peerAuthenticated = False
        self.tls: TLSConfig | None = None
        self.tlsEstablished = False
        self.tlsReady: DeferredValue | None = None

    def connectionMade(self) -> None:
        """Register for back-pressure and fire ``onConnectionMade``."""
        super().connectionMade()
        # As a streaming producer, this protocol hears when the transport's
        # send buffer is full (pauseProducing) and drained (resumeProducing).
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.onConnectionMade.callback(None)

    # Back-pressure (IPushProducer).

    def pauseProducing(self) -> None:
        """The peer is not reading: stop reading from it, and start counting
        what waits unsent."""
        self._writePaused = True
        self._unsentWhilePaused = 0
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None:
            pause()

    def resumeProducing(self) -> None:
        """The peer reads again: read from it again."""
        self._writePaused = False
        self._unsentWhilePaused = 0
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None:
            resume()

    def stopProducing(self) -> None:
        """The transport is going away; nothing to do."""

    def sendBox(self, box: amp.AmpBox) -> None:
        """Send a box, splitting values larger than AMP allows into chunks;
        drop a peer that leaves too much unread.

        :param box: the box.
        :raises ArgumentTooLarge: when a value exceeds
            ``limits.maxValueBytes`` (nothing is sent).
        """
        box = self._split(box)
        if self._writePaused:
            self._unsentWhilePaused += sum(len(k) + len(v) + 4 for k, v in box.items())
            if self._unsentWhilePaused > self.limits.maxUnsentBytes:
                log.warn(
                    "Peer {peer} left more than {limit} bytes unread; dropping "
                    "the connection.",
                    peer=peerAddress(self),
                    limit=self.limits.maxUnsentBytes,
                )
                self.abort()
                raise ConnectionError("peer does not read; connection dropped")
        if (
            self._locked
            or self.transport is None
            or self._startingTLSBuffer is not None
        ):
            super().sendBox(box)  # Stock AMP's errors and TLS buffering.
        else:
            self.transport.write(serializeBox(box))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fail outstanding calls, then fire ``onConnectionLost``.

        :param reason: why the connection was lost.
        """
        # AMP fails outstanding calls before it clears the transport; their
        # errbacks must already see the connection as gone.
        self._lost = True
        if self.tls is not None and not self.tlsEstablished:
            if self.hostCertificate is not None:
                log.warn(
                    "TLS with {peer} failed: {reason}",
                    peer=peerAddress(self),
                    reason=reason.getErrorMessage(),
                )
        if self.tlsReady is not None and not self.tlsReady.isSet:
            self.tlsReady.fail(reason)
            self.tlsReady.get().addErrback(lambda _: None)
        super().connectionLost(reason)
        if self._rpcDeadlines is not None:
            self._rpcDeadlines.stop()
        self.onConnectionLost.callback(None)

    def isConnected(self) -> bool:
        """Tell whether the connection is open (and not closing).

        :return: ``True`` while connected.
        """
        transport = self.transport
        if transport is None or self._lost:
            return False
        return not getattr(transport, "disconnecting", False)

    def _reflected(self, error: Exception) -> None:
        """Log a reflected or relayed challenge, and drop the connection once
        the refusal is sent."""
        log.error(
            "Peer {peer} sent a challenge issued by our own side: {error}; "
            "dropping the connection.",
            peer=peerAddress(self),
            error=error,
        )
        self._dropAfterAnswer = True

    def abort(self) -> None:
        """Close the connection at once, discarding pending output."""
        transport = self.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    def disconnect(self) -> None:
        """Close the connection, if it is open, once pending output is sent."""
        transport = self.transport
        if transport is not None:
            # A registered producer holds a TLS transport open (it waits for
            # the producer before sending close_notify).
            transport.unregisterProducer()  # type: ignore[attr-defined]
            transport.loseConnection()

    def getPeerCertificate(self) -> Any:
        """Return the peer's TLS certificate, or ``None`` without TLS.

        :return: the certificate or ``None``.
        """
        if self.transport is None or not self.hostCertificate:
            return None
        return self.peerCertificate

    def getHostCertificate(self) -> Any:
        """Return this side's TLS certificate, or ``None`` without TLS.

        :return: the certificate or ``None``.
        """
        return self.hostCertificate

    # Sending.

    def _checkValueSizes(self, command: bytes, box: amp.AmpBox) -> None:
        limit = self.limits.maxValueBytes
        for key, value in box.items():
            if len(value) > limit:
                raise ArgumentTooLarge(command, key, len(value), limit)

    def _split(self, box: amp.AmpBox) -> amp.AmpBox:
        if not _anyLarge(box):
            return box  # The common case: everything fits, as stock AMP.
        self._checkValueSizes(box.get(amp.COMMAND, b"answer"), box)
        return splitLargeValues(box)

    def _safeEmit(self, aBox: amp.AmpBox) -> None:
        try:
            super()._safeEmit(aBox)
        except ArgumentTooLarge as error:
            # A responder's answer is too large: tell the caller, plainly.
            log.error("Could not send an answer: {error}", error=error)
            errorBox = amp.AmpBox()
            errorBox[amp.ERROR] = aBox.get(amp.ANSWER, b"")
            errorBox[amp.ERROR_CODE] = amp.UNKNOWN_ERROR_CODE
            errorBox[amp.ERROR_DESCRIPTION] = str(error).encode("utf-8")
            super()._safeEmit(errorBox)
        if self._dropAfterAnswer:
            self.disconnect()

    # Receiving boxes.

    def dataReceived(self, data: bytes) -> None:
        """Parse boxes from the peer's bytes, in one pass.

        Equivalent to stock AMP's string-at-a-time state machine, but a
        single loop: a key longer than 255 bytes drops the connection as
        stock AMP does, and a box that grows past the size cap
        (``limits.maxBoxBytes``, or ``limits.maxUnauthenticatedBoxBytes``
        before authentication) drops the peer.

        :param data: bytes from the peer.
        """
        if self._justStartedTLS:
            self._justStartedTLS = False
        if self.innerProtocol is not None or self._lost:
            if not self._lost:
                super().dataReceived(data)
            return
        buf = self._unprocessed + data if self._unprocessed else data
        end = len(buf)
        pos = 0
        box = self._parsingBox
        key = self._parsingKey
        size = self._boxBytes
        while end - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            stop = pos + 2 + length
            if key is None:
                if length > amp.MAX_KEY_LENGTH:
                    self._unprocessed = b""
                    self.lengthLimitExceeded(length)
                    return
                if stop > end:
                    break
                pos = stop
                if length == 0:
                    if box is None:
                        box = amp.AmpBox()
                    self._parsingBox = None
                    self._boxBytes = size = 0
                    self.ampBoxReceived(box)
                    box = None
                    if self._lost or self.innerProtocol is not None:
                        self._unprocessed = b""
                        return
                    continue
                key = buf[pos - length : pos]
                if box is None:
                    box = amp.AmpBox()
            else:
                if stop > end:
                    break
                value = buf[pos + 2 : stop]
                pos = stop
                box[key] = value  # type: ignore[index]
                size += length + len(key)
                key = None
                if size > self._boxCap():
                    self._tooLarge()
                    return
        self._unprocessed = buf[pos:]
        self._parsingBox = box
        self._parsingKey = key
        self._boxBytes = size

    def _boxCap(self) -> int:
        if self.peerAuthenticated or self.handshakeCommands is None:
            return self.limits.maxBoxBytes
        return self.limits.maxUnauthenticatedBoxBytes

    def _tooLarge(self) -> None:
        log.warn(
            "Peer {peer} sent a box of more than {cap} bytes; dropping the connection.",
            peer=peerAddress(self),
            cap=self._boxCap(),
        )
        self._lost = True  # Parse nothing more from this peer.
        self._unprocessed = b""
        self._parsingBox = None
        self.abort()

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """Reassemble chunked values, then handle the box as AMP does.

        :param box: the received box.
        """
        if self._lost:
            return  # Dropped while parsing: dispatch nothing more.
        for key in box:
            if key[-2:] == b".2":
                joinChunks(box)
                break
        if amp.ANSWER in box or amp.ERROR in box or amp.COMMAND in box:
            super().ampBoxReceived(box)
            return
        # Stock AMP raises here, and Twisted logs the whole box: a peer could
        # then write a megabyte of log per box. Say it briefly, and drop it.
        log.warn(
            "Peer {peer} sent a box with no command, answer or error (keys "
            "{keys}); dropping the connection.",
            peer=peerAddress(self),
            keys=", ".join(shorten(key, 32) for key in list(box)[:8]),
        )
        self._lost = True
        self.abort()

    # The common path, faster than stock AMP for plain commands (see
    # provisioningserver.rpc.codec); the bytes on the wire are the same.

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any:
        """Call a command on the peer (see :meth:`amp.BoxDispatcher.callRemote`).

        :param commandType: the command class.
        :param a: positional arguments (only ``ProtocolSwitchCommand`` uses
            them).
        :param kw: the command's arguments.
        :return: a Deferred with the response dict.
        """
        spec = None if a else specFor(commandType)
        if spec is not None and self._canSendFast():
            args = spec.encodeArguments(kw)
            if args is not None and not _anyLarge(args):
                return self._callFast(commandType.commandName, spec, args)
        return super().callRemote(commandType, *a, **kw)

    def _canSendFast(self) -> bool:
        return (
            self._failAllReason is None
            and self.transport is not None
            and not self._locked
            and self._startingTLSBuffer is None
            and not self._writePaused
        )

    def _callFast(
        self, name: bytes, spec: CommandSpec, args: dict[bytes, bytes]
    ) -> Deferred[dict[str, Any]]:
        tag = self._nextTag()
        args[amp.COMMAND] = name
        args[amp.ASK] = tag
        self.transport.write(serializeBox(args))  # type: ignore[union-attr]
        d = _Ask(partial(self._forgetAsk, tag))
        d.spec = spec
        self._outstandingRequests[tag] = d  # type: ignore[index]
        return d

    def _forgetAsk(self, tag: bytes, d: Deferred[Any]) -> None:
        if self._outstandingRequests is not None:
            self._outstandingRequests.pop(tag, None)

    def _commandReceived(self, box: amp.AmpBox) -> None:
        if amp.ASK not in box:
            # No answer wanted: a failure has nobody to go to. Stock AMP drops
            # the connection; here it is logged and the connection stays.
            self.dispatchCommand(box).addErrback(self._unansweredFailed, box)
            return
        entry = self._fastResponder(box[amp.COMMAND])
        if (
            entry is None
            or amp.ASK not in box
            or self._inProgress >= self.limits.maxOutstandingAsks
            or not self._gateAllows(box[amp.COMMAND])
        ):
            super()._commandReceived(box)
            return
        spec, responder = entry
        self._inProgress += 1
        try:
            result = responder(self, **spec.decodeArguments(box))
        except BaseException:
            self._inProgress -= 1
            self._answerFailure(Failure(), spec, box)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                self._answerLater,
                self._answerFailureLater,
                callbackArgs=(spec, box),
                errbackArgs=(spec, box),
            )
            return
        self._inProgress -= 1
        self._answer(result, spec, box)

    def _unansweredFailed(self, failure: Failure, box: amp.AmpBox) -> None:
        log.warn(
            "Command {command} from {peer}, sent without wanting an answer, "
            "failed: {error}",
            command=shorten(box.get(amp.COMMAND, b"?")),
            peer=peerAddress(self),
            error=shorten(failure.getErrorMessage().encode("utf-8", "replace"), 200),
        )

    def _fastResponder(self, name: bytes) -> tuple[CommandSpec, Any] | None:
        cls = type(self)
        table = _fastResponders.get(cls)
        if table is None:
            table = _fastResponders[cls] = {}
            if cls.locateResponder is amp.AMP.locateResponder:
                dispatch = cls._commandDispatch  # type: ignore[attr-defined]
                for commandName, (command, func) in dispatch.items():
                    spec = specFor(command)
                    if spec is not None:
                        table[commandName] = (spec, func)
        if self.locator is not self:
            return None
        return table.get(name)

    def _answerLater(self, result: Any, spec: CommandSpec, box: amp.AmpBox) -> None:
        self._inProgress -= 1
        self._answer(result, spec, box)

    def _answerFailureLater(
        self, failure: Failure, spec: CommandSpec, box: amp.AmpBox
    ) -> None:
        self._inProgress -= 1
        self._answerFailure(failure, spec, box)

    def _answer(self, result: Any, spec: CommandSpec, box: amp.AmpBox) -> None:
        try:
            answer = amp.AmpBox(spec.encodeResponse(result))
        except BaseException:
            self._answerFailure(
                Failure(
                    amp.BadLocalReturn(
                        f"{spec.command.__name__} responder returned {result!r}, "
                        "which does not match its response",
                        Failure(),
                    )
                ),
                spec,
                box,
            )
            return
        answer[amp.ANSWER] = box[amp.ASK]
        self._safeEmit(answer)

    def _answerFailure(
        self, failure: Failure, spec: CommandSpec, box: amp.AmpBox
    ) -> None:
        command: Any = spec.command
        declared = failure.check(*command.allErrors) if command.allErrors else None
        if declared is not None:
            code = command.allErrors[declared]
            description = str(failure.value)
            fatal = declared in command.fatalErrors
        else:
            error = self._undeclaredError(failure, box).value
            code, description, fatal = error.errorCode, error.description, error.fatal
        errorBox: amp.AmpBox = amp.QuitBox() if fatal else amp.AmpBox()
        errorBox[amp.ERROR] = box[amp.ASK]
        errorBox[amp.ERROR_CODE] = code
        errorBox[amp.ERROR_DESCRIPTION] = (
            description.encode("utf-8", "replace")
            if isinstance(description, str)
            else description
        )
        self._safeEmit(errorBox)

    def _sendBoxCommand(
        self, command: bytes, box: amp.AmpBox, requiresAnswer: bool = True
    ) -> Deferred[amp.AmpBox] | None:
        """Send a command box, refusing over-long values first.

        :param command: the command's wire name.
        :param box: its arguments.
        :param requiresAnswer: whether an answer is expected.
        :return: a cancellable Deferred for the answer box, or ``None``.
        :raises ArgumentTooLarge: when a value does not fit in AMP.
        """
        self._checkValueSizes(command, box)
        if self._failAllReason is not None:
            return fail(self._failAllReason) if requiresAnswer else None
        box[amp.COMMAND] = command
        tag = self._nextTag()
        if requiresAnswer:
            box[amp.ASK] = tag
        box._sendTo(self.boxSender)
        if not requiresAnswer:
            return None

        def release(d: Deferred[amp.AmpBox]) -> None:
            if self._outstandingRequests is not None:
                self._outstandingRequests.pop(tag, None)

        result: Deferred[amp.AmpBox] = Deferred(release)
        self._requests()[tag] = result
        return result

    # Receiving answers.

    def _requests(self) -> dict[bytes, Deferred[amp.AmpBox]]:
        requests = self._outstandingRequests
        if requests is None:
            # failAllOutgoing() ran: the connection is gone.
            return {}
        return requests

    def _isStaleTag(self, tag: bytes) -> bool:
        """Tell whether ``tag`` names an ask this side sent and gave up on."""
        try:
            return 0 < int(tag, 16) <= self._counter
        except ValueError:
            return False

    def _answerReceived(self, box: amp.AmpBox) -> None:
        tag = box[amp.ANSWER]
        question = self._requests().pop(tag, None)
        if question is None:
            self._dropStrayAnswer(box, tag)
            return
        if type(question) is not _Ask:
            question.callback(box)  # Stock AMP's chain parses it.
            return
        spec = question.spec
        try:
            response = spec.decodeResponse(box)
        except Exception:  # noqa: BLE001 - a malformed answer fails the call
            question.errback(Failure())
            return
        question.callback(response)

    def _errorReceived(self, box: amp.AmpBox) -> None:
        # Unlike stock AMP, an error answer that the caller leaves unhandled
        # does not drop the connection (which would fail every other call on
        # it); the Deferred logs it as unhandled when it is collected.
        tag = box[amp.ERROR]
        question = self._requests().pop(tag, None)
        if question is None:
            self._dropStrayAnswer(box, tag)
            return
        spec = question.spec if type(question) is _Ask else None
        # A malformed error answer still fails the call it answers.
        errorCode = box.get(amp.ERROR_CODE, amp.UNKNOWN_ERROR_CODE)
        description = box.get(amp.ERROR_DESCRIPTION, b"").decode("utf-8", "replace")
        if spec is not None and errorCode not in (
            NOT_AUTHENTICATED,
            amp.UNHANDLED_ERROR_CODE,
        ):
            # As stock AMP's caller does: the command's declared exception,
            # else UnknownRemoteError.
            exceptionType = spec.command.reverseErrors.get(  # type: ignore[attr-defined]
                errorCode, amp.UnknownRemoteError
            )
            question.errback(Failure(exceptionType(description)))
            return
        errorType = amp.PROTOCOL_ERRORS.get(errorCode)
        if errorCode == NOT_AUTHENTICATED:
            # Not an AMP error, so no command's error mapping hides it.
            error: Exception = NotAuthenticated(description)
        elif errorType is None:
            error = amp.RemoteAmpError(errorCode, description)
        else:
            error = errorType(errorCode, description)
        question.errback(Failure(error))

    def _dropStrayAnswer(self, box: amp.AmpBox, tag: bytes) -> None:
        if self._isStaleTag(tag):
            log.debug("Dropped a late answer to abandoned ask {tag}.", tag=shorten(tag))
        else:
            log.warn(
                "Dropped an answer to ask {tag}, which was never sent, from {peer}.",
                tag=shorten(tag),
                peer=peerAddress(self),
            )

    # Receiving commands.

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[amp.AmpBox]:
        """Dispatch a received command to its responder, if the gate and the
        limits allow.

        An exception that is not already an AMP error (a declared error, or an
        unknown command) becomes a non-fatal ``UNKNOWN`` error carrying a
        reference, logged with its traceback.

        :param box: the command box.
        :return: a Deferred with the answer box.
        """
        command = box[amp.COMMAND]
        if not self._gateAllows(command):
            return self._refuse(command)
        if self._inProgress >= self.limits.maxOutstandingAsks:
            log.warn(
                "Peer {peer} has more than {limit} commands in progress; "
                "dropping the connection.",
                peer=peerAddress(self),
                limit=self.limits.maxOutstandingAsks,
            )
            self.abort()
            return fail(
                amp.RemoteAmpError(TOO_MANY_ASKS, "too many commands in progress")
            )
        self._inProgress += 1
        d = super().dispatchCommand(box)
        d.addBoth(self._dispatched)
        return d.addErrback(self._undeclaredError, box)

    def _gateAllows(self, command: bytes) -> bool:
        gate = self.handshakeCommands
        if gate is None or self.peerAuthenticated:
            return True
        if self.tls is not None and not self.tlsEstablished:
            return command == amp.StartTLS.commandName
        return command in gate

    # TLS.

    @amp.StartTLS.responder
    def startTLS(self) -> dict[str, Any]:
        """Answer ``StartTLS`` with this side's certificate and CA.

        :return: the TLS parameters.
        :raises amp.RemoteAmpError: (``TLS_ERROR``) when this side does not
            offer TLS, or TLS is already up.
        """
        if self.tls is None or not self.answersStartTLS:
            raise amp.RemoteAmpError(b"TLS_ERROR", "TLS is not offered here")
        if self.hostCertificate is not None:
            raise amp.RemoteAmpError(b"TLS_ERROR", "TLS is already up")
        return {
            "tls_localCertificate": self.tls.certificate,
            "tls_verifyAuthorities": [self.tls.authority],
        }

    def _tlsReady(self) -> DeferredValue:
        if self.tlsReady is None:
            self.tlsReady = DeferredValue()
        return self.tlsReady

    def startTLSWithPeer(self) -> Deferred[Any]:
        """Send ``StartTLS`` with this side's certificate and CA.

        :return: a Deferred that fires once TLS is up and the peer's
            certificate has the expected role (see ``tlsReady``).
        :raises RuntimeError: when this side has no TLS material.
        """
        if self.tls is None:
            raise RuntimeError("no TLS material configured")
        d = self.callRemote(
            amp.StartTLS,
            tls_localCertificate=self.tls.certificate,
            tls_verifyAuthorities=[self.tls.authority],
        )
        return d.addCallback(lambda _: self._tlsReady().get())

    def handshakeCompleted(self) -> None:
        """TLS is up (``IHandshakeListener``): check the peer's role."""
        if self.tls is None:
            return
        role = certificateRole(self.peerCertificate)
        if role != self.tls.peerRole:
            log.error(
                "TLS peer {peer} presented a certificate for {role!r}, not "
                "{expected!r}; dropping the connection.",
                peer=peerAddress(self),
                role=role,
                expected=self.tls.peerRole,
            )
            self.abort()
            return
        self.tlsEstablished = True
        ready = self._tlsReady()
        if not ready.isSet:
            ready.set(True)

    def _dispatched(self, result: Any) -> Any:
        self._inProgress -= 1
        return result

    def _refuse(self, command: bytes) -> Deferred[amp.AmpBox]:
        self.refused += 1
        name = shorten(command)
        log.warn(
            "Refused {command} from {peer}: the peer has not completed the handshake.",
            command=name,
            peer=peerAddress(self),
        )
        return fail(
            amp.RemoteAmpError(
                NOT_AUTHENTICATED,
                f"{name} refused: the handshake is not complete",
                fatal=False,
            )
        )

    def _undeclaredError(self, failure: Failure, box: amp.AmpBox) -> Failure:
        if failure.check(amp.RemoteAmpError):
            return failure
        command = shorten(box.get(amp.COMMAND, b"?"))
        ask = shorten(box.get(amp.ASK, b"-"))
        reference = f"{_hostname()}:pid={os.getpid()}:cmd={command}:ask={ask}"
        log.failure(
            "Unhandled failure in responder for {command} from {peer}; "
            "reference {reference}.",
            failure,
            command=command,
            peer=peerAddress(self),
            reference=reference,
        )
        return Failure(
            amp.RemoteAmpError(
                amp.UNKNOWN_ERROR_CODE,
                f"Unknown Error [{reference}]",
                fatal=False,
                local=failure,
            )
        )


def _checkCommand(cmd: Any) -> None:
    if not (isinstance(cmd, type) and issubclass(cmd, amp.Command)):
        raise TypeError(f"expected an amp.Command subclass; got {cmd!r}")


class Client:
    """A handle for calling one peer over one connection.

    Call it with a command and its arguments as keywords::

        response = client(EatCheez, name="Brie", origin="France")

    In the reactor thread that returns a Deferred; in any other thread it
    returns a :class:`crochet.EventualResult` (call ``.wait(timeout)`` on it).
    The Deferred fires with the response dict, or fails with a declared
    exception, :class:`~provisioningserver.rpc.exceptions.CallTimedOut` at
    the deadline, :class:`amp.UnknownRemoteError` when the responder crashed,
    or :class:`amp.UnhandledCommand` when the peer does not know the command.

    Clients compare equal, and hash the same, when they wrap the same
    connection. Don't keep one around: ask for a client each time you call,
    since connections come and go.

    :param conn: the connection to wrap.
    :param clock: the clock that measures call deadlines; the global reactor
        when ``None``.
    """

    def __init__(self, conn: IConnection, clock: Any = None) -> None:
        self._conn = conn
        self._clock = clock

    @property
    def ident(self) -> str | None:
        """The peer's identity: a cluster's UUID or a region event-loop's
        name."""
        return self._conn.ident

    @property
    def connection(self) -> IConnection:
        """The wrapped connection."""
        return self._conn

    def __call__(
        self,
        cmd: type[amp.Command],
        *args: Any,
        _timeout: Any = DEFAULT_CALL_TIMEOUT,
        **kwargs: Any,
    ) -> Any:
        """Call ``cmd`` on the peer.

        :param cmd: an :class:`amp.Command` subclass.
        :param _timeout: the call's deadline in seconds (default
            :data:`DEFAULT_CALL_TIMEOUT`); ``None`` or ≤ 0 for none.
        :param kwargs: the command's arguments, by name.
        :return: a Deferred in the reactor thread, a
            :class:`crochet.EventualResult` elsewhere, with the response dict.
        :raises TypeError: when called with positional arguments or a ``cmd``
            that is not a command.
        """
        if args:
            raise TypeError(
                f"{cmd.__name__ if isinstance(cmd, type) else cmd!r} takes its "
                f"arguments by keyword only: client({getattr(cmd, '__name__', 'Cmd')}"
                ", name=value, ...); got positional arguments "
                f"{args!r}"
            )
        _checkCommand(cmd)
        return self._call(cmd, _timeout, kwargs)

    @asynchronous
    def _call(
        self, cmd: type[amp.Command], timeout: Any, kwargs: dict[str, Any]
    ) -> Deferred[dict[str, Any]]:
        try:
            d = self._conn.callRemote(cmd, **kwargs)
        except Exception:  # noqa: BLE001 - the caller gets it as a failure
            return fail()
        if timeout is None or timeout <= 0:
            return d

        def timedOut() -> CallTimedOut:
            return CallTimedOut(
                f"{cmd.__name__} to {self.ident} got no answer within {timeout} seconds"
            )

        return self._deadlines().add(d, timeout, timedOut)

    def _deadlines(self) -> Deadlines:
        # One shared timer per connection (and clock), not one per call.
        conn: Any = self._conn
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor as clock
        deadlines = getattr(conn, "_rpcDeadlines", None)
        if deadlines is None or deadlines.clock is not clock:
            if deadlines is not None:
                deadlines.stop()
            deadlines = conn._rpcDeadlines = Deadlines(clock)
        return deadlines

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Client):
            return self._conn is other._conn
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._conn)

    def __repr__(self) -> str:
        return f"<Client for {self.ident!r}>"


async def _firstKnown(
    client: Client,
    calls: tuple[tuple[type[amp.Command], dict[str, Any]], ...],
    timeout: Any,
) -> tuple[type[amp.Command], dict[str, Any]]:
    for command, kwargs in calls[:-1]:
        try:
            return command, await client(command, _timeout=timeout, **kwargs)
        except amp.UnhandledCommand:
            continue  # The peer does not know it (UNHANDLED): try the next.
    command, kwargs = calls[-1]
    return command, await client(command, _timeout=timeout, **kwargs)


@asynchronous
def callWithFallback(
    client: Client,
    *calls: tuple[type[amp.Command], dict[str, Any]],
    _timeout: Any = DEFAULT_CALL_TIMEOUT,
) -> Deferred[tuple[type[amp.Command], dict[str, Any]]]:
    """Call the first of several forms of a command that the peer knows.

    For version skew: a newer command (``EatCheezV2``) is tried first, and
    an older form only when the peer answers ``UNHANDLED`` (it does not know
    the command). Any other error, including ``UNKNOWN`` (the peer's
    responder crashed), is raised as it is::

        command, answer = await callWithFallback(
            client,
            (EatCheezV2, {"name": "Brie", "origin": "France", "age": 8}),
            (EatCheez, {"name": "Brie", "origin": "France"}),
        )

    :param client: the :class:`Client` to call.
    :param calls: ``(command, arguments)`` pairs, newest first.
    :param _timeout: each call's deadline, as for :class:`Client`.
    :return: a Deferred (in the reactor; an
        :class:`~crochet.EventualResult` elsewhere) of the command that
        answered and its answer.
    :raises ValueError: when no calls are given.
    :raises amp.UnhandledCommand: when the peer knows none of them.
    """
    if not calls:
        raise ValueError("callWithFallback needs at least one (command, arguments)")
    return Deferred.fromCoroutine(_firstKnown(client, calls, _timeout))
