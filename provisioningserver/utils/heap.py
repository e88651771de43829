"""Keeping the start-up heap out of the garbage collector's way.

A region event-loop or a cluster process allocates most of its long-lived
objects while it starts: modules, Twisted's and OpenSSL's state, the
service tree. Python's cyclic garbage collector scans all of them again at
every full collection, and a full collection comes every so often when
calls allocate and free objects at a high rate. Measured with the
benchmarks (``python -m benchmarks --only P4``): such pauses made the
second-slowest of 20 ``gather()`` calls to 100 clusters (P4.100.p99)
1.6-2.2 times as slow as raw AMP, though the median was the same; with
the start-up heap frozen, about 1.0 times.

:func:`freezeStartupHeap` moves everything alive into the collector's
permanent generation (:func:`gc.freeze`), so later collections scan only
what was created since. The ``maas-rpc`` processes call it once they
serve (:func:`provisioningserver.cli.runService`). A program that runs an
event-loop in-process (:mod:`maasserver.eventloop`) decides for itself:
freezing is a choice about the whole process's memory.
"""

from __future__ import annotations

import gc

__all__ = ["freezeStartupHeap"]


def freezeStartupHeap() -> int:
    """Collect what start-up left behind, then freeze what is alive.

    Frozen objects are never collected, even when they later become
    garbage in a reference cycle; objects still alive after start-up are
    meant to live as long as the process. Calling it again freezes what was
    created since.

    :return: how many objects are frozen in all
        (:func:`gc.get_freeze_count`).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
