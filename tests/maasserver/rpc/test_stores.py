"""Tests for :mod:`maasserver.rpc.stores`."""

from __future__ import annotations

import os
import selectors
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import crochet
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import maasserver
from maasserver.rpc.stores import (
    IAdvertisementStore,
    MemoryAdvertisementStore,
    SQLiteAdvertisementStore,
)

_case = SynchronousTestCase()
successResultOf = _case.successResultOf
failureResultOf = _case.failureResultOf

NAME_A = "region-a:pid=101"
NAME_B = "region-b:pid=202"


@crochet.wait_for(timeout=10)
def _inReactor(operation: Callable[..., Any], *args: Any) -> Any:
    """Call ``operation`` in the reactor; wait for its Deferred's result."""
    return operation(*args)


class MemoryHarness:
    """A :class:`MemoryAdvertisementStore` on a :class:`Clock`."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.store = MemoryAdvertisementStore(self.clock)

    def run(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Call ``operation``; return its result or raise its exception.

        The Deferred must have fired already.
        """
        results: list[Any] = []
        operation(*args).addBoth(results.append)
        assert results, f"{operation.__name__} returned an unfired Deferred"
        [result] = results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def age(self, seconds: float) -> None:
        """Make every record ``seconds`` older."""
        self.clock.advance(seconds)


class SQLiteHarness:
    """A :class:`SQLiteAdvertisementStore` run by the real reactor."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.store = SQLiteAdvertisementStore(path)

    def run(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Call ``operation`` in the reactor; return its result or raise."""
        return _inReactor(operation, *args)

    def age(self, seconds: float) -> None:
        """Make every record ``seconds`` older, by back-dating it."""
        with _connect(self.path) as connection:
            connection.execute(
                "UPDATE eventloops SET updated = updated - ?", (seconds,)
            )


def _connect(path: str) -> sqlite3.Connection:
    # Used as a context manager: commits on success.
    return sqlite3.connect(path, timeout=10)


@pytest.fixture(params=["memory", "sqlite"])
def harness(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryHarness()
    else:
        request.getfixturevalue("reactor_thread")
        yield SQLiteHarness(str(tmp_path / "rpc" / "eventloops.db"))


# Behaviour every store shares.


def test_provides_interface(harness: Any) -> None:
    assert verifyObject(IAdvertisementStore, harness.store)


def test_empty(harness: Any) -> None:
    assert harness.run(harness.store.eventloops) == {}


def test_advertise_then_eventloops(harness: Any) -> None:
    store = harness.store
    endpoints = [("192.168.1.5", 5251), ("10.0.0.2", 5250), ("192.168.1.5", 5250)]
    assert harness.run(store.advertise, NAME_A, endpoints) is None
    assert harness.run(store.advertise, NAME_B, [("127.0.0.1", 5252)]) is None
    assert harness.run(store.eventloops) == {
        NAME_A: [("10.0.0.2", 5250), ("192.168.1.5", 5250), ("192.168.1.5", 5251)],
        NAME_B: [("127.0.0.1", 5252)],
    }


def test_endpoints_are_sorted_by_address_then_port(harness: Any) -> None:
    store = harness.store
    endpoints = [("::1", 1), ("10.0.0.10", 2), ("10.0.0.2", 5), ("10.0.0.2", 3)]
    harness.run(store.advertise, NAME_A, endpoints)
    [listed] = harness.run(store.eventloops).values()
    assert listed == [("10.0.0.10", 2), ("10.0.0.2", 3), ("10.0.0.2", 5), ("::1", 1)]
    assert all(type(port) is int for _, port in listed)


def test_advertise_ignores_duplicates(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)] * 3)
    assert harness.run(store.eventloops) == {NAME_A: [("10.0.0.1", 5250)]}


def test_advertise_again_replaces_endpoints(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250), ("10.0.0.2", 5250)])
    harness.run(store.advertise, NAME_B, [("10.0.0.3", 5250)])
    harness.run(store.advertise, NAME_A, [("10.0.0.2", 5250), ("10.0.0.4", 5251)])
    assert harness.run(store.eventloops) == {
        NAME_A: [("10.0.0.2", 5250), ("10.0.0.4", 5251)],
        NAME_B: [("10.0.0.3", 5250)],
    }


