"""Running a service tree in the foreground, and ``maas-rpc cluster``.

``python -m provisioningserver.cli cluster [flags]`` runs one cluster process
(the same as ``twistd -n maas-clusterd``), loading no region code. The
``maas-rpc cluster`` command hands over to it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.python import usage

__all__ = ["main", "runService"]


def runService(
    makeService: Callable[[], Any], *, name: str, logLevel: str = "info"
) -> int:
    """Run a service tree on the global reactor until SIGTERM or Ctrl-C.

    Logs go to standard error. The services are stopped cleanly before the
    reactor stops.

    :param makeService: builds the service tree; called before the reactor
        starts.
    :param name: the program's name, for messages.
    :param logLevel: the lowest log level shown (``debug``, ``info``,
        ``warn``, ``error``).
    :return: the exit status: 0 after a clean stop, 1 when the services
        failed to start.
    """
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(
        defaultLogLevel=LogLevel.levelWithName(logLevel)
    )
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )
    service = makeService()
    status = {"code": 0}

    def start() -> None:
        try:
            service.startService()
        except Exception as error:  # noqa: BLE001 - report, then stop cleanly
            print(f"{name}: error: {error}", file=sys.stderr)
            status["code"] = 1
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger(
        "before",
        "shutdown",
        lambda: service.stopService() if service.running else None,
    )
    reactor.run()
    return status["code"]


def main(argv: list[str] | None = None) -> int:
    """Run ``cluster`` (the only subcommand here).

    :param argv: the arguments without the program name; ``sys.argv[1:]``
        when ``None``.
    :return: the exit status.
    """
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "cluster":
        print(
            "usage: python -m provisioningserver.cli cluster [flags]", file=sys.stderr
        )
        return 2
    from provisioningserver.plugin import Options, makeService

    options = Options()
    try:
        options.parseOptions(args[1:])
    except usage.UsageError as error:
        print(f"maas-rpc cluster: error: {error}", file=sys.stderr)
        return 2
    return runService(lambda: makeService(options), name="maas-rpc cluster")


if __name__ == "__main__":
    sys.exit(main())
