"""The ``maas-rpc`` command line.

``maas-rpc region [--workers N]``
    Runs a region of N event-loop processes on this host, sharing the
    discovery port; restarts a worker that dies; stops them all on SIGTERM
    or Ctrl-C.
``maas-rpc eventloop``
    Runs one region event-loop process in the foreground (what ``region``
    starts N of; the same as ``twistd -n maas-regiond``).
``maas-rpc cluster``
    Runs one cluster process (the same as ``twistd -n maas-clusterd``).
``maas-rpc tls-init DIR``
    Makes a CA and region and cluster certificates in DIR, for a test or
    demo installation with mutual TLS.
``maas-rpc demo``
    Needs no configuration: starts a region of two event-loops and three
    clusters on 127.0.0.1, shows the mesh forming, calls ``EatCheez`` on
    every cluster, has a cluster call the region, stops everything.

Settings come from ``MAAS_RPC_*`` variables (see :mod:`maasserver.config`
and :mod:`provisioningserver.config`); flags take precedence.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``maas-rpc`` argument parser.

    :return: the parser.
    """
    parser = argparse.ArgumentParser(
        prog="maas-rpc",
        description="MAAS's region-cluster RPC system on Twisted AMP.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    region = commands.add_parser("region", help="run a region of event-loops")
    region.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MAAS_RPC_WORKERS", "1") or 1),
        help="event-loop processes to run (MAAS_RPC_WORKERS; default 1)",
    )
    commands.add_parser(
        "eventloop", help="run one region event-loop process", add_help=False
    )
    commands.add_parser("cluster", help="run one cluster process", add_help=False)
    tls_init = commands.add_parser(
        "tls-init", help="make a test CA and region and cluster certificates"
    )
    tls_init.add_argument("directory", help="where to write the PEM files")
    demo = commands.add_parser("demo", help="run the self-contained demo")
    demo.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the mesh to form (default 60)",
    )
    return parser


def _eventloop(args: list[str]) -> int:
    from twisted.python import usage

    from maasserver.plugin import Options, makeService
    from provisioningserver.cli import runService

    options = Options()
    try:
        options.parseOptions(args)
        service = makeService(options)
    except usage.UsageError as error:
        print(f"maas-rpc eventloop: error: {error}", file=sys.stderr)
        return 2
    return runService(lambda: service, name="maas-rpc eventloop")


def _cluster(args: list[str]) -> int:
    # Replace this process, so that the cluster never loads region code.
    argv = [sys.executable, "-m", "provisioningserver.cli", "cluster", *args]
    os.execv(sys.executable, argv)
    return 1  # pragma: no cover - execv does not return


def reservePort(interface: str, port: int = 0) -> socket.socket:
    """Bind (without listening) a port that event-loops will share.

    The socket has ``SO_REUSEPORT`` set, so the workers can bind the same
    port; holding it keeps the port reserved while they start.

    :param interface: the address to bind; ``""`` for all.
    :param port: the port; 0 for any free one.
    :return: the bound socket; its port is ``getsockname()[1]``.
    :raises OSError: when the port cannot be bound.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((interface, port))
    return sock


def _region(workers: int) -> int:
    from twisted.application.service import MultiService
    from twisted.runner.procmon import ProcessMonitor

    from maasserver.config import RegionConfig
    from provisioningserver.cli import runService
    from provisioningserver.config import ConfigError
    from provisioningserver.security import get_or_create_shared_secret

    if workers < 1:
        print("maas-rpc region: error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        config = RegionConfig.from_env()
        # Create the secret once, here, before the workers race for it.
        get_or_create_shared_secret(config.secret_path)
        reserved = reservePort(config.bind, config.http_port)
    except (ConfigError, OSError) as error:
        print(f"maas-rpc region: error: {error}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["MAAS_RPC_HTTP_PORT"] = str(reserved.getsockname()[1])
    env["MAAS_RPC_DATA_DIR"] = str(config.data_dir)

    def make() -> MultiService:
        top = MultiService()
        monitor = ProcessMonitor()
        monitor.minRestartDelay = 1
        monitor.maxRestartDelay = 30
        for n in range(workers):
            monitor.addProcess(
                f"eventloop-{n + 1}",
                [sys.executable, "-m", "maasserver.cli", "eventloop"],
                env=env,
            )
        monitor.setServiceParent(top)
        print(
            f"maas-rpc region: {workers} event-loop(s); discovery at "
            f"http://{config.bind or 'localhost'}:"
            f"{env['MAAS_RPC_HTTP_PORT']}/MAAS/rpc/",
            file=sys.stderr,
        )
        return top

    try:
        return runService(make, name="maas-rpc region")
    finally:
        reserved.close()


def main(argv: list[str] | None = None) -> int:
    """Run ``maas-rpc``.

    :param argv: the arguments, without the program name; ``sys.argv[1:]``
        when ``None``.
    :return: the exit status.
    """
    args = sys.argv[1:] if argv is None else argv
    # These pass their flags on untouched.
    if args and args[0] == "eventloop":
        return _eventloop(args[1:])
    if args and args[0] == "cluster":
        return _cluster(args[1:])
    parser = build_parser()
    parsed = parser.parse_args(args)
    if parsed.command == "region":
        return _region(parsed.workers)
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
