"""Freezing the start-up heap, in fresh Python processes (freezing is
process-wide, so never in the test runner's own)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(program: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_frozen_objects_leave_the_collected_generations():
    out = run(
        """
        import gc
        from provisioningserver.utils.heap import freezeStartupHeap

        kept = [[]]
        kept.append(kept)  # A cycle, alive.
        assert any(o is kept for o in gc.get_objects())
        count = freezeStartupHeap()
        assert count == gc.get_freeze_count() > 1000, count
        assert not any(o is kept for o in gc.get_objects())
        later = [[]]
        assert any(o is later for o in gc.get_objects())
        print(count)
        """
    )
    print(f"objects frozen after importing the module: {out.strip()}")


def test_run_service_freezes_once_the_service_is_ready():
    out = run(
        """
        import gc, sys
        from twisted.application.service import MultiService
        from twisted.internet import defer, reactor
        from provisioningserver.cli import runService

        ready = defer.Deferred()

        def fire():
            before = gc.get_freeze_count()
            ready.callback(None)
            print(before, gc.get_freeze_count(), flush=True)
            reactor.stop()

        reactor.callWhenRunning(reactor.callLater, 0, fire)
        sys.exit(runService(MultiService, name="heap-test", ready=lambda: ready))
        """
    )
    before, after = (int(n) for n in out.split())
    print(f"frozen before ready: {before}, after: {after}")
    assert before == 0
    assert after > 1000
