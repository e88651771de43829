"""An event-loop of the region that the scale benchmarks can ask things.

``python -m benchmarks.probe`` runs one region event-loop as a plain Python
program runs one (:func:`maasserver.eventloop.start`: the reactor in
crochet's thread, configured from ``MAAS_RPC_*`` like any event-loop), and
answers JSON commands, one per line on standard input, from its main thread,
which is not the reactor's: the thread a region's own code calls
:func:`~maasserver.utils.asynchronous.gather` from. It stops when its
standard input closes.

Commands (``{"id": n, "cmd": name, ...}`` in; ``{"id": n, "ok": ...}`` out):

``ping``, ``count``
    this process's PID; how many cluster connections are in rotation.
``gather``
    ``n`` clusters, ``fanouts`` times: each fan-out is ``gather()`` of
    ``getClientFor(uuid)`` then ``EatCheez`` for each of ``n`` clusters; the
    milliseconds of each.
``raw_connect`` / ``raw_fanout``
    open raw AMP connections to ``targets`` (over TLS with ``tls``); then
    the same fan-out over ``n`` of them, with ``blockingCallFromThread`` of
    a ``DeferredList`` of ``callRemote`` (the baseline of benchmark P4).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from functools import partial
from time import perf_counter
from typing import Any

__all__ = ["main"]


class Probe:
    """The commands; see the module."""

    def __init__(self) -> None:
        self.raw: dict[bool, list[Any]] = {False: [], True: []}

    def cmd_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def cmd_count(self) -> dict[str, Any]:
        from maasserver.rpc import getAllClients

        clients = getAllClients()
        return {
            "connections": len(clients),
            "clusters": len({c.ident for c in clients}),
        }

    def _uuids(self, n: int) -> list[str]:
        from maasserver.rpc import getAllClients

        uuids = sorted({c.ident for c in getAllClients()})
        if len(uuids) < n:
            raise RuntimeError(f"{len(uuids)} clusters connected, not {n}")
        return uuids[:n]

    def cmd_gather(self, n: int, fanouts: int) -> dict[str, Any]:
        from benchmarks.raw import NAME, ORIGIN
        from maasserver.rpc import getClientFor
        from maasserver.utils.asynchronous import gather
        from provisioningserver.rpc.cluster import EatCheez

        def call(uuid: str) -> Any:
            d = getClientFor(uuid)
            return d.addCallback(lambda c: c(EatCheez, name=NAME, origin=ORIGIN))

        uuids = self._uuids(n)
        samples = []
        failed = 0
        for _ in range(fanouts):
            calls = [partial(call, uuid) for uuid in uuids]
            start = perf_counter()
            results = list(gather(calls, timeout=60))
            samples.append((perf_counter() - start) * 1000)
            failed += sum(1 for r in results if not isinstance(r, dict))
            failed += n - len(results)
        return {"ms": samples, "failed": failed}

    def cmd_freeze(self) -> dict[str, Any]:
        """Freeze the heap as ``maas-rpc eventloop`` does once it serves."""
        from provisioningserver.utils.heap import freezeStartupHeap

        return {"frozen": freezeStartupHeap()}

    def cmd_raw_connect(
        self, targets: list[list[Any]], n: int, tls: bool = False
    ) -> dict[str, Any]:
        import crochet
        from twisted.internet import defer, reactor
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            connectProtocol,
            wrapClientTLS,
        )
        from twisted.protocols import amp

        from benchmarks.raw import tlsClientOptions

        @crochet.run_in_reactor
        def connect() -> Any:
            attempts = []
            for i in range(n):
                host, port = targets[i % len(targets)]
                endpoint: Any = TCP4ClientEndpoint(reactor, host, port, timeout=30)
                if tls:
                    endpoint = wrapClientTLS(tlsClientOptions(), endpoint)
                attempts.append(connectProtocol(endpoint, amp.AMP()))
            return defer.gatherResults(attempts, consumeErrors=True)

        self.raw[tls].extend(connect().wait(120))
        return {"connections": len(self.raw[tls])}

    def cmd_raw_fanout(self, n: int, fanouts: int, tls: bool = False) -> dict[str, Any]:
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        from benchmarks.loops import fanout
        from benchmarks.raw import NAME, ORIGIN, RawEatCheez

        protos = self.raw[tls][:n]
        samples = []
        failed = 0
        for _ in range(fanouts):
            calls = [
                partial(p.callRemote, RawEatCheez, name=NAME, origin=ORIGIN)
                for p in protos
            ]
            start = perf_counter()
            results = blockingCallFromThread(reactor, fanout, calls)
            samples.append((perf_counter() - start) * 1000)
            failed += sum(1 for ok, _ in results if not ok)
        return {"ms": samples, "failed": failed}


def main() -> int:
    """Start the event-loop, answer commands until standard input closes.

    :return: the exit status.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from maasserver import eventloop

    eventloop.start().wait(120)
    probe = Probe()
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        ident = request.pop("id", None)
        name = request.pop("cmd")
        try:
            answer = {
                "id": ident,
                "ok": True,
                **getattr(probe, f"cmd_{name}")(**request),
            }
        except Exception as error:  # noqa: BLE001 - reported to the driver
            answer = {
                "id": ident,
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
            }
        answer["t"] = time.monotonic()
        out.write(json.dumps(answer) + "\n")
        out.flush()
    eventloop.stop().wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