def test_advertise_nothing_withdraws(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)])
    harness.run(store.advertise, NAME_A, [])
    assert harness.run(store.eventloops) == {}


def test_withdraw(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250), ("10.0.0.2", 5250)])
    harness.run(store.advertise, NAME_B, [("10.0.0.1", 5251)])
    assert harness.run(store.withdraw, NAME_A) is None
    assert harness.run(store.eventloops) == {NAME_B: [("10.0.0.1", 5251)]}


def test_withdraw_unknown_name(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)])
    assert harness.run(store.withdraw, NAME_B) is None
    assert harness.run(store.eventloops) == {NAME_A: [("10.0.0.1", 5250)]}


def test_same_endpoint_under_new_name_replaces_old_record(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250), ("10.0.0.2", 5250)])
    harness.run(store.advertise, "old:pid=1", [("10.0.0.1", 5251)])
    # A restarted process: a new pid at the same address and port.
    harness.run(store.advertise, NAME_B, [("10.0.0.1", 5250), ("10.0.0.1", 5251)])
    assert harness.run(store.eventloops) == {
        NAME_A: [("10.0.0.2", 5250)],
        NAME_B: [("10.0.0.1", 5250), ("10.0.0.1", 5251)],
    }


def test_same_address_other_port_is_another_record(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)])
    harness.run(store.advertise, NAME_B, [("10.0.0.1", 5251)])
    assert harness.run(store.eventloops) == {
        NAME_A: [("10.0.0.1", 5250)],
        NAME_B: [("10.0.0.1", 5251)],
    }


def test_expire_deletes_only_stale_records(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250), ("10.0.0.2", 5250)])
    harness.run(store.advertise, "stale:pid=3", [("10.0.0.3", 5250)])
    harness.age(100)
    harness.run(store.advertise, NAME_B, [("10.0.0.4", 5250)])
    assert harness.run(store.expire, 50) == 3
    assert harness.run(store.eventloops) == {NAME_B: [("10.0.0.4", 5250)]}
    assert harness.run(store.expire, 50) == 0


def test_expire_keeps_fresh_records(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)])
    harness.age(10)
    assert harness.run(store.expire, 3600) == 0
    assert harness.run(store.eventloops) == {NAME_A: [("10.0.0.1", 5250)]}


def test_advertise_again_refreshes(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)])
    harness.run(store.advertise, NAME_B, [("10.0.0.2", 5250)])
    harness.age(100)
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)])
    assert harness.run(store.expire, 50) == 1
    assert harness.run(store.eventloops) == {NAME_A: [("10.0.0.1", 5250)]}


@pytest.mark.parametrize(
    ("name", "endpoints", "error"),
    [
        (b"bytes:pid=1", [("10.0.0.1", 5250)], TypeError),
        (NAME_B, [(b"10.0.0.1", 5250)], TypeError),
        (NAME_B, [("10.0.0.1", "5250")], TypeError),
        (NAME_B, [("10.0.0.1", True)], TypeError),
        (NAME_B, [("10.0.0.1", 0)], ValueError),
        (NAME_B, [("10.0.0.1", 65536)], ValueError),
        (NAME_B, [("10.0.0.2", 5250), ("10.0.0.1", 5250, "x")], ValueError),
    ],
)
def test_advertise_refuses_bad_input(
    harness: Any, name: Any, endpoints: Any, error: type[Exception]
) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_B, [("10.0.0.1", 5250)])
    with pytest.raises(error):
        harness.run(store.advertise, name, endpoints)
    # Nothing changed: not even the records of the name given.
    assert harness.run(store.eventloops) == {NAME_B: [("10.0.0.1", 5250)]}


def test_withdraw_refuses_bad_name(harness: Any) -> None:
    with pytest.raises(TypeError):
        harness.run(harness.store.withdraw, None)


@pytest.mark.parametrize("max_age", [-1, float("nan"), "60", None])
def test_expire_refuses_bad_max_age(harness: Any, max_age: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)])
    with pytest.raises(ValueError):
        harness.run(store.expire, max_age)
    assert harness.run(store.eventloops) == {NAME_A: [("10.0.0.1", 5250)]}


# MemoryAdvertisementStore.


def test_memory_expire_keeps_a_record_exactly_max_age_old() -> None:
    clock = Clock()
    store = MemoryAdvertisementStore(clock)
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    clock.advance(30)
    assert successResultOf(store.expire(30)) == 0
    clock.advance(0.001)
    assert successResultOf(store.expire(30)) == 1
    assert successResultOf(store.eventloops()) == {}


