"""A small fault-injecting TCP proxy, for putting faults between clusters and
a region event-loop.

:class:`FaultProxy` listens on ``127.0.0.1`` (any free port) and forwards each
connection it accepts to a target ``(host, port)`` over a connection of its
own. It runs in the reactor (crochet's thread, in the test process); its
public methods may be called from any thread and return once the reactor has
done what they ask. What it does with the traffic is switchable at any time:

``pass`` (the default)
    Bytes go through as they come.
``delay(seconds)``
    Every chunk is held for ``seconds`` before it is passed on, each way
    (order is kept; a close is delayed after the data before it, as a FIN
    would be).
``blackhole``
    Connections stay open, but every byte is silently dropped, both ways,
    including bytes still held by a delay. A side that closes meanwhile is
    not seen to close by the other side until the proxy leaves the blackhole
    (TCP would retransmit the FIN once the network heals).
``cut()``
    An action, not a mode: every current connection is closed abruptly on
    both sides (``SO_LINGER`` 0, so the peers get an RST), and the proxy keeps
    accepting new connections in the mode it was in.

Everything the proxy sees is recorded in :attr:`FaultProxy.events` with a
:func:`time.monotonic` timestamp, which on Linux compares with the timestamps
of other processes on the host.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure

from provisioningserver.utils.twisted import isInReactorThread

__all__ = ["DOWNSTREAM", "UPSTREAM", "FaultProxy", "ProxyEvent"]

#: The side of a connection pair that the proxy accepted (the client's).
DOWNSTREAM = "downstream"

#: The side of a pair that the proxy opened to the target.
UPSTREAM = "upstream"

#: Marks a close in a side's queue of pending writes.
_CLOSE = object()


@dataclass(frozen=True)
class ProxyEvent:
    """Something the proxy saw.

    :ivar when: :func:`time.monotonic` when it happened.
    :ivar what: ``"accepted"``, ``"connected"`` (the upstream side is up),
        ``"closed"`` (a side closed, by itself or by the peer), ``"cut"``
        (the proxy closed it abruptly), ``"refused"`` (the target could not be
        reached).
    :ivar pair: the number of the connection pair, from 1.
    :ivar side: :data:`DOWNSTREAM` or :data:`UPSTREAM`.
    :ivar detail: more about it (the reason of a close), or ``""``.
    """

    when: float
    what: str
    pair: int
    side: str
    detail: str = ""


class _Side(Protocol):
    """One of the two TCP connections of a pair."""

    def __init__(self, pair: _Pair, side: str) -> None:
        self.pair = pair
        self.side = side
        self.lost: Deferred[None] = Deferred()
        self.closed = False

    def connectionMade(self) -> None:
        self.pair.sideMade(self)

    def dataReceived(self, data: bytes) -> None:
        self.pair.received(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.pair.sideLost(self, reason)
        self.lost.callback(None)


class _Pair:
    """An accepted connection and the proxy's connection to the target."""

    def __init__(self, proxy: FaultProxy, number: int) -> None:
        self.proxy = proxy
        self.number = number
        self.sides: dict[str, _Side] = {}
        self.connecting: Deferred[Any] | None = None
        # Writes waiting for each side: (due, bytes or _CLOSE), due ascending.
        self.queues: dict[str, deque[tuple[float, Any]]] = {
            DOWNSTREAM: deque(),
            UPSTREAM: deque(),
        }
        self.timers: dict[str, Any] = {}
        # Closes seen while in the blackhole, passed on when it ends.
        self.heldCloses: set[str] = set()

    @staticmethod
    def other(side: str) -> str:
        return UPSTREAM if side == DOWNSTREAM else DOWNSTREAM

    def open(self) -> bool:
        return any(not s.closed for s in self.sides.values()) or (
            self.connecting is not None
        )

    def sideMade(self, side: _Side) -> None:
        self.sides[side.side] = side
        if side.side == DOWNSTREAM:
            self.proxy._record("accepted", self, DOWNSTREAM)
            self._connectUpstream()
        else:
            self.proxy._record("connected", self, UPSTREAM)
            if self.sides[DOWNSTREAM].closed:
                self._close(UPSTREAM)
            else:
                self.pump(UPSTREAM)

    def _connectUpstream(self) -> None:
        proxy = self.proxy
        host, port = proxy.target
        endpoint = TCP4ClientEndpoint(proxy.reactor, host, port, timeout=10)
        factory = Factory.forProtocol(lambda: _Side(self, UPSTREAM))
        self.connecting = endpoint.connect(factory)

        def connected(_: Any) -> None:
            self.connecting = None

        def failed(failure: Failure) -> None:
            self.connecting = None
            proxy._record("refused", self, UPSTREAM, failure.getErrorMessage())
            self._close(DOWNSTREAM)

        self.connecting.addCallbacks(connected, failed)

    def received(self, side: _Side, data: bytes) -> None:
        proxy = self.proxy
        if proxy.mode == "blackhole":
            proxy.dropped += len(data)
            return
        self.enqueue(self.other(side.side), data)

    def enqueue(self, to: str, item: Any) -> None:
        proxy = self.proxy
        queue = self.queues[to]
        due = proxy.reactor.seconds() + proxy.latency
        if queue:
            due = max(due, queue[-1][0])  # Keep the order.
        queue.append((due, item))
        self.pump(to)

    def pump(self, to: str) -> None:
        """Write what is due to side ``to``; come back for the rest."""
        timer = self.timers.pop(to, None)
        if timer is not None and timer.active():
            timer.cancel()
        side = self.sides.get(to)
        if side is None:
            return  # Not connected yet: written once it is.
        proxy = self.proxy
        queue = self.queues[to]
        now = proxy.reactor.seconds()
        while queue and queue[0][0] <= now:
            _, item = queue.popleft()
            if side.closed:
                continue
            if item is _CLOSE:
                if proxy.mode == "blackhole":
                    self.heldCloses.add(to)
                else:
                    self._close(to)
            elif proxy.mode == "blackhole":
                proxy.dropped += len(item)
            else:
                side.transport.write(item)
                proxy.forwarded += len(item)
                proxy.chunks[to] += 1
        if queue:
            delay = max(0.0, queue[0][0] - now)
            self.timers[to] = proxy.reactor.callLater(delay, self.pump, to)

    def sideLost(self, side: _Side, reason: Failure) -> None:
        proxy = self.proxy
        proxy._record("closed", self, side.side, reason.getErrorMessage())
        self.queues[side.side].clear()
        timer = self.timers.pop(side.side, None)
        if timer is not None and timer.active():
            timer.cancel()
        other = self.other(side.side)
        if proxy.mode == "blackhole":
            self.heldCloses.add(other)
        elif other in self.sides:
            self.enqueue(other, _CLOSE)
        if side.side == DOWNSTREAM and self.connecting is not None:
            self.connecting.cancel()
        if not self.open():
            proxy._forget(self)

    def releaseHeldCloses(self) -> None:
        for to in sorted(self.heldCloses):
            if to in self.sides:
                self.enqueue(to, _CLOSE)
        self.heldCloses.clear()

    def _close(self, to: str) -> None:
        side = self.sides.get(to)
        if side is not None and not side.closed:
            side.transport.loseConnection()

    def _abort(self, to: str, reset: bool = False) -> None:
        side = self.sides.get(to)
        if side is None or side.closed:
            return
        if reset:
            handle = side.transport.getHandle()
            handle.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        side.transport.abortConnection()

    def cut(self) -> None:
        for to in (DOWNSTREAM, UPSTREAM):
            self.queues[to].clear()
            timer = self.timers.pop(to, None)
            if timer is not None and timer.active():
                timer.cancel()
            if to in self.sides and not self.sides[to].closed:
                self.proxy._record("cut", self, to)
                self._abort(to, reset=True)
        if self.connecting is not None:
            self.connecting.cancel()

    def waitClosed(self) -> Deferred[Any]:
        waits = [side.lost for side in self.sides.values()]
        return defer.DeferredList(waits)


