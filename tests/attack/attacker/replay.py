"""Replaying a recorded connection.

The test records, through its proxy, every byte of a whole successful
connection between a real cluster and the region, and hands the recording
to the attacker, which plays one side of it again on a new connection:

``to-region``
    it connects to the region and sends what the cluster sent;
``to-cluster``
    it listens (the victim cluster is pointed here) and sends the victim
    what the region sent.

Each recorded chunk is sent once the new peer has sent at least as many
bytes as the original peer had at that point of the recording (or after a
second without progress), so that the replay keeps the original's turns.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from wire import emit

__all__ = ["Replayer"]

_STEP_WAIT = 1.0


class Replayer(Protocol):
    """Plays ``chunks`` to the peer, keeping turns.

    :param reactor: the reactor.
    :param chunks: ``[(bytes the peer had sent before it, data), ...]``.
    """

    def __init__(self, reactor: Any, chunks: list[tuple[int, bytes]]) -> None:
        self.reactor = reactor
        self.chunks = chunks
        self.received = b""
        self.sent = 0
        self.step = 0
        self.closed = False
        self.done: Deferred[None] = Deferred()
        self._waiting: Any = None
        self._since = 0.0

    def connectionMade(self) -> None:
        self.opened = time.monotonic()
        emit(
            "replay-connected",
            peer=self.transport.getPeer().port,
            local=self.transport.getHost().port,
        )
        self.next()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.next()

    def next(self) -> None:
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        self._waiting = None
        while self.step < len(self.chunks) and not self.closed:
            before, data = self.chunks[self.step]
            if len(self.received) < before and not self._timedOut():
                self._waiting = self.reactor.callLater(_STEP_WAIT, self.next)
                return
            self.transport.write(data)
            self.sent += len(data)
            self.step += 1
            self._since = time.monotonic()
            emit(
                "replay-step",
                step=self.step,
                bytes=len(data),
                received=len(self.received),
            )

    def _timedOut(self) -> bool:
        return time.monotonic() - (self._since or self.opened) >= _STEP_WAIT

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        emit(
            "replay-end",
            steps=self.step,
            of=len(self.chunks),
            sent=self.sent,
            received=len(self.received),
            head=self.received[:512].hex(),
            after=round(time.monotonic() - self.opened, 3),
            reason=reason.getErrorMessage()[:300] if reason is not None else "",
        )
        self.done.callback(None)


def toRegion(
    reactor: Any, address: tuple[str, int], chunks: list[tuple[int, bytes]]
) -> Deferred[None]:
    """Replay to the region; fires once the connection is over."""
    replayer = Replayer(reactor, chunks)
    endpoint = TCP4ClientEndpoint(reactor, *address, timeout=5)
    connectProtocol(endpoint, replayer)
    return replayer.done


def listening(reactor: Any, chunks: list[tuple[int, bytes]]) -> Factory:
    """A factory replaying to each victim connection (the first only)."""
    made: list[Replayer] = []

    class ReplayFactory(Factory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Any:
            if made:
                emit("victim-turned-away")
                return None
            made.append(Replayer(reactor, chunks))
            return made[0]

    return ReplayFactory()