def test_memory_uses_global_reactor_without_clock() -> None:
    from twisted.internet import reactor

    store = MemoryAdvertisementStore()
    assert store.clock is None
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    # Stamped with the reactor's time, which is the wall clock: a day's
    # margin is still nowhere near 0, which is what a Clock would stamp.
    cutoff = reactor.seconds() - 86400
    assert successResultOf(store.expire(cutoff)) == 0
    assert successResultOf(store.expire(0.0)) in (0, 1)
    assert successResultOf(store.expire(86400 * 365 * 100)) == 0


def test_memory_returns_a_copy() -> None:
    store = MemoryAdvertisementStore(Clock())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    successResultOf(store.eventloops())[NAME_A].append(("10.0.0.9", 1))
    assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}


# SQLiteAdvertisementStore.


class SynchronousThreadPool:
    """Runs what it is given at once, in the caller's thread; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], func: Callable[..., Any], *a: Any
    ) -> None:
        self.calls += 1
        try:
            result = func(*a)
        except Exception:
            onResult(False, Failure())
        else:
            onResult(True, result)


class FakeReactor:
    """Just enough of a reactor for ``deferToThreadPool``."""

    def __init__(self) -> None:
        self.pool = SynchronousThreadPool()

    def getThreadPool(self) -> SynchronousThreadPool:
        return self.pool

    def callFromThread(self, func: Callable[..., Any], *args: Any) -> None:
        func(*args)


def test_sqlite_runs_operations_in_the_given_reactors_thread_pool(
    tmp_path: Any,
) -> None:
    reactor = FakeReactor()
    store = SQLiteAdvertisementStore(str(tmp_path / "db"), reactor=reactor)
    assert store.reactor is reactor
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}
    assert successResultOf(store.expire(3600)) == 0
    successResultOf(store.withdraw(NAME_A))
    assert reactor.pool.calls == 4


def test_sqlite_touches_nothing_until_used(tmp_path: Any) -> None:
    reactor = FakeReactor()
    path = tmp_path / "a" / "b" / "eventloops.db"
    store = SQLiteAdvertisementStore(str(path), reactor=reactor)
    assert not (tmp_path / "a").exists()
    assert reactor.pool.calls == 0
    # Reading a new store creates the file, but no table.
    assert successResultOf(store.eventloops()) == {}
    assert path.is_file()
    with _connect(str(path)) as connection:
        [(tables,)] = connection.execute("SELECT count(*) FROM sqlite_master")
    assert tables == 0


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Any) -> None:
    path = tmp_path / "rpc" / "eventloops.db"
    store = SQLiteAdvertisementStore(path, reactor=FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with _connect(str(path)) as connection:
        [(mode,)] = connection.execute("PRAGMA journal_mode")
    assert mode == "wal"


def test_sqlite_keeps_an_existing_files_mode(tmp_path: Any) -> None:
    path = tmp_path / "eventloops.db"
    path.touch(mode=0o640)
    os.chmod(path, 0o640)
    store = SQLiteAdvertisementStore(path, reactor=FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_sqlite_stamps_with_the_database_clock(tmp_path: Any) -> None:
    path = str(tmp_path / "eventloops.db")
    store = SQLiteAdvertisementStore(path, reactor=FakeReactor())
    before = time.time()
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    after = time.time()
    with _connect(path) as connection:
        [(updated,)] = connection.execute("SELECT updated FROM eventloops")
    # The database's clock is the host's; the millisecond resolution of
    # julianday() and rounding allow a little slack.
    assert before - 0.01 <= updated <= after + 0.01


def test_sqlite_refresh_moves_the_stamp(tmp_path: Any) -> None:
    path = str(tmp_path / "eventloops.db")
    store = SQLiteAdvertisementStore(path, reactor=FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    with _connect(path) as connection:
        connection.execute("UPDATE eventloops SET updated = updated - 1000")
        [(old,)] = connection.execute("SELECT updated FROM eventloops")
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    with _connect(path) as connection:
        [(new,)] = connection.execute("SELECT updated FROM eventloops")
    assert new >= old + 999


def test_sqlite_one_name_per_address_and_port(tmp_path: Any) -> None:
    path = str(tmp_path / "eventloops.db")
    store = SQLiteAdvertisementStore(path, reactor=FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    with _connect(path) as connection, pytest.raises(sqlite3.IntegrityError):
        connection.execute(
            "INSERT INTO eventloops (name, address, port, updated)"
            " VALUES (?, '10.0.0.1', 5250, 0)",
            (NAME_B,),
        )


def test_sqlite_reports_errors(tmp_path: Any) -> None:
    # The path is a directory: no database can be made there.
    store = SQLiteAdvertisementStore(tmp_path, reactor=FakeReactor())
    failureResultOf(store.eventloops(), OSError, sqlite3.Error)
    failureResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))


def test_sqlite_rolls_back_a_failed_write(tmp_path: Any) -> None:
    path = str(tmp_path / "eventloops.db")
    store = SQLiteAdvertisementStore(path, reactor=FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    with _connect(path) as connection:
        # Make inserting fail after the deletions have run.
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON eventloops"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    failureResultOf(store.advertise(NAME_A, [("10.0.0.2", 5250)]), sqlite3.Error)
    assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}


def test_sqlite_two_stores_share_the_file(reactor_thread: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "eventloops.db")
    one = SQLiteAdvertisementStore(path)
    two = SQLiteAdvertisementStore(path)
    _inReactor(one.advertise, NAME_A, [("10.0.0.1", 5250)])
    _inReactor(two.advertise, NAME_B, [("10.0.0.1", 5250)])
    assert _inReactor(one.eventloops) == {NAME_B: [("10.0.0.1", 5250)]}


def test_sqlite_concurrent_operations_in_one_process(
    reactor_thread: Any, tmp_path: Any
) -> None:
    store = SQLiteAdvertisementStore(str(tmp_path / "new" / "eventloops.db"))
    count = 16

    def advertiseAll() -> defer.Deferred[Any]:
        return defer.gatherResults(
            [
                store.advertise(f"region:pid={n}", [("127.0.0.1", 5000 + n)])
                for n in range(count)
            ],
            consumeErrors=True,
        )

    _inReactor(advertiseAll)
    assert _inReactor(store.eventloops) == {
        f"region:pid={n}": [("127.0.0.1", 5000 + n)] for n in range(count)
    }


# A process that advertises one name in each of several new stores, all at
# once, when told to go.
ADVERTISER = """
import sys
from twisted.internet import defer, task, threads
from maasserver.rpc.stores import SQLiteAdvertisementStore

