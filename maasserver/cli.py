"""The ``maas-rpc`` command line.

``maas-rpc region``
    Runs a region of N event-loop processes on this host
    (:mod:`maasserver.supervisor`).
``maas-rpc eventloop``
    Runs one region event-loop process in the foreground (the same as
    ``twistd -n maas-regiond``).
``maas-rpc cluster``
    Runs one cluster process (the same as ``twistd -n maas-clusterd``;
    handled by :mod:`provisioningserver.cli`, so it loads no region code).
``maas-rpc status``
    Shows the connections of a running region (or, with ``--cluster``, of
    the cluster processes on this host), through their control sockets
    (:mod:`provisioningserver.control`).
``maas-rpc call``
    Calls a cluster command through a running region and prints the answer
    as JSON (:mod:`maasserver.control`).
``maas-rpc tls-init``
    Makes a CA and region and cluster certificates, for a test installation
    with mutual TLS.
``maas-rpc demo``
    Runs the whole system on this machine, with no configuration.

Each command that runs a process has a flag for each setting it reads,
generated from :data:`provisioningserver.settings.SETTINGS`; flags win over
the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["buildParser", "main"]

PROG = "maas-rpc"

DESCRIPTION = """\
MAAS's region-cluster RPC system on Twisted AMP.

A region (one or more event-loop processes) and any number of clusters keep
one connection between every event-loop and every cluster, authenticate each
other with a shared secret, and call each other's commands.
"""

REGION_DESCRIPTION = """\
Run a region: --workers event-loop processes on this host. The region binds
the discovery port (--http-port) once and hands it to its workers; each
worker takes the first free RPC port of --ports.

A worker that cannot start stops the region with its one-line error. A
worker that dies after serving is restarted. SIGTERM or Ctrl-C drains the
calls in progress and stops every worker.

The first region on a host creates the shared secret (secret in the data
directory); give each cluster a copy.
"""

EVENTLOOP_DESCRIPTION = """\
Run one region event-loop process in the foreground: it accepts cluster
connections on its RPC port, advertises itself in the data directory's store
(or PostgreSQL), and serves discovery on the HTTP port. maas-rpc region runs
several of these; twistd -n maas-regiond is the same.
"""

STATUS_DESCRIPTION = """\
Show the connections of the region running on this host, asking each of its
event-loops through its control socket in the data directory: which cluster
is connected to which event-loop, from where, since when, over TLS or not,
and how its calls went. With --cluster, show the view of the cluster
processes on this host instead.
"""

CALL_DESCRIPTION = """\
Call a cluster command through the region running on this host and print the
answer as JSON. Arguments are name=value pairs, parsed by the command's
declared types (lists as JSON). Without --cluster or --all, the one
connected cluster is called.

Example:
  maas-rpc call EatCheez name=Brie origin=France --all
