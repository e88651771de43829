"""Fixtures shared by the whole test suite.

The real reactor runs in a background thread through crochet for the whole
test process, as it does in a region process. Tests that need it take the
``reactor_thread`` fixture, which also checks that the test leaves no delayed
calls or open sockets behind.
"""

from __future__ import annotations

import crochet
import pytest


@crochet.wait_for(timeout=10)
def _reactor_state() -> tuple[frozenset[object], frozenset[object], frozenset[object]]:
    from twisted.internet import reactor

    return (
        # Compared by what they run: a LoopingCall (crochet's process reaper)
        # makes a new DelayedCall on every tick.
        frozenset(call.func for call in reactor.getDelayedCalls() if call.active()),
        frozenset(reactor.getReaders()),
        frozenset(reactor.getWriters()),
    )


@pytest.fixture
def logged():
    """Capture the log events a test emits (see ``LoggedEvents.lines``)."""
    from provisioningserver.rpc.testing import capturedLogs

    with capturedLogs() as events:
        yield events


@pytest.fixture(scope="session", autouse=True)
def _crochet() -> None:
    # Always on, as in a region process, so that whether a test's thread is
    # "the reactor thread" never depends on which tests ran before it.
    crochet.setup()


@pytest.fixture
def reactor_thread(_crochet: None):
    """Run the real reactor (in crochet's thread) and check the test cleans up.

    :return: the reactor.
    """
    from twisted.internet import reactor

    calls_before, readers_before, writers_before = _reactor_state()
    yield reactor
    calls_after, readers_after, writers_after = _reactor_state()
    left_calls = calls_after - calls_before
    left_readers = readers_after - readers_before
    left_writers = writers_after - writers_before
    assert not left_calls, f"test left delayed calls behind: {left_calls}"
    assert not left_readers, f"test left sockets open: {left_readers}"
    assert not left_writers, f"test left sockets open: {left_writers}"
