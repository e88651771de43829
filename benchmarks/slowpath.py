"""P1s and P1d: what maas-rpc's stock path and Deferred answers cost.

maas-rpc answers and sends a command of AMP's plain argument types through
its common path (:mod:`provisioningserver.rpc.codec`); every other command
takes stock AMP's path, with maas-rpc's additions (the auth gate, limits,
deadlines, error mapping) on top. P1 measures the common path; these
measure the rest, each against raw AMP doing the same over TLS (the same
transport as maas-rpc's secure channel), sequentially in the reactor, with
the CPU per call of each side:

* **P1s**: :class:`benchmarks.raw.Enlist`, shaped as MAAS's ``Register`` (an
  ``AmpList`` of three networks, an optional URL given, an optional
  argument left out, an empty answer), so it cannot take the common path.
* **P1d**: ``EatCheez``'s arguments and answer, with a responder that
  returns a Deferred that has already fired
  (:class:`~benchmarks.raw.EatCheezNow`); **P1d'**: one that the reactor
  fires on its next iteration, through ``callLater(0)``
  (:class:`~benchmarks.raw.EatCheezLater`).

The simulated clusters answer them with :class:`benchmarks.cluster.BenchCluster`,
the raw AMP peers with :class:`benchmarks.raw.RawCheeseServer`: the same
command classes and the same work on both sides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.stats import Figure

if TYPE_CHECKING:
    from benchmarks.run import Bench

__all__ = ["p1d", "p1s"]


def p1s(bench: Bench) -> None:
    """Measure P1s (a command on the stock path) and add its figures.

    :param bench: the run.
    """
    from benchmarks.raw import NETWORKS, URL, Enlist

    args: dict[str, Any] = {"uuid": bench.uuids[0], "networks": NETWORKS, "url": URL}
    rawPeer, ourPeer = bench.rawWorkers[0], bench.clusterWorkers[0]
    r = bench._seqPair(
        {
            "rawTLS": (bench.rawCall(tls=True, command=Enlist, args=args), rawPeer),
            "ours": (bench.ourCall(command=Enlist, args=args), ourPeer),
        },
        bench.sizes.seq,
    )
    bench.figures.append(
        Figure(
            "P1s",
            "stock path: Register-like Enlist, seq",
            "calls/s",
            True,
            [trial["rate"] for trial in r["ours"]],
            "raw AMP/TLS seq",
            [trial["rate"] for trial in r["rawTLS"]],
            note="Enlist: uuid, an AmpList of 3 networks, an optional url given, "
            "an optional ip_addr_json left out; empty answer. maas-rpc sends and "
            "answers it through stock AMP's path (an AmpList argument).",
        )
    )
    bench._cpuFigures("P1s", "P1s", r, base="rawTLS", baseName="raw AMP/TLS")


def p1d(bench: Bench) -> None:
    """Measure P1d and P1d' (Deferred-returning responders) and add their
    figures.

    :param bench: the run.
    """
    from benchmarks.raw import NAME, ORIGIN, EatCheezLater, EatCheezNow

    args = {"name": NAME, "origin": ORIGIN}
    rawPeer, ourPeer = bench.rawWorkers[0], bench.clusterWorkers[0]
    r = bench._seqPair(
        {
            "rawTLS": (
                bench.rawCall(tls=True, command=EatCheezNow, args=args),
                rawPeer,
            ),
            "ours": (bench.ourCall(command=EatCheezNow, args=args), ourPeer),
            "rawLater": (
                bench.rawCall(tls=True, command=EatCheezLater, args=args),
                rawPeer,
            ),
            "oursLater": (bench.ourCall(command=EatCheezLater, args=args), ourPeer),
        },
        bench.sizes.seq,
    )

    def rate(name: str) -> list[float]:
        return [trial["rate"] for trial in r[name]]

    bench.figures.append(
        Figure(
            "P1d",
            "responder returns a fired Deferred, seq",
            "calls/s",
            True,
            rate("ours"),
            "raw AMP/TLS seq",
            rate("rawTLS"),
            note="EatCheez's arguments and answer; the responder returns "
            "defer.succeed(answer) (P1d) or deferLater(reactor, 0, ...) (P1d').",
        )
    )
    bench._cpuFigures("P1d", "P1d", r, base="rawTLS", baseName="raw AMP/TLS")
    bench.figures.append(
        Figure(
            "P1d'",
            "responder's Deferred fires via callLater(0), seq",
            "calls/s",
            True,
            rate("oursLater"),
            "raw AMP/TLS seq",
            rate("rawLater"),
        )
    )
