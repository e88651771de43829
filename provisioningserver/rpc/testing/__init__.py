"""Helpers for testing responders and protocols without sockets.

Use them to test your own commands the way this package tests its own:

* :func:`connect_in_memory` joins two AMP protocols through
  :mod:`twisted.test.iosim`; bytes move only when you call ``pump.flush()``,
  so a test decides exactly when each side sees what. ``startTLS`` works on
  these transports with real TLS (OpenSSL in memory), so the secure channel
  runs as it does over TCP.
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

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import directlyProvides

from provisioningserver.twisted.protocols import amp

__all__ = [
    "LoggedEvents",
    "MemoryTransport",
    "WaitTimedOut",
    "call_responder",
    "capturedLogs",
    "connect_in_memory",
    "open_channel",
    "waitFor",
]


class _Raw:
    """What the TLS layer writes through: the in-memory transport's own
    ``write``, bypassing TLS."""

    def __init__(self, transport: MemoryTransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        iosim.FakeTransport.write(self._transport, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        iosim.FakeTransport.loseConnection(self._transport)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        iosim.FakeTransport.registerProducer(self._transport, producer, streaming)

    def unregisterProducer(self) -> None:
        iosim.FakeTransport.unregisterProducer(self._transport)

    def abortConnection(self) -> None:
        iosim.FakeTransport.abortConnection(self._transport)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class MemoryTransport(iosim.FakeTransport):
    """An :class:`iosim.FakeTransport` on which ``startTLS`` runs real TLS.

    The TLS layer (:class:`twisted.protocols.tls.TLSMemoryBIOProtocol`) is
    put between the transport and its protocol, as Twisted does for a TCP
    transport, so ``getHandle()`` gives the OpenSSL connection and the
    protocol hears ``handshakeCompleted``.
    """

    _tlsProtocol: Any = None

    #: The clock TLS uses to aggregate small writes (the pump's).
    clock: Any = None

    def startTLS(self, contextFactory: Any, beNormal: bool = True) -> None:
        """Start TLS on this side of the connection.

        :param contextFactory: the TLS options.
        :param beNormal: as for
            :meth:`twisted.internet.interfaces.ITLSTransport.startTLS`.
        """
        client = (not self.isServer) if beNormal else self.isServer
        # As Twisted's TCP transports do: a producer moves to the TLS layer
        # (which then waits for it to unregister before it closes).
        producer, streaming = self.producer, self.streamingProducer
        if producer is not None:
            super().unregisterProducer()
        factory = TLSMemoryBIOFactory(
            contextFactory,
            client,
            None,  # type: ignore[arg-type]
            clock=self.clock,
        )
        tls = factory.protocol(factory, self.protocol, False)
        self.protocol = tls
        self._tlsProtocol = tls
        self.getHandle = tls.getHandle
        self.getPeerCertificate = tls.getPeerCertificate
        directlyProvides(self, ISSLTransport)
        tls.makeConnection(_Raw(self))
        if producer is not None:
            self.registerProducer(producer, streaming)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register a producer (with the TLS layer once it is started).

        :param producer: the producer.
        :param streaming: whether it is a push producer.
        """
        if self._tlsProtocol is not None:
            self._tlsProtocol.registerProducer(producer, streaming)
        else:
            super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Unregister the producer (from the TLS layer once it is started)."""
        if self._tlsProtocol is not None:
            self._tlsProtocol.unregisterProducer()
        else:
            super().unregisterProducer()

    def loseConnection(self) -> None:
        """Close, through TLS once it is started (which sends what it holds
        first)."""
        if self._tlsProtocol is not None and not self.disconnecting:
            self._tlsProtocol.loseConnection()
        else:
            super().loseConnection()

    def abortConnection(self) -> None:
        """Close at once (what TLS holds is dropped)."""
        if self._tlsProtocol is not None and not self.disconnecting:
            self._tlsProtocol.abortConnection()
        else:
            super().abortConnection()

    def write(self, data: bytes) -> None:
        """Write application data (through TLS once it is started).

        :param data: the bytes.
        """
        if self._tlsProtocol is not None:
            if not self.disconnecting:
                self._tlsProtocol.write(data)
        else:
            super().write(data)


def connect_in_memory(
    server: amp.AMP,
    client: amp.AMP,
    *,
    clock: Any = None,
    greet: bool = True,
    serverAddress: tuple[str, int] = ("127.0.0.1", 5250),
    clientAddress: tuple[str, int] = ("127.0.0.1", 40000),
) -> iosim.IOPump:
    """Connect two protocols in memory.

    :param server: the protocol that plays the accepting side.
    :param client: the protocol that plays the connecting side.
    :param clock: a :class:`twisted.internet.task.Clock` that the pump
        advances by zero on each pass, running calls due now; a private
        :class:`~twisted.internet.testing.MemoryReactorClock` when ``None``.
    :param greet: flush once after connecting, so that anything either side
        sends on connection is delivered.
    :param serverAddress: the accepting side's ``(host, port)``.
    :param clientAddress: the connecting side's ``(host, port)``.
    :return: the :class:`twisted.test.iosim.IOPump`; call its ``flush()`` to
        move bytes both ways until both sides are quiet.
    """
    serverHost = IPv4Address("TCP", *serverAddress)
    clientHost = IPv4Address("TCP", *clientAddress)
    serverTransport = MemoryTransport(
        server, isServer=True, hostAddress=serverHost, peerAddress=clientHost
    )
    clientTransport = MemoryTransport(
        client, isServer=False, hostAddress=clientHost, peerAddress=serverHost
    )
    if clock is None:
        from twisted.internet.testing import MemoryReactorClock

        clock = MemoryReactorClock()
    serverTransport.clock = clientTransport.clock = clock
    pump = iosim.connect(
        server, serverTransport, client, clientTransport, greet=greet, clock=clock
    )
    return pump


def open_channel(server: Any, client: Any, pump: iosim.IOPump) -> str:
    """Run the secure channel between two connected protocols, as the region
    and a cluster do before their handshake, and open both gates.

    For testing protocols of your own (say, how they carry values over
    65,535 bytes) without the whole region-cluster handshake. Each is given
    the role it plays (``channelRole``) for this connection.

    :param server: an :class:`~provisioningserver.rpc.common.RPCProtocol`,
        connected as the accepting side (see :func:`connect_in_memory`).
    :param client: the connecting side.
    :param pump: the pump that joins them.
    :return: the channel's mode (``"secure"``).
    :raises AssertionError: when the channel did not come up.
    """
    server.channelRole = "server"
    client.channelRole = "client"
    server.awaitChannel()
    d = client.openChannel()
    pump.flush()
    modes: list[str] = []
    d.addBoth(modes.append)
    assert modes and isinstance(modes[0], str), f"no channel: {modes!r}"
    server.peerAuthenticated = client.peerAuthenticated = True
    return modes[0]


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
