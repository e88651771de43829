"""Open-file limits: as many descriptors as the system allows this process.

A region event-loop holds a descriptor per cluster connection, per HTTP
request, per connection still in its handshake; a cluster one per region
event-loop. The soft ``RLIMIT_NOFILE`` that many systems start processes
with (1,024) is reached by a few hundred clusters, or by anyone opening that
many idle connections, and then nothing new can connect at all. The hard
limit is what the administrator allows; :func:`raiseOpenFileLimit` raises
the soft limit to it once, at start-up, and says what it did.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.logger import Logger

__all__ = ["UNLIMITED_CAP", "raiseOpenFileLimit"]

log = Logger()

#: The soft limit used when the hard limit is unlimited (Linux refuses an
#: unlimited soft ``RLIMIT_NOFILE``; this is its default ``fs.nr_open``).
UNLIMITED_CAP = 1 << 20


def raiseOpenFileLimit(
    rlimits: Any = resource, logger: Logger = log
) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit, and log one line.

    :param rlimits: what provides ``getrlimit``, ``setrlimit``,
        ``RLIMIT_NOFILE`` and ``RLIM_INFINITY``: the :mod:`resource` module
        (a test passes a fake).
    :param logger: where to log the line.
    :return: the soft limit before and after.
    """
    soft, hard = rlimits.getrlimit(rlimits.RLIMIT_NOFILE)
    target = UNLIMITED_CAP if hard == rlimits.RLIM_INFINITY else hard
    if soft != rlimits.RLIM_INFINITY and soft < target:
        try:
            rlimits.setrlimit(rlimits.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            logger.warn(
                "Could not raise the open file limit from {soft} to {target}: "
                "{error}; this process can hold about {soft} connections.",
                soft=soft,
                target=target,
                error=error,
            )
            return soft, soft
        logger.info(
            "Raised the open file limit (RLIMIT_NOFILE) from {soft} to {target}.",
            soft=soft,
            target=target,
        )
        return soft, target
    logger.info(
        "Open file limit (RLIMIT_NOFILE): {soft} (the hard limit).",
        soft="unlimited" if soft == rlimits.RLIM_INFINITY else soft,
    )
    return soft, soft
