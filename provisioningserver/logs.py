"""Logs for people: one format, no noise, no flood.

Every maas-rpc process logs through :mod:`twisted.logger` to standard error
(:func:`startLogging`), one line per event::

    2026-05-04T10:21:07+0000 eventloop[4121] info: Cluster 3f2a... registered.

* Under systemd (``JOURNAL_STREAM`` set), the timestamp is left out: the
  journal adds its own.
* A worker of ``maas-rpc region`` (``MAAS_RPC_WORKER`` set) writes one JSON
  object per line instead; the supervisor prints each once, at its own
  level, under the worker's name (:func:`emitWorkerLine`), so no line
  carries two timestamps.
* Twisted's ``Starting factory ...`` / ``Stopping factory ...`` lines, which
  an HTTP client prints on every discovery poll, are dropped
  (:func:`isNoise`).
* A warning or error that repeats word for word (a cluster that keeps
  failing the same way every 2 s) is shown once, then at most once a
  minute with how often it happened meanwhile and its likely cause
  (:class:`RepeatLimiter`, :data:`CAUSES`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

__all__ = [
    "CAUSES",
    "RepeatLimiter",
    "emitWorkerLine",
    "formatLine",
    "isNoise",
    "likelyCause",
    "makeObserver",
    "startLogging",
]

#: Text found in a repeated message → the likely cause, said with it.
CAUSES: tuple[tuple[str, str], ...] = (
    (
        "does not know the shared secret",
        "this host's secret differs from the region's: copy the region's "
        "secret file to MAAS_RPC_SECRET_FILE",
    ),
    (
        "wrong digest",
        "this host's secret differs from the region's: copy the region's "
        "secret file to MAAS_RPC_SECRET_FILE",
    ),
    (
        "MAC",
        "the discovery document is not signed with this host's secret: "
        "check MAAS_RPC_SECRET_FILE and MAAS_URL",
    ),
    (
        "HTTP 404",
        "MAAS_URL does not point at a maas-rpc region (it usually ends in /MAAS)",
    ),
    (
        "DNS lookup failed",
        "MAAS_URL names a host that does not resolve: check MAAS_URL",
    ),
    (
        "refused",
        "nothing listens there: is the region running, and is MAAS_URL right?",
    ),
    (
        "No route to host",
        "the region's host is unreachable from here: check MAAS_URL and the network",
    ),
    (
        "timed out",
        "the region's host does not answer: check MAAS_URL, the network and firewalls",
    ),
    (
        "did not complete within",
        "the peer stalls in the handshake: a slow or overloaded peer, or not a "
        "maas-rpc peer (see MAAS_RPC_HANDSHAKE_TIMEOUT)",
    ),
    (
        "legacy",
        "one side is MAAS or stock AMP: see MAAS_RPC_ALLOW_LEGACY_PEERS",
    ),
)


def likelyCause(text: str) -> str | None:
    """Guess why a message keeps repeating.

    :param text: the formatted message.
    :return: the likely cause, or ``None`` when nothing in :data:`CAUSES`
        matches.
    """
    for needle, cause in CAUSES:
        if needle in text:
            return cause
    return None


_NOISE = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})

#: Twisted's legacy lines about ports opening and closing: the start-up
#: line says where a process listens.
_PORT_NOISE = re.compile(
    r"^(\(.*Port .* Closed\)"
    r"|Main loop terminated\."
    r"|\S+ starting on \S+"
    # The web server's access line for every successful discovery poll, and
    # for every scrape of the metrics.
    r'|"[^"]*" - - \[[^]]*\] "GET (/MAAS/rpc/?|/metrics) HTTP/1\.[01]" 200 .*)$'
)


def isNoise(event: dict[str, Any]) -> bool:
    """Whether an event is Twisted's per-connection or per-port chatter.

    :param event: a log event.
    :return: ``True`` for ``Starting factory ...`` and ``Stopping factory
        ...`` (an HTTP client prints them on every request), and for
        ``<factory> starting on <port>``, ``(TCP Port <port> Closed)`` and
        ``Main loop terminated.``, and the access log line of each successful
        discovery request (once per poll of every cluster).
    """
    if event.get("log_format") in _NOISE:
        return True
    if event.get("log_level") != LogLevel.info:
        return False
    return _PORT_NOISE.match(formatEvent(event)) is not None


def eventText(event: dict[str, Any]) -> str:
    """The event's message, with its traceback when it carries a failure.

    :param event: a log event.
    :return: the text (several lines when there is a traceback).
    """
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            text = f"{text}\n{failure.getTraceback().rstrip()}"
        except Exception:  # noqa: BLE001 - a broken failure still logs its message
            text = f"{text} ({failure!r})"
    return text


def formatLine(
    level: str, text: str, who: str, *, when: float | None = None, stamp: bool = True
) -> str:
    """Format one log line (see the module's docstring).

    :param level: the level's name.
    :param text: the message.
    :param who: the process, e.g. ``eventloop[4121]``.
    :param when: the time (seconds since the epoch); now when ``None``.
    :param stamp: whether to start with the time.
    :return: the line, ending with a newline (continuation lines of a
        traceback are indented).
    """
    text = text.replace("\n", "\n    ")
    if not stamp:
        return f"{who} {level}: {text}\n"
    moment = time.strftime(
        "%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() if when is None else when)
    )
    return f"{moment} {who} {level}: {text}\n"


@implementer(ILogObserver)
class RepeatLimiter:
    """Shows a warning or error that repeats word for word at most once per
    ``window`` seconds.

    The first occurrence goes through at once. Later identical ones within
    the window are counted, not shown; the first one after the window goes
    through with ``(N more times in the last M s)`` and, when
    :func:`likelyCause` knows one, ``likely cause: ...``. Events below
    warning level always go through.

    :param observer: where events go.
    :param window: seconds.
    :param clock: a function returning the time in seconds;
        :func:`time.monotonic` when ``None``.
    :param limit: at most this many distinct messages are remembered (the
        oldest are forgotten), so that varying messages cannot grow it.
    """

    def __init__(
        self,
        observer: Callable[[dict[str, Any]], None],
        window: float = 60.0,
        clock: Callable[[], float] | None = None,
        limit: int = 1000,
    ) -> None:
        self.observer = observer
        self.window = window
        self.clock = clock or time.monotonic
        self.limit = limit
        #: text → [time shown, times suppressed since].
        self._seen: dict[str, list[float]] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is None or level < LogLevel.warn:
            self.observer(event)
            return
        text = formatEvent(event)
        now = self.clock()
        seen = self._seen.get(text)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return
        extra = []
        if seen is not None and seen[1]:
            extra.append(f"{int(seen[1])} more times in the last {now - seen[0]:.0f} s")
        repeated = seen is not None
        self._seen.pop(text, None)
        self._seen[text] = [now, 0]
        while len(self._seen) > self.limit:
            self._seen.pop(next(iter(self._seen)))
        if repeated:
            cause = likelyCause(text)
            if cause:
                extra.append(f"likely cause: {cause}")
        if extra:
            event = dict(event)
            event["log_format"] = "{log_limited_text} ({log_limited_extra})"
            event["log_limited_text"] = text
            event["log_limited_extra"] = "; ".join(extra)
        self.observer(event)


@implementer(ILogObserver)
class _LineObserver:
    def __init__(self, stream: IO[str], who: str, stamp: bool) -> None:
        self.stream = stream
        self.who = who
        self.stamp = stamp

    def __call__(self, event: dict[str, Any]) -> None:
        if isNoise(event):
            return
        level = event.get("log_level", LogLevel.info)
        line = formatLine(
            level.name,
            eventText(event),
            self.who,
            when=event.get("log_time"),
            stamp=self.stamp,
        )
        self.stream.write(line)
        self.stream.flush()


@implementer(ILogObserver)
class _JSONObserver:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        if isNoise(event):
            return
        level = event.get("log_level", LogLevel.info)
        record = {"level": level.name, "text": eventText(event)}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


def makeObserver(
    role: str,
    level: str = "info",
    stream: IO[str] | None = None,
    environ: dict[str, str] | None = None,
    clock: Callable[[], float] | None = None,
) -> Callable[[dict[str, Any]], None]:
    """Build the observer :func:`startLogging` installs.

    :param role: the process's role, shown on each line (``eventloop``,
        ``cluster``, ``region``).
    :param level: the lowest level shown.
    :param stream: where lines go; standard error when ``None``.
    :param environ: the environment; ``os.environ`` when ``None``.
    :param clock: for the :class:`RepeatLimiter`.
    :return: the observer.
    """
    env = os.environ if environ is None else environ
    out = sys.stderr if stream is None else stream
    sink: Callable[[dict[str, Any]], None]
    if env.get("MAAS_RPC_WORKER"):
        sink = _JSONObserver(out)
    else:
        sink = _LineObserver(
            out, f"{role}[{os.getpid()}]", not env.get("JOURNAL_STREAM")
        )
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(RepeatLimiter(sink, clock=clock), [predicate])


def startLogging(role: str, level: str = "info", stream: IO[str] | None = None) -> None:
    """Send this process's log events to standard error (see the module).

    :param role: the process's role, shown on each line.
    :param level: the lowest level shown.
    :param stream: where lines go; standard error when ``None``.
    """
    observer: Any = makeObserver(role, level, stream)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def emitWorkerLine(
    line: str,
    who: str,
    stream: IO[str],
    *,
    default: str = "info",
    stamp: bool = True,
) -> str | None:
    """Print one line a supervised worker wrote, once, at its own level.

    :param line: the line, a JSON record (see :func:`makeObserver`) or
        plain text (a ``print``, a crash).
    :param who: the worker, e.g. ``eventloop-1[4121]``.
    :param stream: where to print.
    :param default: the level of a plain-text line.
    :param stamp: whether to start with the time.
    :return: the level printed, or ``None`` for a blank line.
    """
    line = line.rstrip("\n")
    if not line.strip():
        return None
    level, text = default, line
    if line.startswith("{"):
        try:
            record = json.loads(line)
            level, text = str(record["level"]), str(record["text"])
        except (ValueError, KeyError, TypeError):
            pass
    stream.write(formatLine(level, text, who, stamp=stamp))
    stream.flush()
    return level
