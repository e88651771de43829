"""Running a service tree in the foreground, and ``maas-rpc cluster``.

``python -m provisioningserver.cli cluster [flags]`` runs one cluster process
(the same as ``twistd -n maas-clusterd``), loading no region code. The
``maas-rpc cluster`` command hands over to it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["OneLineParser", "clusterParser", "main", "runService"]

CLUSTER_DESCRIPTION = """\
Run one cluster process in the foreground: it polls the region's discovery
document (<MAAS_URL>/rpc/), connects to every region event-loop advertised
there, and answers the region's calls. SIGTERM or Ctrl-C drains calls in
progress, then stops it.

The cluster needs a copy of the region's secret file (--secret-file, or
"secret" in its data directory). It keeps its UUID in its data directory.
"""

EPILOG = "Every flag can be given as the environment variable in brackets."


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``prog: error: ...``.

    (argparse prints the whole usage before its error; the usage is one
    ``--help`` away.)
    """

    def error(self, message: str) -> Any:
        """Print one line and exit with status 2.

        :param message: what is wrong.
        :raises SystemExit: always.
        """
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fail(name: str, message: str) -> None:
    from provisioningserver import systemd

    if os.environ.get("MAAS_RPC_WORKER"):
        # maas-rpc region prints it, once.
        if systemd.notifyError(message):
            return
    print(f"{name}: error: {message}", file=sys.stderr, flush=True)


def runService(
    makeService: Callable[[], Any],
    *,
    name: str,
    role: str = "",
    logLevel: str = "info",
    ready: Callable[[], Any] | None = None,
    describe: Callable[[], str] | None = None,
) -> int:
    """Run a service tree on the global reactor until SIGTERM or Ctrl-C.

    Logs go to standard error (:func:`provisioningserver.logs.startLogging`).
    Once ``ready`` fires, the line ``describe`` returns is logged,
    readiness is notified (``sd_notify``, or ``maas-rpc region``'s pipe;
    :mod:`provisioningserver.systemd`), and the start-up heap is frozen
    (:func:`~provisioningserver.utils.heap.freezeStartupHeap`). A failure
    to start is one line on standard error (or, under ``maas-rpc region``,
    sent to it) and exit status 1. On SIGTERM the services are stopped
    (draining first, when the tree drains) before the reactor stops.

    :param makeService: builds the service tree; called before the reactor
        starts.
    :param name: the program's name, for messages.
    :param role: the role shown on log lines; the last word of ``name``
        when empty.
    :param logLevel: the lowest log level shown (``debug``, ``info``,
        ``warn``, ``error``).
    :param ready: returns a Deferred that fires once the services serve;
        ready at once after starting when ``None``.
    :param describe: returns the start-up line; ``"<name> started."`` when
        ``None``.
    :return: the exit status: 0 after a clean stop, 1 when the services
        failed to start.
    """
    from twisted.internet import defer, reactor
    from twisted.logger import Logger

    from provisioningserver import logs, systemd
    from provisioningserver.config import ConfigError
    from provisioningserver.utils.heap import freezeStartupHeap

    log = Logger(namespace=role or name)
    logs.startLogging(role or name.split()[-1], logLevel)
    try:
        service = makeService()
    except (ConfigError, OSError, ImportError) as error:
        _fail(name, str(error))
        return 2
    status = {"code": 0}

    def stopOnce() -> None:
        # A second SIGTERM (systemd signals the whole group, and so does
        # maas-rpc region) must not stop the reactor twice.
        if reactor.running and not status.get("stopping"):
            status["stopping"] = 1
            reactor.stop()

    def failed(message: str) -> None:
        _fail(name, message)
        status["code"] = 1
        stopOnce()

    def started(_: Any) -> None:
        line = describe() if describe is not None else f"{name} started."
        log.info("{line}", line=line)
        systemd.notifyReady(line)
        # What start-up built lives as long as the process: keep it out of
        # every later full collection (provisioningserver.utils.heap).
        frozen = freezeStartupHeap()
        log.debug("Start-up heap frozen: {count} objects.", count=frozen)

    def start() -> None:
        try:
            service.startService()
        except Exception as error:  # noqa: BLE001 - report, then stop cleanly
            failed(str(error))
            return
        d = defer.maybeDeferred(ready) if ready is not None else defer.succeed(None)
        d.addCallbacks(started, lambda failure: failed(failure.getErrorMessage()))

    def stopping() -> Any:
        systemd.notifyStopping()
        if service.running:
            return service.stopService()
        return None

    hop: Any = reactor.callFromThread  # type: ignore[attr-defined]

    def handleSignals() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: hop(stopOnce))

    reactor.callWhenRunning(handleSignals)
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    import crochet

    try:
        # This process runs the reactor itself: crochet must not start one,
        # and must know this one (so that results still waited for from
        # other threads fail with ReactorStopped at shutdown).
        crochet.no_setup()
    except RuntimeError:
        pass  # The service maker has said so already.
    reactor.run()
    return status["code"]


def clusterParser() -> argparse.ArgumentParser:
    """The parser of ``maas-rpc cluster``.

    :return: the parser; its flags come from the settings table.
    """
    from provisioningserver import settings

    parser = OneLineParser(
        prog="maas-rpc cluster",
        description=CLUSTER_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    settings.addArguments(parser, "cluster")
    return parser


def runCluster(overrides: dict[str, str], protocol: Any = None) -> int:
    """Run a cluster process with settings from the environment and flags.

    :param overrides: settings given as flags, by variable name.
    :param protocol: the protocol class; from ``MAAS_RPC_CLUSTER_PROTOCOL``
        when ``None``.
    :return: the exit status.
    """
    from provisioningserver import settings
    from provisioningserver.config import ClusterConfig, ConfigError
    from provisioningserver.plugin import (
        describeCluster,
        loadClusterProtocol,
        makeClusterService,
        wrapDraining,
    )

    name = "maas-rpc cluster"
    settings.warnUnknown(os.environ, name, sys.stderr)
    try:
        config = ClusterConfig.from_env(None, **overrides)
        env = {**os.environ, **overrides}
        protocolClass = protocol or loadClusterProtocol(env)
    except ConfigError as error:
        _fail(name, str(error))
        return 2

    def make() -> Any:
        return wrapDraining(makeClusterService(config, protocolClass), config)

    return runService(
        make,
        name=name,
        role="cluster",
        logLevel=config.log_level,
        describe=lambda: describeCluster(config),
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``cluster`` (the only subcommand here).

    :param argv: the arguments without the program name; ``sys.argv[1:]``
        when ``None``.
    :return: the exit status.
    """
    from provisioningserver import settings

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "cluster":
        print("usage: maas-rpc cluster [flags]", file=sys.stderr)
        return 2
    parsed = clusterParser().parse_args(args[1:])
    return runCluster(settings.overrides(parsed))


if __name__ == "__main__":
    sys.exit(main())