name, port, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
stores = [SQLiteAdvertisementStore(path) for path in paths]

def advertise(_):
    return defer.gatherResults(
        [store.advertise(name, [("127.0.0.1", port)]) for store in stores],
        consumeErrors=True,
    )

def main(reactor):
    print("ready", flush=True)
    return threads.deferToThread(sys.stdin.readline).addCallback(advertise)

task.react(main)
"""


def _readline(process: subprocess.Popen[bytes], deadline: float) -> bytes:
    """Read a line of ``process``'s output, waiting until ``deadline`` at most."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(max(0.0, deadline - time.monotonic())):
            raise AssertionError("no output from the advertising process in time")
    return process.stdout.readline()


def test_sqlite_processes_create_the_store_at_once(
    reactor_thread: Any, tmp_path: Any
) -> None:
    # Each of several processes creates its own store object on each of
    # several new files, and advertises at the same time as the others: many
    # chances for creators to collide.
    count = 8
    paths = [str(tmp_path / f"new{n}" / "eventloops.db") for n in range(8)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(maasserver.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    processes = []
    started = time.monotonic()
    try:
        for n in range(count):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", ADVERTISER, f"host:pid={n}", str(5250 + n)]
                    + paths,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            )
        # Wait until every process is ready, then set them all going.
        deadline = time.monotonic() + 30
        for process in processes:
            assert _readline(process, deadline) == b"ready\n"
        assert not any(os.path.exists(path) for path in paths)
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        for process in processes:
            _, err = process.communicate(timeout=30)
            assert process.returncode == 0, err.decode(errors="replace")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    print(f"{count} processes took {time.monotonic() - started:.2f}s")
    expected = {f"host:pid={n}": [("127.0.0.1", 5250 + n)] for n in range(count)}
    for path in paths:
        assert _inReactor(SQLiteAdvertisementStore(path).eventloops) == expected
