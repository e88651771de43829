"""An attacker without the shared secret, in a process of its own.

Run as ``python tests/attack/attacker SCENARIO ...`` (see ``--help``). It
imports Twisted, pyOpenSSL and cryptography, never maas-rpc, and is given
no secret and no path to one; an audit hook reports any attempt to open a
file named like the secret (``opened-secret`` events). What it sees is
written to standard output as JSON lines (``wire.emit``); it runs until it
has done its scenario, or, when it listens for victims, until it is
terminated.

Scenarios: ``relay`` (:mod:`relay`), ``probe`` (:mod:`probes`), ``flood``
and ``churn`` (:mod:`flood`), ``replay`` (:mod:`replay`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from wire import emit, guardSecret


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attacker", description=__doc__)
    scenarios = parser.add_subparsers(dest="scenario", required=True)

    relay = scenarios.add_parser("relay", help="the cross-role relay")
    relay.add_argument("--region", type=_address, required=True)
    relay.add_argument("--to-cluster", choices=("secure", "legacy"), default="secure")
    relay.add_argument("--to-region", choices=("secure", "legacy"), default="secure")
    relay.add_argument("--hold", type=float, default=3.0)
    relay.add_argument("--linger", type=float, default=1.0)
    relay.add_argument("--victims", type=int, default=1)

    probe = scenarios.add_parser("probe", help="probes of the secure channel")
    probe.add_argument("--region", type=_address)
    probe.add_argument("--region-variants", default="")
    probe.add_argument("--cluster-variants", default="")

    flood = scenarios.add_parser("flood", help="half-open handshakes")
    flood.add_argument("--region", type=_address, required=True)
    flood.add_argument("--stage", choices=("tcp", "offer", "hello", "tls"))
    flood.add_argument("--count", type=int, default=100)
    flood.add_argument("--sources", default="127.0.0.2")
    flood.add_argument("--keep", type=float, default=30.0)

    churn = scenarios.add_parser("churn", help="complete TLS handshakes")
    churn.add_argument("--region", type=_address, required=True)
    churn.add_argument("--concurrency", type=int, default=8)
    churn.add_argument("--seconds", type=float, default=3.0)

    replay = scenarios.add_parser("replay", help="replay a recorded side")
    replay.add_argument("--recording", required=True, help="a JSON file")
    replay.add_argument("--region", type=_address, help="replay to the region")
    return parser


def _listen(reactor: Any, factory: Any) -> None:
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    emit("listening", port=port.getHost().port)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    guardSecret()
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # Twisted's own errors (an unhandled failure in a Deferred) go to
    # standard error, which the test keeps in a log file.
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    emit("started", scenario=args.scenario)
    finite: Any = None
    if args.scenario == "relay":
        from relay import Relay

        relay = Relay(
            reactor,
            args.region,
            args.to_cluster,
            args.to_region,
            args.hold,
            args.linger,
            args.victims,
        )
        _listen(reactor, relay.factory())
    elif args.scenario == "probe":
        from probes import ClusterProbes, RegionProbes

        if args.cluster_variants:
            probes = ClusterProbes(reactor, args.cluster_variants.split(","))
            _listen(reactor, probes.factory())
        if args.region_variants:
            run = RegionProbes(reactor, args.region, args.region_variants.split(","))
            finite = Deferred.fromCoroutine(run.run())
            if args.cluster_variants:
                finite.addCallback(lambda _: emit("region-probes-done"))
                finite = None
    elif args.scenario == "flood":
        from flood import Flood

        flood = Flood(
            reactor,
            args.region,
            args.stage,
            args.count,
            args.sources.split(","),
            args.keep,
        )
        finite = Deferred.fromCoroutine(flood.run())
    elif args.scenario == "churn":
        from flood import churn

        finite = Deferred.fromCoroutine(
            churn(reactor, args.region, args.concurrency, args.seconds)
        )
    elif args.scenario == "replay":
        import replay

        with open(args.recording) as recording:
            chunks = [
                (before, bytes.fromhex(data)) for before, data in json.load(recording)
            ]
        if args.region is not None:
            finite = replay.toRegion(reactor, args.region, chunks)
        else:
            _listen(reactor, replay.listening(reactor, chunks))
    if finite is not None:

        def finished(result: Any) -> None:
            emit("finished", error=None if result is None else repr(result)[:300])
            reactor.callWhenRunning(reactor.stop)

        finite.addBoth(finished)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
