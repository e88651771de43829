"""Answering the peer's commands: dispatch, errors, the handshake gate.

:class:`DispatchingProtocol` answers commands exactly as stock AMP does
(``_commandReceived`` → ``dispatchCommand`` → the responder, through
``locateResponder``), with these deliberate differences, each listed in the
documentation's "Differences from stock AMP":

* **Non-fatal undeclared errors**, as MAAS answers them: a responder's
  exception that its command does not declare, an argument that does not
  parse or is missing, and an answer that cannot be encoded or sent all go
  back as a non-fatal error with code ``UNHANDLED`` and the description
  ``Unknown Error [<hostname>:pid=<pid>:cmd=<Command>:ask=<n>]``; the same
  reference is logged with the traceback. Stock AMP sends ``UNKNOWN`` and
  closes the connection.
* **A gate before authentication**: when ``handshakeCommands`` is set,
  a command the protocol knows but that is not a handshake command is
  refused with ``NOT_AUTHENTICATED`` until ``peerAuthenticated``; its
  responder never runs. A command nobody answers gets stock AMP's
  ``UNHANDLED`` / ``Unhandled Command`` whatever the state.
* **Limits**: a peer with more than ``limits.maxOutstandingAsks`` commands
  in progress (``limits.maxUnauthenticatedAsks`` before authentication) is
  dropped; list arguments of a command received before authentication are
  capped in items.
* **Draining**: after ``drain()``, new commands are refused with
  ``SHUTTING_DOWN``.
* A failure of a command sent without wanting an answer is logged, and the
  connection stays up (stock AMP closes it). A command name that is not
  ASCII is answered as a command nobody answers (``UNHANDLED``); stock AMP
  logs a traceback and closes the connection.

The common path: for a command whose arguments are AMP's plain types and
whose protocol class overrides none of the dispatch hooks
(``dispatchCommand``, ``locateResponder``, ``lookupFunction``,
``_wrapWithSerialization``), the responder is called directly with
precompiled converters (:mod:`provisioningserver.rpc.codec`), with the same
outcome as the stock path: a ``Deferred``, a coroutine, a ``Failure`` or a
plain value may be returned, as with :func:`~twisted.internet.defer.maybeDeferred`.
Which path a command takes is decided once per protocol class and command.
"""

from __future__ import annotations

import os
import socket
import time
from types import CoroutineType
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from provisioningserver.rpc import observers
from provisioningserver.rpc.codec import CommandSpec, specFor
from provisioningserver.rpc.exceptions import ArgumentTooLarge
from provisioningserver.rpc.framing import BoxProtocol, peerAddress
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.text import printable

__all__ = [
    "NOT_AUTHENTICATED",
    "SHUTTING_DOWN",
    "TOO_MANY_ASKS",
    "UNHANDLED",
    "DispatchingProtocol",
    "errorReference",
]

log = Logger()

#: The error code of an undeclared failure (MAAS's), and of a command the
#: peer does not know (stock AMP's); the description tells them apart.
UNHANDLED = amp.UNHANDLED_ERROR_CODE

#: The error code of a command refused because the handshake is not done.
NOT_AUTHENTICATED = b"NOT_AUTHENTICATED"

#: The error code sent when a peer has too many commands in progress.
TOO_MANY_ASKS = b"TOO_MANY_ASKS"

#: The error code of a command refused because this side is shutting down.
SHUTTING_DOWN = b"SHUTTING_DOWN"

#: The description prefix of an undeclared failure.
UNKNOWN_ERROR = "Unknown Error"

# Why a reply could not be sent: an answer that does not encode.
_ENCODING_ERRORS = (TypeError, ValueError, amp.TooLong, ArgumentTooLarge)

#: Per protocol class: command name → (spec, responder function), for the
#: commands that take the common path; ``None`` for a class that overrides
#: a dispatch hook.
_fastTables: dict[type, dict[bytes, tuple[CommandSpec, Any]] | None] = {}


def errorReference(command: bytes, ask: bytes | None) -> str:
    """Make the reference an undeclared failure is reported and logged with.

    :param command: the command's wire name.
    :param ask: the ask tag, or ``None``.
    :return: ``<hostname>:pid=<pid>:cmd=<Command>:ask=<n>``.
    """
    return (
        f"{socket.gethostname()}:pid={os.getpid()}:cmd={printable(command)}"
        f":ask={printable(b'-' if ask is None else ask, 32)}"
    )


