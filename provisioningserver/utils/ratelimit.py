"""Log a repeating problem at most once per interval.

A peer that misbehaves on purpose repeats itself: a spoofed discovery
document on every poll, a connection flood, a thousand unreachable
event-loops. Each problem should reach the log, but once per minute is
enough to tell an operator; the rest is noise an attacker could use to fill
a disk. :class:`LogLimiter` lets the first occurrence of each problem (a
*key*) through at once, then at most one per interval, and says how many
were held back meanwhile.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.logger import Logger, LogLevel

from provisioningserver.utils.twisted import resolveReactor

__all__ = ["DEFAULT_INTERVAL", "LogLimiter"]

#: Seconds between two log lines about the same problem.
DEFAULT_INTERVAL = 60.0


class LogLimiter:
    """Passes at most one log event per key per ``interval`` seconds.

    :param logger: the :class:`~twisted.logger.Logger` to emit to.
    :param interval: seconds between two events with the same key.
    :param clock: an ``IReactorTime`` for the time; the global reactor when
        ``None`` (resolved at the first event).
    :param maxKeys: keys remembered at most; when more are seen, the oldest
        are forgotten (their next event then passes at once).
    :param burst: events of one key let through in each interval before the
        rest are held back (so that a few distinct occurrences, say a few
        refused connections, are each seen, while a flood is not).
    """

    def __init__(
        self,
        logger: Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Any = None,
        maxKeys: int = 256,
        burst: int = 1,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self.maxKeys = maxKeys
        self.burst = max(1, burst)
        # key -> [start of the interval, events let through in it, events
        # held back since the last one let through]
        self._seen: dict[Hashable, list[float]] = {}

    def _now(self) -> float:
        return float(resolveReactor(self._clock).seconds())

    def emit(self, level: LogLevel, key: Hashable, format: str, **kwargs: Any) -> bool:  # noqa: A002 - Twisted's name
        """Log ``format`` at ``level`` unless ``key`` was already logged
        ``burst`` times in its current interval of ``interval`` seconds.

        When events were held back since the last one let through, the line
        ends with how many (``kwargs`` gains ``suppressed``).

        :param level: the :class:`~twisted.logger.LogLevel`.
        :param key: what identifies the problem.
        :param format: a :mod:`twisted.logger` format string.
        :param kwargs: its fields.
        :return: whether the event was logged.
        """
        now = self._now()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            if entry[1] >= self.burst:
                entry[2] += 1
                return False
            entry[1] += 1
            suppressed = 0
        else:
            suppressed = int(entry[2]) if entry is not None else 0
            self._seen.pop(key, None)
            self._seen[key] = [now, 1, 0]
            while len(self._seen) > self.maxKeys:
                del self._seen[next(iter(self._seen))]
        if suppressed:
            format += " ({suppressed} more like this in the last {interval:.0f} s)"
            kwargs.update(suppressed=suppressed, interval=self.interval)
        self.logger.emit(level, format, **kwargs)
        return True

    def warn(self, key: Hashable, format: str, **kwargs: Any) -> bool:  # noqa: A002
        """:meth:`emit` at warning level.

        :param key: what identifies the problem.
        :param format: a :mod:`twisted.logger` format string.
        :param kwargs: its fields.
        :return: whether the event was logged.
        """
        return self.emit(LogLevel.warn, key, format, **kwargs)

    def info(self, key: Hashable, format: str, **kwargs: Any) -> bool:  # noqa: A002
        """:meth:`emit` at info level.

        :param key: what identifies the problem.
        :param format: a :mod:`twisted.logger` format string.
        :param kwargs: its fields.
        :return: whether the event was logged.
        """
        return self.emit(LogLevel.info, key, format, **kwargs)

    def forget(self, key: Hashable) -> None:
        """Forget ``key``: the problem is over, so its next occurrence is
        logged at once.

        :param key: what identifies the problem.
        """
        self._seen.pop(key, None)
