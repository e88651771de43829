"""Helpers for testing responders and protocols without sockets.

Use them to test your own commands the way this package tests its own:

* :func:`connect_in_memory` joins two AMP protocols through
  :mod:`twisted.test.iosim`; bytes move only when you call ``pump.flush()``,
  so a test decides exactly when each side sees what.
* :func:`call_responder` runs a responder through the wire format: it
  serialises the arguments as a caller would, dispatches the box, and parses
  the answer (or the error) as a caller would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from provisioningserver.twisted.protocols import amp

__all__ = [
    "LoggedEvents",
    "WaitTimedOut",
    "call_responder",
    "capturedLogs",
    "connect_in_memory",
    "waitFor",
]


def connect_in_memory(
    server: amp.AMP, client: amp.AMP, *, clock: Any = None, greet: bool = True
) -> iosim.IOPump:
    """Connect two protocols in memory.

    :param server: the protocol that plays the accepting side.
    :param client: the protocol that plays the connecting side.
    :param clock: a :class:`twisted.internet.task.Clock` that the pump
        advances by zero on each pass, running calls due now; a private
        :class:`~twisted.internet.testing.MemoryReactorClock` when ``None``.
    :param greet: flush once after connecting, so that anything either side
        sends on connection is delivered.
    :return: the :class:`twisted.test.iosim.IOPump`; call its ``flush()`` to
        move bytes both ways until both sides are quiet.
    """
    serverTransport = iosim.FakeTransport(server, isServer=True)
    clientTransport = iosim.FakeTransport(client, isServer=False)
    pump = iosim.connect(
        server, serverTransport, client, clientTransport, greet=greet, clock=clock
    )
    return pump


def call_responder(
    protocol: amp.AMP, command: type[amp.Command], arguments: dict[str, Any]
) -> Deferred[dict[str, Any]]:
    """Call ``protocol``'s responder for ``command`` through the wire format.

    :param protocol: the locator that holds the responder (an AMP protocol or
        any :class:`amp.CommandLocator`).
    :param command: the command.
    :param arguments: the arguments, as a caller passes them.
    :return: a Deferred with the parsed response, or failing with the
        declared exception (or :class:`amp.UnknownRemoteError`) a caller would
        get.
    :raises amp.UnhandledCommand: when ``protocol`` has no responder for
        ``command``.
    """
    box = command.makeArguments(arguments, protocol)
    responder = protocol.locateResponder(command.commandName)
    if responder is None:
        raise amp.UnhandledCommand(command.commandName)

    def parseError(failure: Failure) -> Failure:
        failure.trap(amp.RemoteAmpError)
        error = failure.value
        exceptionType = command.reverseErrors.get(  # type: ignore[attr-defined]
            error.errorCode, amp.UnknownRemoteError
        )
        return Failure(exceptionType(error.description))

    d: Deferred[Any] = Deferred.fromCoroutine(_respond(responder, box))
    d.addCallback(lambda answer: command.parseResponse(answer, protocol))
    d.addErrback(parseError)
    return d


async def _respond(responder: Any, box: amp.AmpBox) -> Any:
    result = responder(box)
    if isinstance(result, Deferred):
        result = await result
    # An answer box must serialise as it would on the wire.
    amp.AmpBox(result).serialize()
    return result


class LoggedEvents(list[dict[str, Any]]):
    """Log events captured by :func:`capturedLogs`, in order."""

    def lines(self, needle: str) -> list[str]:
        """Return the formatted events that contain ``needle``.

        :param needle: the text to look for.
        :return: the matching log lines.
        """
        return [text for text in map(formatEvent, self) if needle in text]


@contextmanager
def capturedLogs() -> Iterator[LoggedEvents]:
    """Capture every :mod:`twisted.logger` event emitted inside the block.

    :return: a context manager giving a :class:`LoggedEvents` list.
    """
    events = LoggedEvents()
    globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)  # type: ignore[arg-type]


class WaitTimedOut(AssertionError, TimeoutError):
    """:func:`waitFor` gave up: an assertion failure in a test, a
    :class:`TimeoutError` elsewhere."""


def waitFor(
    condition: Callable[[], Any],
    what: str = "a condition",
    timeout: float = 30.0,
    interval: float = 0.05,
    check: Callable[[], None] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something true; return that.

    For waiting on another process's state (a file it writes, a port it
    opens) from a thread that is not the reactor's: the wait is bounded and
    never a bare sleep.

    :param condition: called every ``interval`` seconds.
    :param what: what is waited for, for the error message.
    :param timeout: seconds to wait at most.
    :param interval: seconds between polls.
    :param check: called before each poll; it raises to give up early (say,
        when the process waited on has died).
    :return: the first true value ``condition`` returned.
    :raises WaitTimedOut: at the deadline.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if check is not None:
            check()
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise WaitTimedOut(f"gave up after {timeout} seconds waiting for {what}")
        pause.wait(interval)