def _fastTable(cls: type) -> dict[bytes, tuple[CommandSpec, Any]] | None:
    try:
        return _fastTables[cls]
    except KeyError:
        pass
    table: dict[bytes, tuple[CommandSpec, Any]] | None = None
    if (
        cls.dispatchCommand is DispatchingProtocol.dispatchCommand  # type: ignore[attr-defined]
        and cls.locateResponder is amp.AMP.locateResponder  # type: ignore[attr-defined]
        and cls.lookupFunction is amp.CommandLocator.lookupFunction  # type: ignore[attr-defined]
        and cls._wrapWithSerialization is amp.CommandLocator._wrapWithSerialization  # type: ignore[attr-defined]
    ):
        table = {}
        for name, (command, func) in cls._commandDispatch.items():  # type: ignore[attr-defined]
            spec = specFor(command)
            if spec is not None:
                table[name] = (spec, func)
    _fastTables[cls] = table
    return table


def _unhandledCommand(name: bytes) -> amp.RemoteAmpError:
    """Stock AMP's answer to a command that no responder answers.

    :param name: the command's name, as received.
    :return: the non-fatal ``UNHANDLED`` error ``Unhandled Command: <name>``.
    """
    return amp.RemoteAmpError(
        UNHANDLED,
        f"Unhandled Command: {name!r}",
        fatal=False,
        local=Failure(amp.UnhandledCommand()),
    )


