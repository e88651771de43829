"""Floods of connections that never finish the handshake, and a churn of
complete TLS handshakes, against the region.

``flood`` opens ``count`` connections at once, spread over source addresses
of 127.0.0.0/8, and takes each to one ``stage`` of the handshake, then goes
silent:

``tcp``
    the TCP connection only;
``offer``
    ``SecureChannel`` sent and answered, no TLS;
``hello``
    then the first bytes of a TLS ClientHello, never the rest;
``tls``
    TLS complete, then silence: the region's ``Identify`` is never answered.

It reports, per connection, whether it reached its stage and when the
region closed it: a connection refused on arrival (the unauthenticated
caps) is closed at once without a byte, one admitted is held until the
handshake timeout.

``churn`` runs complete TLS handshakes (connect, ``SecureChannel``, TLS,
close) back to back on ``concurrency`` connections for ``seconds``, and
reports how many it completed: the CPU an attacker can make the region
spend.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.protocols import amp
from wire import SecureChannel, Side, clientOptions, connect, emit

__all__ = ["Flood", "churn"]

_OFFER = ["chunked-values"]

#: A TLS record header announcing a 512-byte handshake message, and the
#: start of a ClientHello: never completed.
_PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


class Flood:
    """Half-open connections to the region.

    :param reactor: the reactor.
    :param address: the region event-loop's ``(host, port)``.
    :param stage: ``tcp``, ``offer``, ``hello`` or ``tls``.
    :param count: how many connections.
    :param sources: source addresses, used in turn.
    :param keep: seconds after which the flood gives up waiting for the
        region to close its connections (and closes them itself).
    """

    def __init__(
        self,
        reactor: Any,
        address: tuple[str, int],
        stage: str,
        count: int,
        sources: list[str],
        keep: float,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.stage = stage
        self.count = count
        self.sources = sources
        self.keep = keep
        self.sides: list[Side] = []
        # Per connection number: "kind" (how it ended), "after" (seconds
        # open), "reached" (whether it got to its stage).
        self.info: dict[int, dict[str, Any]] = {}
        self.reached = 0
        self.failed = 0

    async def run(self) -> None:
        started = time.monotonic()
        waits = []
        for n in range(self.count):
            source = self.sources[n % len(self.sources)]
            side = Side("region", self.onBox, n + 1)
            self.info[side.number] = {"source": source}
            self.sides.append(side)
            waits.append(Deferred.fromCoroutine(self.one(side, source)))
        emit("flood-opened", stage=self.stage, count=self.count)
        timer = self.reactor.callLater(self.keep, self.giveUp)
        await DeferredList(waits)
        if timer.active():
            timer.cancel()
        closes: dict[str, list[float]] = {}
        for side in self.sides:
            info = self.info[side.number]
            kind = info.get("kind", "never-connected")
            closes.setdefault(kind, []).append(info.get("after", -1.0))
        emit(
            "flood-summary",
            stage=self.stage,
            count=self.count,
            reached=self.reached,
            failed=self.failed,
            seconds=round(time.monotonic() - started, 3),
            closes={k: sorted(v) for k, v in closes.items()},
        )

    def onBox(self, side: Side, box: amp.AmpBox) -> None:
        pass  # Silence: never answer the region.

    def giveUp(self) -> None:
        for side in self.sides:
            if not side.closed:
                self.info[side.number]["kind"] = "given-up"
                side.close()

    async def one(self, side: Side, source: str) -> None:
        try:
            await connect(self.reactor, side, *self.address, source=source)
        except Exception as error:  # noqa: BLE001 - reported
            self.failed += 1
            emit("flood-connect-failed", error=str(error)[:200])
            return
        opened = time.monotonic()
        side.lost.addCallback(self.lost, side, opened)
        if self.stage != "tcp":
            outcome = await side.call(SecureChannel, now=True, capabilities=_OFFER)
            if "answer" not in outcome:
                await side.lost
                return
            assert side.wire is not None
            if self.stage == "offer":
                side.wire.deaf = True
            elif self.stage == "hello":
                side.wire.deaf = True
                side.write(_PARTIAL_HELLO)
            else:
                ready = side.readyOrLost()
                side.wire.startTLSNow(clientOptions())
                if not await ready:
                    return
        self.reached += 1
        self.info[side.number]["reached"] = True
        await side.lost

    def lost(self, reason: Any, side: Side, opened: float) -> None:
        info = self.info[side.number]
        after = info["after"] = round(time.monotonic() - opened, 3)
        if "kind" in info:
            return
        if self.stage == "tcp" and side.received == 0 and after < 0.5:
            info["kind"] = "closed-at-once"
        elif info.get("reached") or self.stage == "tcp":
            info["kind"] = "held"
        else:
            info["kind"] = "closed-before-stage"


async def churn(
    reactor: Any, address: tuple[str, int], concurrency: int, seconds: float
) -> None:
    """Complete TLS handshakes back to back, then report how many.

    :param reactor: the reactor.
    :param address: the region's ``(host, port)``.
    :param concurrency: connections at once.
    :param seconds: for how long.
    """
    deadline = time.monotonic() + seconds
    done = [0, 0]  # Handshakes completed, attempts refused or failed.

    async def worker(n: int) -> None:
        while time.monotonic() < deadline:
            side = Side("region", lambda s, b: None, n)
            try:
                await connect(reactor, side, *address)
            except Exception:  # noqa: BLE001 - counted
                done[1] += 1
                continue
            outcome = await side.call(SecureChannel, now=True, capabilities=_OFFER)
            if "answer" in outcome and side.wire is not None:
                ready = side.readyOrLost()
                side.wire.startTLSNow(clientOptions())
                if await ready:
                    done[0] += 1
                else:
                    done[1] += 1
            else:
                done[1] += 1
            side.close()
            if not side.closed:
                await side.lost

    started = time.monotonic()
    await DeferredList([Deferred.fromCoroutine(worker(n)) for n in range(concurrency)])
    elapsed = time.monotonic() - started
    emit(
        "churn-summary",
        handshakes=done[0],
        failed=done[1],
        seconds=round(elapsed, 3),
        rate=round(done[0] / elapsed, 1),
    )