"""

EPILOG = "Every setting flag can be given as the environment variable in brackets."


def _version() -> str:
    import platform
    from importlib import metadata

    import twisted

    try:
        ours = metadata.version("maas-rpc")
    except metadata.PackageNotFoundError:
        ours = "(not installed)"
    return (
        f"maas-rpc {ours} (Twisted {twisted.__version__}, "
        f"Python {platform.python_version()})"
    )


def buildParser() -> argparse.ArgumentParser:
    """Build the ``maas-rpc`` argument parser.

    Nothing is read from the environment here, so a malformed variable never
    breaks ``--help``.

    :return: the parser.
    """
    from provisioningserver import settings
    from provisioningserver.cli import CLUSTER_DESCRIPTION, OneLineParser

    raw = argparse.RawDescriptionHelpFormatter
    parser = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=raw)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    region = commands.add_parser(
        "region",
        help="run a region of event-loop processes",
        description=REGION_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=raw,
    )
    settings.addArguments(region, "region", "supervisor")

    eventloop = commands.add_parser(
        "eventloop",
        help="run one region event-loop process",
        description=EVENTLOOP_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=raw,
    )
    settings.addArguments(eventloop, "region")

    cluster = commands.add_parser(
        "cluster",
        help="run one cluster process",
        description=CLUSTER_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=raw,
    )
    settings.addArguments(cluster, "cluster")

    status = commands.add_parser(
        "status",
        help="show the connections of the region (or cluster) on this host",
        description=STATUS_DESCRIPTION,
        formatter_class=raw,
    )
    status.add_argument(
        "--cluster",
        action="store_true",
        help="show the cluster processes' view instead of the region's",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    _dataDirFlag(status)

    call = commands.add_parser(
        "call",
        help="call a cluster command through the region",
        description=CALL_DESCRIPTION,
        formatter_class=raw,
    )
    call.add_argument("name", metavar="COMMAND", help="e.g. EatCheez, or module:Cmd")
    call.add_argument(
        "arguments", metavar="NAME=VALUE", nargs="*", help="the command's arguments"
    )
    which = call.add_mutually_exclusive_group()
    which.add_argument("--cluster", metavar="UUID", help="call this cluster")
    which.add_argument(
        "--all", action="store_true", help="call every connected cluster"
    )
    call.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive,
        default=30.0,
        help="how long to wait for the answers (default 30)",
    )
    _dataDirFlag(call)

    tlsInit = commands.add_parser(
        "tls-init",
        help="make a test CA and region and cluster certificates",
        description="Make a CA, and a region and a cluster certificate signed "
        "by it, in DIRECTORY (for tests and demonstrations: the keys are not "
        "encrypted).",
    )
    tlsInit.add_argument("directory", help="where to write the PEM files")

    demo = commands.add_parser(
        "demo",
        help="run the self-contained demo",
        description="Start a region of two event-loops and three clusters on "
        "127.0.0.1 in a temporary directory, show the mesh forming, call "
        "EatCheez on every cluster, and stop everything.",
    )
    demo.add_argument(
        "--timeout",
        type=_positive,
        default=60.0,
        help="seconds to wait for each step (default 60)",
    )
    return parser


def _positive(text: str) -> float:
    from provisioningserver.settings import InvalidValue, seconds

    try:
        return seconds(text)
    except InvalidValue as error:
        raise argparse.ArgumentTypeError(f"{text!r} {error}") from None


def _dataDirFlag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        dest="MAAS_RPC_DATA_DIR",
        metavar="PATH",
        help="the data directory of the processes to ask [MAAS_RPC_DATA_DIR]",
    )


def _error(command: str, message: str, status: int = 2) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr, flush=True)
    return status


# Running processes.


def _eventloop(overrides: dict[str, str]) -> int:
    import crochet

    from maasserver.config import RegionConfig
    from maasserver.eventloop import loop
    from maasserver.plugin import loadRegionProtocol
    from provisioningserver import settings
    from provisioningserver.cli import runService
    from provisioningserver.config import ConfigError

    name = f"{PROG} eventloop"
    worker = os.environ.get("MAAS_RPC_WORKER")
    if not worker:
        settings.warnUnknown(os.environ, name, sys.stderr)
    try:
        config = RegionConfig.from_env(None, **overrides)
        protocol = loadRegionProtocol(config)
    except ConfigError as error:
        from provisioningserver.cli import _fail

        _fail(name, str(error))
        return 2

    def make() -> Any:
        crochet.no_setup()
        services = loop.populate(config, protocol=protocol)
        if worker:
            _exitWhenOrphaned()
        return services

    return runService(
        make,
        name=name,
        role="eventloop",
        logLevel=config.log_level,
        ready=loop.whenReady,
        describe=loop.describe,
    )


def _exitWhenOrphaned() -> None:
    """Stop this worker when ``maas-rpc region`` goes away (its standard
    input closes), so that a killed supervisor leaves no worker behind."""
    from twisted.internet import protocol, reactor, stdio

    class Watch(protocol.Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(  # type: ignore[call-arg]  # (POSIX's signature)
        Watch(), stdout=os.open(os.devnull, os.O_WRONLY)
    )


def _region(overrides: dict[str, str]) -> int:
    from maasserver.config import RegionConfig
    from maasserver.plugin import loadRegionProtocol
    from maasserver.supervisor import Supervisor, listeningSocket
    from provisioningserver import settings
    from provisioningserver.cli import runService
    from provisioningserver.config import ConfigError

    name = f"{PROG} region"
    settings.warnUnknown(os.environ, name, sys.stderr)
    env = {**os.environ, **overrides}
    try:
        settings.checkEnvironment(env, ["region", "supervisor"])
        workers = settings.setting("MAAS_RPC_WORKERS").value(env, 1)
        config = RegionConfig.from_env(env)
        # Create the secret once, here, before the workers race for it, and
        # check what every worker would otherwise fail on.
        config.load_secret()
        loadRegionProtocol(config)
        metricsPort = config.metrics_port
        if metricsPort is not None:
            from provisioningserver.metrics import requirePrometheus

            requirePrometheus()
    except ConfigError as error:
        return _error("region", str(error))
    where = f"{config.bind or '0.0.0.0'}:{config.http_port}"
    try:
        httpSocket = listeningSocket(config.bind, config.http_port)
    except OSError as error:
        import errno

        if error.errno == errno.EADDRINUSE:
            return _error(
                "region",
                f"the discovery port {where} is in use by another process "
                "(another region?); choose a free one with --http-port or "
                "MAAS_RPC_HTTP_PORT",
            )
        return _error(
            "region", f"cannot listen on {where} (MAAS_RPC_HTTP_PORT): {error.strerror}"
        )
    httpPort = httpSocket.getsockname()[1]
    childEnv = dict(env)
    childEnv["MAAS_RPC_HTTP_PORT"] = str(httpPort)
    childEnv["MAAS_RPC_DATA_DIR"] = str(config.data_dir.resolve())
    childEnv.pop("MAAS_RPC_WORKERS", None)
    supervisor = Supervisor(
        workers,
        [sys.executable, "-m", "maasserver.cli", "eventloop"],
        childEnv,
        httpSocket,
        stopTimeout=config.drain_timeout + 15.0,
        controlDir=config.data_dir.resolve() / "control",
    )

    def make() -> Any:
        from twisted.application.service import MultiService

        top = MultiService()
        supervisor.setServiceParent(top)
        if metricsPort is not None:
            from provisioningserver.metrics import MetricsService

            MetricsService(metricsPort, supervisor.gatherMetrics).setServiceParent(top)
        return top

    def describe() -> str:
        for worker in supervisor.workers:
            worker.flush()
        parts = [
            f"{workers} event-loop(s)",
            f"data directory {config.data_dir}",
            f"secret {config.secret_path}",
            f"discovery at http://{config.bind or 'localhost'}:{httpPort}/MAAS/rpc/",
        ]
        if metricsPort is not None:
            parts.append(f"metrics at http://127.0.0.1:{metricsPort}/metrics")
        return "Region ready: " + ", ".join(parts) + "."

    try:
        return runService(
            make,
            name=name,
            role="region",
            logLevel=config.log_level,
            ready=lambda: supervisor.started,
            describe=describe,
        )
    finally:
        httpSocket.close()


def _cluster(args: list[str]) -> int:
    # Replace this process, so that the cluster never loads region code.
    argv = [sys.executable, "-m", "provisioningserver.cli", "cluster", *args]
    os.execv(sys.executable, argv)
    return 1  # pragma: no cover - execv does not return


# Asking running processes.


def _controlDir(overrides: dict[str, str], role: str) -> Path:
    from provisioningserver.config import data_dir_from

    env = {**os.environ, **overrides}
    return data_dir_from(env, role) / "control"


def _when(seconds: Any, now: float) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    moment = time.localtime(seconds)
    if now - seconds < 86400:
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%Y-%m-%d %H:%M", moment)


def _since(seconds: Any, now: float) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    age = max(0, int(now - seconds))
    if age < 120:
        ago = f"{age}s"
    elif age < 7200:
        ago = f"{age // 60}m"
    elif age < 172800:
        ago = f"{age // 3600}h"
    else:
        ago = f"{age // 86400}d"
    return f"{_when(seconds, now)} ({ago} ago)"


def _tls(conn: dict[str, Any]) -> str:
    mode = conn.get("mode")
    yes = "yes" if conn.get("tls") else "no"
    return f"{yes} ({mode})" if mode not in (None, "tls", "plain") else yes


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


#: The columns a status table shows for each connection, after its two
#: first (who holds it, and who is at the other end).
_CONNECTION_COLUMNS = ["PEER", "CONNECTED SINCE", "TLS", "CALLS", "FAILED", "LAST CALL"]


def _connectionColumns(conn: dict[str, Any], now: float) -> list[str]:
    return [
        str(conn.get("peer")),
        _since(conn.get("connectedAt"), now),
        _tls(conn),
        _count(conn.get("callsMade")),
        _count(conn.get("callsFailed")),
        _when(conn.get("lastCallAt"), now),
    ]


def formatRegionStatus(answers: list[dict[str, Any]], now: float | None = None) -> str:
    """Render the event-loops' ``status`` answers as a table.

    :param answers: one answer per event-loop.
    :param now: the time (for "ago"); now when ``None``.
    :return: the table, and a summary line.
    """
    now = time.time() if now is None else now
    header = ["EVENT-LOOP", "CLUSTER", *_CONNECTION_COLUMNS]
    rows = []
    clusters = set()
    total = 0
    for answer in answers:
        name = answer.get("eventloop", "?")
        connections = answer.get("connections") or []
        if not connections:
            rows.append([name, "(no clusters)", "-", "-", "-", "-", "-", "-"])
        for conn in connections:
            total += 1
            cluster = conn.get("cluster") or "(unidentified)"
            if conn.get("state") != "authenticated":
                cluster = f"{cluster} (handshake)"
            else:
                clusters.add(cluster)
            rows.append([name, cluster, *_connectionColumns(conn, now)])
    summary = (
        f"{len(answers)} event-loop(s), {total} connection(s), "
        f"{len(clusters)} cluster(s)"
    )
    return _table(rows, header) + "\n" + summary


def formatClusterStatus(answers: list[dict[str, Any]], now: float | None = None) -> str:
    """Render the cluster processes' ``status`` answers as a table.

    :param answers: one answer per cluster process.
    :param now: the time (for "ago"); now when ``None``.
    :return: the table, and a summary line.
    """
    now = time.time() if now is None else now
    header = ["CLUSTER", "EVENT-LOOP", *_CONNECTION_COLUMNS]
    rows = []
    total = 0
    for answer in answers:
        uuid = answer.get("cluster", "?")
        connections = answer.get("connections") or []
        if not connections:
            rows.append([uuid, "(none)", "-", "-", "-", "-", "-", "-"])
        for conn in connections:
            total += 1
            loop = str(conn.get("eventloop"))
            if conn.get("state") != "authenticated":
                loop = f"{loop} (handshake)"
            rows.append([uuid, loop, *_connectionColumns(conn, now)])
    urls = sorted({str(a.get("maas_url")) for a in answers})
    summary = (
        f"{len(answers)} cluster process(es), {total} connection(s); MAAS_URL "
        + ", ".join(urls)
    )
    return _table(rows, header) + "\n" + summary


def _ask(command: str, directory: Path, request: dict[str, Any], what: str) -> Any:
    from provisioningserver.control import ControlError, askAll

    answers = askAll(directory, request, timeout=float(request.get("timeout", 10)) + 5)
    if not answers:
        raise ControlError(
            f"no running {what} has a control socket in {directory} (is it "
            "running, with this data directory? see --data-dir / "
            "MAAS_RPC_DATA_DIR)"
        )
    for path, answer in answers:
        if isinstance(answer, ControlError):
            print(
                f"{PROG} {command}: warning: {path}: {answer}",
                file=sys.stderr,
                flush=True,
            )
    good = [(path, a) for path, a in answers if not isinstance(a, ControlError)]
    if not good:
        raise ControlError(f"no {what} in {directory} answered")
    return good


def _status(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    from provisioningserver.config import ConfigError
    from provisioningserver.control import ControlError

    role = "cluster" if args.cluster else "region"
    try:
        directory = _controlDir(overrides, role)
        what = "cluster process" if args.cluster else "region event-loop"
        answers = [a for _, a in _ask("status", directory, {"op": "status"}, what)]
    except (ConfigError, ControlError) as error:
        return _error("status", str(error), 1)
    # Both roles share the control protocol: a data directory of the other
    # role answers too, in a shape of its own.
    key, other, fix = (
        ("cluster", "region event-loops", "without --cluster")
        if args.cluster
        else ("eventloop", "cluster processes", "with --cluster")
    )
    if any(key not in answer for answer in answers):
        return _error(
            "status",
            f"the processes in {directory} are {other}: ask them {fix}",
            1,
        )
    if args.json:
        print(json.dumps(answers, indent=2, sort_keys=True))
    elif args.cluster:
        print(formatClusterStatus(answers))
    else:
        print(formatRegionStatus(answers))
    return 0


def _call(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from provisioningserver.config import ConfigError
    from provisioningserver.control import ControlError, ask

    arguments = {}
    for item in args.arguments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _error("call", f"argument {item!r} is not NAME=VALUE")
        arguments[key] = value
    try:
        directory = _controlDir(overrides, "region")
        loops = _ask("call", directory, {"op": "status"}, "region event-loop")
    except (ConfigError, ControlError) as error:
        return _error("call", str(error), 1)
    # Which event-loop reaches which cluster.
    reach: dict[str, Path] = {}
    for path, answer in loops:
        for conn in answer.get("connections") or []:
            if conn.get("state") == "authenticated" and conn.get("cluster"):
                reach.setdefault(conn["cluster"], path)
    if args.cluster:
        targets = [args.cluster]
    elif args.all:
        targets = sorted(reach)
    elif len(reach) == 1:
        targets = list(reach)
    else:
        return _error(
            "call",
            f"{len(reach)} clusters are connected; say which with --cluster "
            "UUID, or --all",
        )
    groups: dict[Path, list[str]] = {}
    results: list[dict[str, Any]] = []
    for uuid in targets:
        if uuid in reach:
            groups.setdefault(reach[uuid], []).append(uuid)
        else:
            results.append(
                {
                    "cluster": uuid,
                    "error": {
                        "code": "NO_CONNECTION",
                        "description": f"cluster {uuid} is connected to no "
                        "event-loop of this region",
                    },
                }
            )

    def callThrough(path: Path, uuids: list[str]) -> list[dict[str, Any]]:
        request = {
            "op": "call",
            "command": args.name,
            "arguments": arguments,
            "clusters": uuids,
            "timeout": args.timeout,
        }
        try:
            answer = ask(path, request, timeout=args.timeout + 10)
        except ControlError as error:
            return [
                {"cluster": u, "error": {"code": "CONTROL", "description": str(error)}}
                for u in uuids
            ]
        return [
            {**result, "eventloop": answer.get("eventloop")}
            for result in answer.get("results", [])
        ]

    if groups:
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            for done in pool.map(lambda item: callThrough(*item), groups.items()):
                results.extend(done)
    bad = [r for r in results if "error" in r]
    # A refused request (unknown command, bad argument) is the same for
    # every cluster: say it once.
    refused = {
        r["error"]["description"] for r in bad if r["error"]["code"] == "CONTROL"
    }
    if refused and len(refused) == 1 and len(bad) == len(results):
        return _error("call", refused.pop(), 2)
    results.sort(key=lambda r: r["cluster"])
    if args.all:
        for result in results:
            print(json.dumps(result, sort_keys=True))
    else:
        for result in results:
            shown = (
                result.get("answer")
                if "answer" in result
                else {"error": result["error"]}
            )
            print(json.dumps(shown, sort_keys=True))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Run ``maas-rpc``.

    :param argv: the arguments, without the program name; ``sys.argv[1:]``
        when ``None``.
    :return: the exit status.
    """
    from provisioningserver import settings

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["cluster"] and not ({"-h", "--help"} & set(args)):
        return _cluster(args[1:])
    parser = buildParser()
    parsed = parser.parse_args(args)
    given = settings.overrides(parsed)
    if parsed.command in ("status", "call"):
        settings.warnUnknown(os.environ, f"{PROG} {parsed.command}", sys.stderr)
    if parsed.command == "region":
        return _region(given)
    if parsed.command == "eventloop":
        return _eventloop(given)
    if parsed.command == "cluster":
        return _cluster(args[1:])
    if parsed.command == "status":
        return _status(parsed, given)
    if parsed.command == "call":
        return _call(parsed, given)
    if parsed.command == "tls-init":
        from provisioningserver.rpc.tls import makeTestPKI

        for name, path in sorted(makeTestPKI(parsed.directory).items()):
            print(f"{name}: {path}")
        return 0
    if parsed.command == "demo":
        from maasserver.demo import run_demo

        return run_demo(timeout=parsed.timeout)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
