"""The reference model: stock AMP plus this project's deliberate differences.

Stock :class:`twisted.protocols.amp.AMP` knows nothing of the ways
:class:`provisioningserver.rpc.common.RPCProtocol` is meant to differ from it.
:class:`ReferenceAMP` is stock AMP with exactly those differences applied,
each through a hook a Twisted user could override, and nothing else. What
the conformance suite expects of ``RPCProtocol`` in any scenario is what two
``ReferenceAMP`` peers do in it.

The deliberate differences (DESIGN-ROUND2.md "Errors", issue 10 §1 and 11),
each with the test that shows it (stock behaves otherwise, ``ReferenceAMP``
and ``RPCProtocol`` as described); the same table is in ``README.rst``:

(a) ``test_differences.py::test_a_undeclared_error_is_non_fatal_unhandled``
    and its siblings: an undeclared exception, an argument that fails to
    parse, a missing argument and an answer that cannot be serialised go
    back as a non-fatal ``UNHANDLED`` error box described
    ``Unknown Error [<hostname>:pid=<pid>:cmd=<Command>:ask=<n>]`` (stock:
    fatal ``UNKNOWN`` / ``Unknown Error``, connection closed).
(b) ``test_b_auth_gate_only_with_handshake_commands``: the authentication
    gate, only when ``handshakeCommands`` is set; a caller given
    ``NOT_AUTHENTICATED`` raises ``NotAuthenticated``
    (``test_b_not_authenticated_raises_not_authenticated``).
(c) ``test_c_cancelled_call_is_released_and_late_answer_dropped``,
    ``test_c_client_deadline``: call deadlines and cancellation.
(d) ``test_d_oversized_argument_refused_without_chunking``: no chunking
    without a peer that agreed; a value over 65,535 bytes raises
    ``ArgumentTooLarge`` before anything is sent (stock: ``amp.TooLong``).
(e) ``test_e_unhandled_error_answer_keeps_connection``: an error answer the
    caller leaves unhandled does not drop the connection.
(f) ``test_f_box_without_command_answer_or_error``: such a box drops the
    connection with one short log line (stock logs the whole box).
(g) ``test_g_unknown_error_raises_remote_responder_failed``: on the caller,
    ``UNHANDLED`` described ``Unknown Error [...]`` raises
    ``RemoteResponderFailed`` (a subclass of ``amp.UnhandledCommand``).
(h) ``test_h_bounds``: what a peer may cost is bounded
    (``provisioningserver.rpc.limits``): a received box over the cap, or
    too many commands in progress, drops the connection.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from provisioningserver.rpc import exceptions
from twisted.internet.defer import Deferred, fail
from twisted.protocols import amp
from twisted.python.failure import Failure

__all__ = [
    "HAVE_REMOTE_RESPONDER_FAILED",
    "MAX_VALUE",
    "NOT_AUTHENTICATED",
    "ReferenceAMP",
    "RemoteResponderFailed",
    "responderFailed",
    "unknownErrorReference",
]

#: The error code of a command refused by the authentication gate.
NOT_AUTHENTICATED = b"NOT_AUTHENTICATED"

#: The largest value a peer that has not agreed to chunking accepts.
MAX_VALUE = amp.MAX_VALUE_LENGTH

#: The caller-side exception for a crashed responder (difference g). It may
#: not exist yet on the branch under test; the suite still imports, checks
#: for :class:`amp.UnhandledCommand` instead, and the exact-type test is an
#: expected failure until it lands.
RemoteResponderFailed: type[amp.UnhandledCommand] = getattr(
    exceptions, "RemoteResponderFailed", amp.UnhandledCommand
)
HAVE_REMOTE_RESPONDER_FAILED = RemoteResponderFailed is not amp.UnhandledCommand


def unknownErrorReference(box: amp.AmpBox) -> str:
    """The reference MAAS puts in the description of an undeclared error.

    :param box: the command box that failed.
    :return: ``<hostname>:pid=<pid>:cmd=<Command>:ask=<n>``.
    """
    command = box.get(amp.COMMAND, b"?").decode("ascii", "replace")
    ask = box.get(amp.ASK, b"none").decode("ascii", "replace")
    return f"{socket.gethostname()}:pid={os.getpid()}:cmd={command}:ask={ask}"


def responderFailed(description: str) -> amp.UnhandledCommand:
    """Build the exception a caller raises for ``UNHANDLED`` /
    ``Unknown Error [ref]`` (difference g).

    :param description: the error description received.
    :return: a :data:`RemoteResponderFailed` (or, while it does not exist,
        the :class:`amp.UnhandledCommand` stock AMP raises).
    """
    return RemoteResponderFailed(amp.UNHANDLED_ERROR_CODE, description)


def _isResponderFailure(failure: Failure) -> bool:
    error = failure.value
    if type(error) is not amp.UnhandledCommand or len(error.args) != 2:
        return False
    description = error.args[1]
    return isinstance(description, str) and description.startswith("Unknown Error [")


def _mustSerialise(answer: amp.AmpBox) -> amp.AmpBox:
    # Stock AMP finds out only when it writes the answer, and then drops the
    # connection (its _safeEmit does not catch TooLong or TypeError): check
    # here, so that the failure is coerced like any other (difference a).
    answer.serialize()
    return answer


class ReferenceAMP(amp.AMP):
    """Stock AMP with the deliberate differences (a), (c), (d), (e), (g),
    (i) and the caller's side of (b).

    The gate of (b) and the bounds of (h) only apply to a configured
    ``RPCProtocol`` and are tested on their own; (f) changes a log line, not
    the connection's fate, which stays stock AMP's.
    """

    def __init__(self, boxReceiver: Any = None, locator: Any = None) -> None:
        super().__init__(boxReceiver, locator)
        self._cancelledTags: set[bytes] = set()

    # (a) Undeclared errors are non-fatal UNHANDLED with a reference, as
    # MAAS's RPCProtocol does it: by overriding dispatchCommand.

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[amp.AmpBox]:
        name = box[amp.COMMAND]
        if not name.isascii():  # (i) Stock's locator raises out of dataReceived.
            return fail(
                amp.RemoteAmpError(
                    amp.UNHANDLED_ERROR_CODE,
                    f"Unhandled Command: {name!r}",
                    fatal=False,
                    local=Failure(amp.UnhandledCommand()),
                )
            )
        d = super().dispatchCommand(box)
        d.addCallback(_mustSerialise)
        d.addErrback(self._undeclared, box)
        return d

    def _undeclared(self, failure: Failure, box: amp.AmpBox) -> Failure:
        if failure.check(amp.RemoteAmpError):
            return failure  # Declared, or stock's own UNHANDLED command.
        return Failure(
            amp.RemoteAmpError(
                amp.UNHANDLED_ERROR_CODE,
                f"Unknown Error [{unknownErrorReference(box)}]",
                fatal=False,
                local=failure,
            )
        )

    # (g) A crashed responder raises RemoteResponderFailed on the caller.

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any:
        d = super().callRemote(commandType, *a, **kw)
        if d is not None:
            d.addErrback(self._responderFailed)
        return d

    @staticmethod
    def _responderFailed(failure: Failure) -> Failure:
        if _isResponderFailure(failure):
            return Failure(responderFailed(failure.value.args[1]))
        return failure

    # (c) A cancelled call releases its entry at once (stock AMP keeps it
    # until the answer comes); its late answer is dropped.

    def _sendBoxCommand(
        self, command: bytes, box: amp.AmpBox, requiresAnswer: bool = True
    ) -> Any:
        d = super()._sendBoxCommand(command, box, requiresAnswer)
        if d is None or d.called:
            return d
        tag = box[amp.ASK]

        def cancel(_: Deferred[Any]) -> None:
            self._cancelledTags.add(tag)
            if self._outstandingRequests is not None:
                self._outstandingRequests.pop(tag, None)

        cancellable: Deferred[amp.AmpBox] = Deferred(cancel)
        self._outstandingRequests[tag] = cancellable
        return cancellable

    # (i) One bad call never costs the others: a failure nobody can be told
    # about does not close the connection. Stock AMP closes it (through
    # unhandledError, or an exception out of dataReceived) for a command
    # without an ask that fails, an answer or error for an ask never sent
    # (or answered twice), a malformed error answer, and an answer that
    # fails to parse and is left unhandled. A command name that is not ASCII
    # is answered as one nobody answers (stock: a traceback, and closed).

    def _commandReceived(self, box: amp.AmpBox) -> None:
        if amp.ASK in box:
            super()._commandReceived(box)
            return
        self.dispatchCommand(box).addErrback(lambda _: None)

    def _answerReceived(self, box: amp.AmpBox) -> None:
        tag = box[amp.ANSWER]
        if tag in self._cancelledTags:
            return
        question = self._outstandingRequests.pop(tag, None)
        if question is not None:
            question.callback(box)

    # (e) An error answer the caller leaves unhandled does not drop the
    # connection: stock AMP's _errorReceived without its unhandledError.

    def _errorReceived(self, box: amp.AmpBox) -> None:
        tag = box[amp.ERROR]
        if tag in self._cancelledTags:
            return
        question = self._outstandingRequests.pop(tag, None)
        if question is None:
            return  # (i)
        errorCode = box.get(amp.ERROR_CODE, amp.UNKNOWN_ERROR_CODE)  # (i)
        description = box.get(amp.ERROR_DESCRIPTION, b"")
        if isinstance(description, bytes):
            description = description.decode("utf-8", "replace")
        if errorCode == NOT_AUTHENTICATED:
            # (b) Not an AMP error: no command's error mapping hides it.
            error: Exception = exceptions.NotAuthenticated(description)
        elif errorCode in amp.PROTOCOL_ERRORS:
            error = amp.PROTOCOL_ERRORS[errorCode](errorCode, description)
        else:
            error = amp.RemoteAmpError(errorCode, description)
        question.errback(Failure(error))

    # (d) Without chunking, an over-long value raises ArgumentTooLarge where
    # stock AMP raises TooLong: when the box is written, before any byte of
    # it is sent.

    def sendBox(self, box: amp.AmpBox) -> None:
        for key, value in sorted(box.items()):
            if type(key) is str or type(value) is str:
                break  # Stock AMP's TypeError comes first.
            if len(key) > amp.MAX_KEY_LENGTH:
                break  # Stock AMP's TooLong for the key comes first.
            try:
                size = len(value)
            except TypeError:
                break  # Stock AMP's TypeError.
            if size > MAX_VALUE:
                command = box.get(amp.COMMAND, b"answer")
                raise exceptions.ArgumentTooLarge(command, key, size, MAX_VALUE)
        super().sendBox(box)