class _ProxyFactory(Factory):
    noisy = False

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _Side:
        return _Side(self.proxy._newPair(), DOWNSTREAM)


class FaultProxy:
    """A TCP proxy on ``127.0.0.1`` that can pass, delay, blackhole or cut.

    :param target: ``(host, port)`` to forward connections to.
    :param reactor: the reactor to run in; the global reactor (crochet's,
        in the test process) when ``None``.

    :ivar mode: ``"pass"``, ``"delay"`` or ``"blackhole"``.
    :ivar latency: seconds added each way (in ``"delay"`` mode), else 0.
    :ivar events: what the proxy saw, :class:`ProxyEvent` in order.
    :ivar forwarded: bytes passed on, both ways.
    :ivar chunks: chunks passed on, by the side they were written to
        (:data:`DOWNSTREAM` counts what reached the client).
    :ivar dropped: bytes dropped by the blackhole, both ways.
    :ivar port: the port listened on, once started.
    """

    def __init__(self, target: tuple[str, int], *, reactor: Any = None) -> None:
        self.target = target
        self._reactor = reactor
        self.mode = "pass"
        self.latency = 0.0
        self.events: list[ProxyEvent] = []
        self.forwarded = 0
        self.chunks: Counter[str] = Counter()
        self.dropped = 0
        self.port: int | None = None
        self._listening: Any = None
        self._pairs: dict[int, _Pair] = {}
        self._numbers = itertools.count(1)

    @property
    def reactor(self) -> Any:
        """The reactor the proxy runs in."""
        if self._reactor is None:
            from twisted.internet import reactor

            return reactor
        return self._reactor

    def _inReactor(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._reactor is not None or isInReactorThread():
            return func(*args)
        return blockingCallFromThread(self.reactor, func, *args)

    # Life cycle.

    def start(self) -> int:
        """Listen on ``127.0.0.1``, on a free port.

        :return: the port.
        """
        return self._inReactor(self._start)

    def _start(self) -> int:
        self._listening = self.reactor.listenTCP(
            0, _ProxyFactory(self), interface="127.0.0.1"
        )
        self.port = int(self._listening.getHost().port)
        return self.port

    def stop(self) -> None:
        """Stop listening and close every connection; return once closed."""
        return self._inReactor(self._stop)

    def _stop(self) -> Deferred[None]:
        waits: list[Deferred[Any]] = []
        if self._listening is not None:
            waits.append(defer.maybeDeferred(self._listening.stopListening))
            self._listening = None
        for pair in list(self._pairs.values()):
            pair.cut()
            waits.append(pair.waitClosed())
        return defer.DeferredList(waits).addCallback(lambda _: None)

    # Modes.

    def passThrough(self) -> None:
        """Pass bytes as they come (the default)."""
        self._inReactor(self._setMode, "pass", 0.0)

    def delay(self, seconds: float) -> None:
        """Hold every chunk for ``seconds`` before passing it on, each way.

        :param seconds: the latency to add.
        """
        self._inReactor(self._setMode, "delay", float(seconds))

    def blackhole(self) -> None:
        """Keep connections open, but drop every byte, both ways."""
        self._inReactor(self._setMode, "blackhole", 0.0)

    def cut(self) -> int:
        """Close every current connection abruptly (RST), both sides; keep
        accepting new connections.

        :return: how many connection pairs were cut.
        """
        return self._inReactor(self._cut)

    def _setMode(self, mode: str, latency: float) -> None:
        leaving = self.mode == "blackhole" and mode != "blackhole"
        self.mode = mode
        self.latency = latency
        if leaving:
            for pair in list(self._pairs.values()):
                pair.releaseHeldCloses()

    def _cut(self) -> int:
        pairs = list(self._pairs.values())
        for pair in pairs:
            pair.cut()
        return len(pairs)

    # Book-keeping.

    @property
    def openPairs(self) -> int:
        """How many connection pairs have a side still open."""
        return len(self._pairs)

    def _newPair(self) -> _Pair:
        pair = _Pair(self, next(self._numbers))
        self._pairs[pair.number] = pair
        return pair

    def _forget(self, pair: _Pair) -> None:
        self._pairs.pop(pair.number, None)

    def _record(self, what: str, pair: _Pair, side: str, detail: str = "") -> None:
        self.events.append(
            ProxyEvent(time.monotonic(), what, pair.number, side, detail)
        )

    def eventsFor(self, what: str, side: str | None = None) -> list[ProxyEvent]:
        """Return the events of one kind (and side), in order.

        :param what: the kind, as in :attr:`ProxyEvent.what`.
        :param side: :data:`DOWNSTREAM`, :data:`UPSTREAM`, or ``None`` for
            both.
        :return: a list of :class:`ProxyEvent`.
        """
        return [
            event
            for event in list(self.events)
            if event.what == what and (side is None or event.side == side)
        ]
