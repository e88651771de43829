"""Calling the peer: sending commands and receiving their answers.

:class:`CallingProtocol` calls the peer exactly as stock AMP's
:meth:`~amp.BoxDispatcher.callRemote` does (the same bytes, the same result
or exception for the caller), with these deliberate differences, each listed
in the documentation's "Differences from stock AMP":

* a call's Deferred can be **cancelled**: its entry among the outstanding
  requests is released at once, and a late answer is dropped quietly;
* an error answer that the caller leaves unhandled does **not** close the
  connection (stock AMP closes it, failing every other call on it); an
  answer to an ask that was never sent is logged and dropped;
* ``UNHANDLED`` answers are told apart: ``Unknown Error [<ref>]`` (the
  peer's responder failed) raises
  :class:`~provisioningserver.rpc.exceptions.RemoteResponderFailed`, which
  is still an :class:`amp.UnhandledCommand`; any other ``UNHANDLED`` (the
  peer does not know the command) raises :class:`amp.UnhandledCommand` as
  stock AMP does. ``NOT_AUTHENTICATED`` and ``SHUTTING_DOWN`` raise
  :class:`~provisioningserver.rpc.exceptions.NotAuthenticated` and
  :class:`~provisioningserver.rpc.exceptions.ShuttingDown`.
* a value over 65,535 bytes is sent in chunks to a peer that agreed, and
  refused with :class:`~provisioningserver.rpc.exceptions.ArgumentTooLarge`
  otherwise (see :mod:`provisioningserver.rpc.framing`).

The common path: a command that qualifies (see
:mod:`provisioningserver.rpc.codec`) is encoded with precompiled converters
and its answer decoded the same way, without a ``Command`` instance or a
callback chain.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from provisioningserver.rpc.codec import CommandSpec, specFor
from provisioningserver.rpc.dispatch import (
    NOT_AUTHENTICATED,
    SHUTTING_DOWN,
    UNHANDLED,
    DispatchingProtocol,
)
from provisioningserver.rpc.exceptions import (
    NotAuthenticated,
    RemoteResponderFailed,
    ShuttingDown,
)
from provisioningserver.rpc.framing import peerAddress
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.text import printable

__all__ = ["CallingProtocol", "remoteError"]

log = Logger()


def remoteError(code: bytes, description: str) -> Exception:
    """The exception a caller gets for an error answer that its command
    does not declare.

    :param code: the error code.
    :param description: the error description.
    :return: :class:`RemoteResponderFailed`, :class:`amp.UnhandledCommand`,
        :class:`NotAuthenticated`, :class:`ShuttingDown`, or
        :class:`amp.RemoteAmpError` (which stock AMP's caller turns into
        :class:`amp.UnknownRemoteError`).
    """
    if code == UNHANDLED:
        if RemoteResponderFailed.matches(description):
            return RemoteResponderFailed(code, description)
        return amp.UnhandledCommand(code, description)
    if code == NOT_AUTHENTICATED:
        return NotAuthenticated(description)
    if code == SHUTTING_DOWN:
        return ShuttingDown(description)
    return amp.RemoteAmpError(code, description)


class _Ask(Deferred[Any]):
    """The Deferred of a call sent on the common path; it knows how to
    decode its answer."""

    __slots__ = ("spec",)
    spec: CommandSpec


class CallingProtocol(DispatchingProtocol):
    """Calls the peer; see the module's documentation."""

    __slots__ = ()

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any:
        """Call a command on the peer (see :meth:`amp.BoxDispatcher.callRemote`).

        :param commandType: the command class.
        :param a: positional arguments (only ``ProtocolSwitchCommand`` uses
            them).
        :param kw: the command's arguments.
        :return: a Deferred with the response dict (``None`` for a command
            that does not require an answer).
        :raises ArgumentTooLarge: when a value is over AMP's limit and the
            peer has not agreed to chunks (nothing is sent).
        """
        if not a:
            spec = specFor(commandType)
            if spec is not None and self._canSendFast():
                args = spec.encodeArguments(kw)
                if args is not None:
                    return self._callFast(spec, args)
        return super().callRemote(commandType, *a, **kw)

    def _canSendFast(self) -> bool:
        return (
            self._failAllReason is None
            and self.transport is not None
            and self._sender is None
            and not self._locked
            and self._startingTLSBuffer is None
            and not self._writePaused
        )

    def _callFast(self, spec: CommandSpec, args: dict[bytes, bytes]) -> Deferred[Any]:
        tag = self._nextTag()
        args[amp.COMMAND] = spec.name
        args[amp.ASK] = tag
        data = spec.frameCall(args)
        if data is None:
            # A value that is not bytes (stock AMP's error) or that needs
            # chunks (or ArgumentTooLarge): the general path.
            self.sendBox(amp.AmpBox(args))
        else:
            self.transport.write(data)  # type: ignore[union-attr]
        d = _Ask(partial(self._forgetAsk, tag))
        d.spec = spec
        self._outstandingRequests[tag] = d  # type: ignore[index]
        return d

    def _forgetAsk(self, tag: bytes, d: Deferred[Any]) -> None:
        if self._outstandingRequests is not None:
            self._outstandingRequests.pop(tag, None)

    def _sendBoxCommand(
        self, command: bytes, box: amp.AmpBox, requiresAnswer: bool = True
    ) -> Deferred[amp.AmpBox] | None:
        """Send a command box as stock AMP does, with a cancellable Deferred.

        :param command: the command's wire name.
        :param box: its arguments.
        :param requiresAnswer: whether an answer is expected.
        :return: a Deferred for the answer box, or ``None``.
        :raises ArgumentTooLarge: when a value is over AMP's limit and the
            peer has not agreed to chunks.
        """
        if self._failAllReason is not None:
            return fail(self._failAllReason) if requiresAnswer else None
        box[amp.COMMAND] = command
        tag = self._nextTag()
        if requiresAnswer:
            box[amp.ASK] = tag
        box._sendTo(self.boxSender)
        if not requiresAnswer:
            return None
        result: Deferred[amp.AmpBox] = Deferred(partial(self._forgetAsk, tag))
        self._outstandingRequests[tag] = result  # type: ignore[index]
        return result

    # Receiving answers.

    def _question(self, tag: bytes, box: amp.AmpBox) -> Deferred[Any] | None:
        requests = self._outstandingRequests
        question = None if requests is None else requests.pop(tag, None)
        if question is None:
            if self._isStaleTag(tag):
                log.debug(
                    "Dropped a late answer to abandoned ask {tag}.", tag=printable(tag)
                )
            else:
                self.peerWarn(
                    "stray-answer",
                    "Dropped an answer to ask {tag}, which was never sent, from "
                    "{peer}.",
                    tag=printable(tag),
                    peer=peerAddress(self),
                )
        return question

    def _isStaleTag(self, tag: bytes) -> bool:
        """Tell whether ``tag`` names an ask this side sent and gave up on."""
        try:
            return 0 < int(tag, 16) <= self._counter
        except ValueError:
            return False

    def _answerReceived(self, box: amp.AmpBox) -> None:
        question = self._question(box[amp.ANSWER], box)
        if question is None:
            return
        if type(question) is not _Ask:
            question.callback(box)  # Stock AMP's chain parses it.
            return
        try:
            response = question.spec.decodeResponse(box)
        except Exception:  # noqa: BLE001 - a malformed answer fails the call
            question.errback(Failure())
            return
        question.callback(response)

    def _errorReceived(self, box: amp.AmpBox) -> None:
        question = self._question(box[amp.ERROR], box)
        if question is None:
            return
        code = box.get(amp.ERROR_CODE, amp.UNKNOWN_ERROR_CODE)
        description = box.get(amp.ERROR_DESCRIPTION, b"").decode("utf-8", "replace")
        if type(question) is _Ask:
            # As stock AMP's caller: the protocol's own codes first, then the
            # command's declared errors, else UnknownRemoteError.
            error = remoteError(code, description)
            if type(error) is amp.RemoteAmpError:
                declared = question.spec.reverseErrors.get(code)
                if declared is not None:
                    error = declared(description)
                else:
                    error = amp.UnknownRemoteError(description)
            question.errback(Failure(error))
            return
        # Stock AMP's chain maps a RemoteAmpError to the declared exception.
        question.errback(Failure(remoteError(code, description)))