class DispatchingProtocol(BoxProtocol):
    """Answers the peer's commands; see the module's documentation.

    :ivar peerAuthenticated: whether the peer has completed the handshake
        (the gate is open).
    :ivar refused: how many commands the gate refused.
    """

    __slots__ = (
        "peerAuthenticated",
        "refused",
        "lastRefused",
        "_inProgress",
        "_drained",
        "_closeAfterReply",
    )

    #: Commands dispatched before the peer is authenticated; ``None`` for no
    #: gate (every command is dispatched).
    handshakeCommands: frozenset[bytes] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peerAuthenticated = False
        self.refused = 0
        self.lastRefused: bytes | None = None
        self._inProgress = 0
        self._drained: list[Deferred[None]] | None = None
        self._closeAfterReply = False

    @property
    def inProgress(self) -> int:
        """How many of the peer's commands are being answered now."""
        return self._inProgress

    def budgetsApply(self) -> bool:
        """Tell whether the unauthenticated limits apply: there is a gate and
        the peer has not passed it.

        :return: ``True`` before authentication.
        """
        return self.handshakeCommands is not None and not self.peerAuthenticated

    def closeAfterReply(self) -> None:
        """Close the connection once the reply being prepared has been sent
        (for a responder that refuses a peer it will not talk to again)."""
        self._closeAfterReply = True

    def disconnect(self) -> None:
        """Close the connection once pending output is sent."""
        transport = self.transport
        if transport is not None:
            transport.loseConnection()

    def drain(self) -> Deferred[None]:
        """Refuse new commands (``SHUTTING_DOWN``) from now on, and say when
        those in progress have been answered.

        :return: a Deferred that fires once no command is in progress.
        """
        if self._drained is None:
            self._drained = []
        d: Deferred[None] = Deferred()
        if self._inProgress == 0:
            d.callback(None)
        else:
            self._drained.append(d)
        return d

    # Admission: the gate and the limits, in one place for both paths.

    def _admit(self, name: bytes, box: amp.AmpBox) -> Failure | None:
        """Decide whether a command may be dispatched.

        :return: ``None`` to dispatch it, or the failure to answer with.
        """
        if self._drained is not None:
            return Failure(
                amp.RemoteAmpError(
                    SHUTTING_DOWN, "the peer is shutting down", fatal=False
                )
            )
        limit = self.limits.maxOutstandingAsks
        if self.budgetsApply():
            gate = self.handshakeCommands
            if gate is not None and name not in gate:
                if self.locator.locateResponder(name) is None:
                    return None  # Unknown: stock AMP's UNHANDLED answer.
                return self._refuse(name)
            limit = self.limits.maxUnauthenticatedAsks
            tooLong = self._overlongList(name, box)
            if tooLong is not None:
                return tooLong
        if self._inProgress >= limit:
            self.peerWarn(
                "asks",
                "Peer {peer} has more than {limit} commands in progress; "
                "dropping the connection.",
                peer=peerAddress(self),
                limit=limit,
            )
            self.abort()
            return Failure(
                amp.RemoteAmpError(
                    TOO_MANY_ASKS, "too many commands in progress", fatal=True
                )
            )
        return None

    def _overlongList(self, name: bytes, box: amp.AmpBox) -> Failure | None:
        entry = self._commandDispatch.get(name)  # type: ignore[attr-defined]
        if entry is None:
            return None
        cap = self.limits.maxUnauthenticatedListItems
        for wire, argument in entry[0].arguments:
            if isinstance(argument, amp.AmpList | amp.ListOf):
                value = box.get(wire)
                if value is not None and _countItems(value, argument, cap) > cap:
                    self.peerWarn(
                        "list-items",
                        "Peer {peer} sent {command} with more than {cap} items "
                        "in {argument} before authenticating; dropping the "
                        "connection.",
                        peer=peerAddress(self),
                        command=printable(name),
                        cap=cap,
                        argument=printable(wire),
                    )
                    self.abort()
                    return Failure(
                        amp.RemoteAmpError(
                            TOO_MANY_ASKS, "too many items before authentication"
                        )
                    )
        return None

    def _refuse(self, name: bytes) -> Failure:
        self.refused += 1
        self.lastRefused = name
        command = printable(name)
        self.peerWarn(
            "gate",
            "Refused {command} from {peer}: the peer has not completed the handshake.",
            command=command,
            peer=peerAddress(self),
        )
        return Failure(
            amp.RemoteAmpError(
                NOT_AUTHENTICATED,
                f"{command} refused: the handshake is not complete",
                fatal=False,
            )
        )

    def _finished(self) -> None:
        self._inProgress -= 1
        if self._inProgress == 0 and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    # The stock path.

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[Any]:
        """Dispatch a command to its responder, if the gate and the limits
        allow (see :meth:`amp.BoxDispatcher.dispatchCommand`).

        :param box: the command box.
        :return: a Deferred with the answer box; a failure other than a
            :class:`amp.RemoteAmpError` becomes the non-fatal ``UNHANDLED``
            error described in the module's documentation.
        """
        name = box[amp.COMMAND]
        if not name.isascii():
            # Stock AMP's locator cannot decode such a name: the exception
            # escapes dataReceived, logs a traceback and closes the
            # connection. No responder can have it, so it is answered as a
            # command nobody answers.
            return fail(_unhandledCommand(name))
        refusal = self._admit(name, box)
        if refusal is not None:
            return fail(refusal)
        self._inProgress += 1
        d = amp.BoxDispatcher.dispatchCommand(self, box)
        return d.addBoth(self._dispatched, box)

    def _dispatched(self, result: Any, box: amp.AmpBox) -> Any:
        self._finished()
        if isinstance(result, Failure):
            return self._undeclared(result, box)
        return result

    def _undeclared(self, failure: Failure, box: amp.AmpBox) -> Failure:
        if failure.check(amp.RemoteAmpError):
            return failure
        command = box.get(amp.COMMAND, b"?")
        reference = errorReference(command, box.get(amp.ASK))
        log.failure(
            "Unhandled failure in responder for {command} from {peer}; "
            "reference {reference}.",
            failure,
            command=printable(command),
            peer=peerAddress(self),
            reference=reference,
        )
        return Failure(
            amp.RemoteAmpError(
                UNHANDLED, f"{UNKNOWN_ERROR} [{reference}]", fatal=False, local=failure
            )
        )

    def _commandReceived(self, box: amp.AmpBox) -> None:
        ask = box.get(amp.ASK)
        if ask is None:
            # No answer wanted: a failure has nobody to go to. Stock AMP drops
            # the connection; here it is logged and the connection stays.
            self.dispatchCommand(box).addErrback(self._unansweredFailed, box)
            return
        name = box[amp.COMMAND]
        table = _fastTable(type(self)) if self._locator is None else None
        entry = None if table is None else table.get(name)
        if entry is not None:
            self._respondFast(box, name, ask, entry[0], entry[1])
            return
        started = time.monotonic() if observers.current is not None else None
        d = self.dispatchCommand(box)
        # Format and send the reply in one step (stock AMP's formatAnswer,
        # formatError and _safeEmit); what fails there is unhandled.
        d.addBoth(self._reply, box, ask, started)
        d.addErrback(self.unhandledError)

    def _reply(
        self, result: Any, box: amp.AmpBox, ask: bytes, started: float | None
    ) -> None:
        if isinstance(result, Failure):
            reply = self._formatError(result, box)
        else:
            reply = self._formatAnswer(result, ask)
        if started is not None:
            observers.callCompleted(
                box[amp.COMMAND], "in", reply.get(amp.ERROR_CODE), started
            )
        self._emit(reply, box)

    @staticmethod
    def _formatAnswer(answer: amp.AmpBox, ask: bytes) -> amp.AmpBox:
        answer[amp.ANSWER] = ask
        return answer

    def _formatError(self, failure: Failure, box: amp.AmpBox) -> amp.AmpBox:
        failure = self._undeclared(failure, box)
        error = failure.value
        description = error.description
        if isinstance(description, str):
            description = description.encode("utf-8", "replace")
        reply = amp.QuitBox() if error.fatal else amp.AmpBox()
        reply[amp.ERROR] = box[amp.ASK]
        reply[amp.ERROR_DESCRIPTION] = description
        reply[amp.ERROR_CODE] = error.errorCode
        return reply

    def _emit(self, reply: amp.AmpBox, box: amp.AmpBox) -> None:
        """Send a reply as stock AMP does (``_safeEmit``); an answer that
        cannot be encoded is replaced by the ``UNHANDLED`` error."""
        try:
            self._safeEmit(reply)
        except _ENCODING_ERRORS:
            if amp.ANSWER not in reply:
                raise
            self._emit(self._formatError(Failure(), box), box)
            return
        if self._closeAfterReply:
            self._closeAfterReply = False
            self.disconnect()

    def _unansweredFailed(self, failure: Failure, box: amp.AmpBox) -> None:
        self.peerWarn(
            "unanswered",
            "Command {command} from {peer}, sent without wanting an answer, "
            "failed: {error}",
            command=printable(box.get(amp.COMMAND, b"?")),
            peer=peerAddress(self),
            error=printable(failure.getErrorMessage(), 200),
        )

    # The common path.

    def _respondFast(
        self, box: amp.AmpBox, name: bytes, ask: bytes, spec: CommandSpec, func: Any
    ) -> None:
        refusal = self._admit(name, box)
        if refusal is not None:
            self._emit(self._formatError(refusal, box), box)
            return
        started = time.monotonic() if observers.current is not None else None
        try:
            arguments = spec.decodeArguments(box)
        except BaseException:
            # As stock AMP: arguments that do not parse never reach the
            # command's declared errors.
            self._fastError(Failure(), spec.name, box, started)
            return
        self._inProgress += 1
        try:
            result = func(self, **arguments)
        except BaseException:
            self._finished()
            self._fastFailed(Failure(), spec, box, started)
            return
        if isinstance(result, Deferred):
            pass
        elif type(result) is CoroutineType:
            result = Deferred.fromCoroutine(result)
        elif isinstance(result, Failure):
            self._finished()
            self._fastFailed(result, spec, box, started)
            return
        else:
            self._finished()
            self._fastAnswer(result, spec, box, started)
            return
        result.addCallbacks(
            self._fastAnswerLater,
            self._fastFailedLater,
            callbackArgs=(spec, box, started),
            errbackArgs=(spec, box, started),
        )
        result.addErrback(self.unhandledError)

    def _fastAnswerLater(
        self, result: Any, spec: CommandSpec, box: amp.AmpBox, started: Any
    ) -> None:
        self._finished()
        self._fastAnswer(result, spec, box, started)

    def _fastFailedLater(
        self, failure: Failure, spec: CommandSpec, box: amp.AmpBox, started: Any
    ) -> None:
        self._finished()
        self._fastFailed(failure, spec, box, started)

    def _fastAnswer(
        self, result: Any, spec: CommandSpec, box: amp.AmpBox, started: Any
    ) -> None:
        try:
            answer = spec.encodeResponse(result)
        except BaseException:
            failure = Failure(
                amp.BadLocalReturn(
                    f"{spec.command.__name__} responder returned {result!r}, "
                    f"which {spec.command.__name__} could not serialize",
                    Failure(),
                )
            )
            self._fastFailed(failure, spec, box, started)
            return
        answer[amp.ANSWER] = box[amp.ASK]
        self._emit(answer, box)
        if started is not None:
            observers.callCompleted(spec.name, "in", None, started)

    def _fastFailed(
        self, failure: Failure, spec: CommandSpec, box: amp.AmpBox, started: Any
    ) -> None:
        declared = failure.check(*spec.allErrors) if spec.allErrors else None
        if declared is not None:
            failure = Failure(
                amp.RemoteAmpError(
                    spec.allErrors[declared],
                    str(failure.value),
                    declared in spec.fatalErrors,
                    local=failure,
                )
            )
        self._fastError(failure, spec.name, box, started)

    def _fastError(
        self, failure: Failure, name: bytes, box: amp.AmpBox, started: Any
    ) -> None:
        reply = self._formatError(failure, box)
        self._emit(reply, box)
        if started is not None:
            observers.callCompleted(name, "in", reply[amp.ERROR_CODE], started)


def _countItems(value: bytes, argument: Any, cap: int) -> int:
    """Count the items of an ``AmpList`` or ``ListOf`` value without decoding
    them, stopping past ``cap``."""
    count = 0
    pos = 0
    end = len(value)
    boxes = isinstance(argument, amp.AmpList)
    while pos + 2 <= end and count <= cap:
        length = (value[pos] << 8) | value[pos + 1]
        pos += 2 + length
        if boxes:
            # Boxes: key, value, ..., empty key. Count the empty keys.
            if length == 0:
                count += 1
            else:
                if pos + 2 > end:
                    break
                pos += 2 + ((value[pos] << 8) | value[pos + 1])
        else:
            count += 1
    return count
