"""Tests for :mod:`provisioningserver.utils.fds`."""

from __future__ import annotations

import resource
import subprocess
import sys

from twisted.logger import Logger

from provisioningserver.utils.fds import UNLIMITED_CAP, raiseOpenFileLimit


class FakeLimits:
    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft, hard, refuse=False):
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


def test_raises_the_soft_limit_to_the_hard_limit(logged):
    fake = FakeLimits(1024, 524288)
    assert raiseOpenFileLimit(fake, Logger()) == (1024, 524288)
    assert fake.limits == (524288, 524288)
    assert logged.lines(
        "Raised the open file limit (RLIMIT_NOFILE) from 1024 to 524288"
    )


def test_an_unlimited_hard_limit_is_capped():
    fake = FakeLimits(1024, resource.RLIM_INFINITY)
    assert raiseOpenFileLimit(fake, Logger()) == (1024, UNLIMITED_CAP)


def test_nothing_to_raise(logged):
    fake = FakeLimits(4096, 4096)
    assert raiseOpenFileLimit(fake, Logger()) == (4096, 4096)
    assert logged.lines("Open file limit (RLIMIT_NOFILE): 4096 (the hard limit)")


def test_refused(logged):
    fake = FakeLimits(1024, 4096, refuse=True)
    assert raiseOpenFileLimit(fake, Logger()) == (1024, 1024)
    assert logged.lines("Could not raise the open file limit from 1024 to 4096")


def test_for_real_in_a_child_with_a_low_soft_limit():
    code = (
        "import resource;"
        "from provisioningserver.utils.fds import raiseOpenFileLimit;"
        "print(*raiseOpenFileLimit());"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lower,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    target = UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    assert out == ["256", str(target), str(target), str(hard)]
