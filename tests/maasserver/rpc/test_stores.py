"""Tests for :mod:`maasserver.rpc.stores`."""

from __future__ import annotations

import os
import selectors
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import crochet
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import maasserver
from maasserver.rpc.stores import (
    DEFAULT_POSTGRESQL_TABLE,
    IAdvertisementStore,
    MemoryAdvertisementStore,
    PostgreSQLAdvertisementStore,
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


class PostgreSQLHarness:
    """A :class:`PostgreSQLAdvertisementStore` run by the real reactor."""

    def __init__(self, database: PostgreSQLDatabase) -> None:
        self.database = database
        self.store = database.store()

    def run(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Call ``operation`` in the reactor; return its result or raise."""
        return _inReactor(operation, *args)

    def age(self, seconds: float) -> None:
        """Make every record ``seconds`` older, by back-dating it."""
        self.database.query(
            "UPDATE {table} SET updated = updated - make_interval(secs => %s)",
            (seconds,),
        )


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def harness(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryHarness()
    elif request.param == "sqlite":
        request.getfixturevalue("reactor_thread")
        yield SQLiteHarness(str(tmp_path / "rpc" / "eventloops.db"))
    else:
        request.getfixturevalue("reactor_thread")
        yield PostgreSQLHarness(request.getfixturevalue("postgresql"))


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


def test_expire_with_infinite_max_age_keeps_everything(harness: Any) -> None:
    store = harness.store
    harness.run(store.advertise, NAME_A, [("10.0.0.1", 5250)])
    harness.age(10**9)
    assert harness.run(store.expire, float("inf")) == 0
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
    # Stamped with the reactor's time, the wall clock, so less than a day
    # old; a stamp of 0, say, would be older than this and expire.
    assert successResultOf(store.expire(reactor.seconds() - 86400)) == 0
    assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}


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


def _sqliteError(code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(f"SQLite error {code}")
    error.sqlite_errorcode = code
    return error


class _SwitchingConnection:
    """A connection whose switches to WAL mode go as its store says."""

    def __init__(self, connection: sqlite3.Connection, store: SwitchingStore) -> None:
        self._connection = connection
        self._store = store

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("PRAGMA journal_mode"):
            self._store.switches += 1
            if self._store.errors:
                raise self._store.errors.pop(0)
            if self._store.mode is not None:
                return self._connection.execute("SELECT ?", (self._store.mode,))
        return self._connection.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class SwitchingStore(SQLiteAdvertisementStore):
    """A store whose switches to WAL mode fail with ``errors`` first.

    :ivar switches: how many times it tried to switch.
    :ivar pauses: how long it paused between tries, in seconds.
    """

    def __init__(
        self,
        path: str,
        errors: list[sqlite3.OperationalError],
        mode: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(path, reactor=FakeReactor(), timeout=timeout)
        self.errors = errors
        self.mode = mode
        self.switches = 0
        self.pauses: list[float] = []

    def _connect(self) -> Any:
        return _SwitchingConnection(super()._connect(), self)

    def _sleep(self, seconds: Any) -> None:
        self.pauses.append(seconds)


@pytest.mark.parametrize(
    "code", [sqlite3.SQLITE_BUSY, sqlite3.SQLITE_BUSY | (1 << 8)]
)  # SQLITE_BUSY and SQLITE_BUSY_RECOVERY.
def test_sqlite_tries_again_to_switch_to_wal(tmp_path: Any, code: int) -> None:
    path = str(tmp_path / "eventloops.db")
    store = SwitchingStore(path, [_sqliteError(code) for _ in range(4)])
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    assert store.switches == 5
    assert len(store.pauses) == 4
    assert all(0 < pause <= 0.1 for pause in store.pauses)
    with _connect(path) as connection:
        [(mode,)] = connection.execute("PRAGMA journal_mode")
    assert mode == "wal"
    # Switched once; later operations do not switch again.
    assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}
    assert store.switches == 5


def test_sqlite_gives_up_switching_to_wal(tmp_path: Any) -> None:
    errors = [_sqliteError(sqlite3.SQLITE_BUSY) for _ in range(1000)]
    store = SwitchingStore(str(tmp_path / "eventloops.db"), errors, timeout=0.5)
    failure = failureResultOf(store.eventloops(), sqlite3.OperationalError)
    assert failure.value.sqlite_errorcode == sqlite3.SQLITE_BUSY
    # Pauses grow to 0.1 s, each randomly shortened by up to half.
    assert 0.15 <= sum(store.pauses) <= 0.5
    assert store.switches == len(store.pauses) + 1 < 100
    # The next operation tries again.
    store.errors.clear()
    assert successResultOf(store.eventloops()) == {}


def test_sqlite_does_not_retry_other_errors(tmp_path: Any) -> None:
    error = _sqliteError(sqlite3.SQLITE_IOERR)
    store = SwitchingStore(str(tmp_path / "eventloops.db"), [error])
    assert failureResultOf(store.eventloops()).value is error
    assert store.switches == 1
    assert store.pauses == []


def test_sqlite_warns_when_wal_is_unavailable(tmp_path: Any) -> None:
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    store = SwitchingStore(str(tmp_path / "eventloops.db"), [], mode="delete")
    globalLogPublisher.addObserver(observer)
    try:
        successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    finally:
        globalLogPublisher.removeObserver(observer)
    [event] = [e for e in events if e.get("mode") == "delete"]
    assert event["log_level"] == LogLevel.warn
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


# A process that advertises one name on a store of its own, when told to go.
ADVERTISER = """
import sys
from twisted.internet import task, threads
from maasserver.rpc.stores import SQLiteAdvertisementStore

path, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SQLiteAdvertisementStore(path)

def main(reactor):
    print("ready", flush=True)
    going = threads.deferToThread(sys.stdin.readline)
    going.addCallback(lambda _: store.advertise(name, [("127.0.0.1", port)]))
    return going

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
    count = 8
    path = str(tmp_path / "new" / "eventloops.db")
    root = os.path.dirname(os.path.dirname(os.path.abspath(maasserver.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    processes = []
    started = time.monotonic()
    try:
        for n in range(count):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", ADVERTISER, path, f"host:pid={n}"]
                    + [str(5250 + n)],
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
        assert not os.path.exists(path)
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
    assert _inReactor(SQLiteAdvertisementStore(path).eventloops) == {
        f"host:pid={n}": [("127.0.0.1", 5250 + n)] for n in range(count)
    }


# PostgreSQLAdvertisementStore.
#
# The server comes from libpq's environment variables (PGHOST, PGPORT,
# PGUSER, PGPASSWORD, PGDATABASE; ``.ci/with-postgres`` sets them) or from
# MAAS_RPC_TEST_DATABASE_URL. Without one these tests skip, except under
# CI=true, where they fail: CI must run them. Each test works in a schema of
# its own, dropped afterwards.

_LIBPQ_VARIABLES = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")


def _testDatabaseURL() -> str | None:
    """Where the tests' PostgreSQL server is, if anywhere."""
    url = os.environ.get("MAAS_RPC_TEST_DATABASE_URL", "").strip()
    if url:
        return url
    if any(os.environ.get(name) for name in _LIBPQ_VARIABLES):
        return "postgresql://"  # libpq fills in the rest from the environment.
    return None


@pytest.fixture(scope="session")
def postgresql_url() -> str:
    """The connection string of a PostgreSQL server the tests may use.

    Skips the test when there is none, or fails it under ``CI=true``.
    """
    reason = None
    url = _testDatabaseURL()
    try:
        import psycopg
    except ImportError:
        reason = "psycopg 3 is not installed (pip install 'maas-rpc[postgresql]')"
    else:
        if url is None:
            reason = (
                "no PostgreSQL server: set libpq's PGHOST etc. or"
                " MAAS_RPC_TEST_DATABASE_URL, or run under .ci/with-postgres"
            )
        else:
            try:
                with psycopg.connect(url, connect_timeout=5):
                    pass
            except psycopg.Error as error:
                reason = f"cannot connect to PostgreSQL: {str(error).strip()}"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, but {reason}", pytrace=False)
        pytest.skip(reason)
    assert url is not None
    return url


class PostgreSQLDatabase:
    """A schema of one test's own, and the stores that use it.

    :ivar schema: the schema's name; it does not exist until a store (or the
        test) creates it.
    :ivar url: the server's connection string, naming the test's connections
        (``application_name``) after the schema.
    """

    def __init__(self, url: str) -> None:
        from psycopg.conninfo import make_conninfo

        self.schema = f"maas_rpc_test_{uuid.uuid4().hex}"
        self.url = make_conninfo(url, application_name=self.schema)
        self.stores: list[PostgreSQLAdvertisementStore] = []

    def store(self, reactor: Any = None, **kwargs: Any) -> PostgreSQLAdvertisementStore:
        """A store in this schema, closed when the test ends."""
        kwargs.setdefault("url", self.url)
        store = PostgreSQLAdvertisementStore(
            reactor=reactor, schema=self.schema, **kwargs
        )
        self.stores.append(store)
        return store

    def query(self, statement: str, params: Any = ()) -> list[Any]:
        """Run ``statement`` on a connection of its own; return its rows.

        ``{schema}`` and ``{table}`` in it name the test's schema and the
        stores' table.
        """
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(
            schema=sql.Identifier(self.schema),
            table=sql.Identifier(self.schema, DEFAULT_POSTGRESQL_TABLE),
        )
        with psycopg.connect(self.url, autocommit=True) as connection:
            cursor = connection.execute(query, params)
            return cursor.fetchall() if cursor.description is not None else []

    def exists(self) -> bool:
        """Whether the schema exists."""
        [(found,)] = self.query(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (self.schema,)
        )
        return bool(found)

    def terminate(self) -> int:
        """End the server side of every store's connection, as a restart does.

        :return: how many connections were ended.
        """
        rows = self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (self.schema,),
        )
        return len(rows)

    def drop(self) -> None:
        """Close the stores, and drop the schema and everything in it."""
        for store in self.stores:
            if store.reactor is None:
                _inReactor(store.close)
            else:
                successResultOf(store.close())
        self.query("DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def postgresql(postgresql_url: str) -> Iterator[PostgreSQLDatabase]:
    """A :class:`PostgreSQLDatabase`: a schema of the test's own."""
    database = PostgreSQLDatabase(postgresql_url)
    try:
        yield database
    finally:
        database.drop()


def test_postgresql_without_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"maas-rpc\[postgresql\]"):
        PostgreSQLAdvertisementStore("postgresql://")


def test_postgresql_is_not_imported_until_needed() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(maasserver.__file__)))
    code = (
        "import sys, maasserver.eventloop, maasserver.plugin, maasserver.rpc.stores;"
        " print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg'))"
    )
    output = subprocess.check_output(
        [sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=root)
    )
    assert output == b"[]\n"


def test_postgresql_touches_nothing_until_used(postgresql: PostgreSQLDatabase) -> None:
    reactor = FakeReactor()
    store = postgresql.store(reactor)
    assert store.reactor is reactor
    assert store.schema == postgresql.schema
    assert store.table == DEFAULT_POSTGRESQL_TABLE
    assert reactor.pool.calls == 0
    # Reading a new store creates nothing.
    assert successResultOf(store.eventloops()) == {}
    assert not postgresql.exists()
    assert successResultOf(store.expire(0)) == 0  # A write: creates.
    assert postgresql.exists()
    assert reactor.pool.calls == 2


def test_postgresql_runs_operations_in_the_given_reactors_thread_pool(
    postgresql: PostgreSQLDatabase,
) -> None:
    reactor = FakeReactor()
    store = postgresql.store(reactor)
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}
    assert successResultOf(store.expire(3600)) == 0
    successResultOf(store.withdraw(NAME_A))
    successResultOf(store.close())
    assert reactor.pool.calls == 5


def test_postgresql_table(postgresql: PostgreSQLDatabase) -> None:
    store = postgresql.store(FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    columns = postgresql.query(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (postgresql.schema, DEFAULT_POSTGRESQL_TABLE),
    )
    assert columns == [
        ("address", "text"),
        ("port", "integer"),
        ("name", "text"),
        ("updated", "timestamp with time zone"),
    ]
    # One name per address and port.
    import psycopg

    with pytest.raises(psycopg.errors.UniqueViolation):
        postgresql.query(
            "INSERT INTO {table} VALUES ('10.0.0.1', 5250, %s, now())", (NAME_B,)
        )


def test_postgresql_default_schema_and_table() -> None:
    pytest.importorskip("psycopg")
    store = PostgreSQLAdvertisementStore("postgresql:///maas", FakeReactor())
    assert (store.schema, store.table) == ("public", "maas_rpc_eventloops")
    successResultOf(store.close())  # Never connected: nothing to close.


def test_postgresql_stamps_with_the_database_clock(
    postgresql: PostgreSQLDatabase,
) -> None:
    store = postgresql.store(FakeReactor())
    [(before,)] = postgresql.query("SELECT clock_timestamp()")
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    [(after,)] = postgresql.query("SELECT clock_timestamp()")
    [(updated,)] = postgresql.query("SELECT updated FROM {table}")
    assert before <= updated <= after


def test_postgresql_expires_by_the_database_clock(
    postgresql: PostgreSQLDatabase,
) -> None:
    store = postgresql.store(FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    successResultOf(store.advertise(NAME_B, [("10.0.0.2", 5250)]))
    successResultOf(store.advertise("future:pid=3", [("10.0.0.3", 5250)]))
    # By the database's clock: A an hour old, B fresh, the third written by
    # a host whose clock runs an hour ahead.
    postgresql.query(
        "UPDATE {table} SET updated = now() - interval '1 hour' WHERE name = %s",
        (NAME_A,),
    )
    postgresql.query(
        "UPDATE {table} SET updated = now() + interval '1 hour' WHERE port = 5250"
        " AND address = '10.0.0.3'"
    )
    assert successResultOf(store.expire(3599)) == 1
    assert sorted(successResultOf(store.eventloops())) == ["future:pid=3", NAME_B]
    # Refreshed, then expired at once: B's stamp is older than the time of
    # the expiring transaction, the third's is not.
    successResultOf(store.advertise(NAME_B, [("10.0.0.2", 5250)]))
    assert successResultOf(store.expire(0)) == 1
    assert list(successResultOf(store.eventloops())) == ["future:pid=3"]


def test_postgresql_restarted_process_replaces_its_predecessor(
    postgresql: PostgreSQLDatabase,
) -> None:
    # Two processes' stores: the first died without withdrawing, the second
    # is its replacement, at the same address and port.
    old = postgresql.store(FakeReactor())
    new = postgresql.store(FakeReactor())
    successResultOf(old.advertise("host:pid=100", [("10.0.0.1", 5250)]))
    successResultOf(old.advertise("other:pid=7", [("10.0.0.2", 5250)]))
    successResultOf(new.advertise("host:pid=200", [("10.0.0.1", 5250)]))
    assert successResultOf(old.eventloops()) == {
        "host:pid=200": [("10.0.0.1", 5250)],
        "other:pid=7": [("10.0.0.2", 5250)],
    }
    assert postgresql.query("SELECT count(*) FROM {table}") == [(2,)]


def test_postgresql_concurrent_advertisers_of_one_endpoint(
    reactor_thread: Any, postgresql: PostgreSQLDatabase
) -> None:
    # Each claims the same endpoint at once, on a store (a connection) of its
    # own: all succeed, and one of them holds it.
    count = 8
    stores = [postgresql.store() for _ in range(count)]
    _inReactor(stores[0].expire, 0)  # Creates the table.

    def advertiseAll() -> defer.Deferred[Any]:
        return defer.gatherResults(
            [
                store.advertise(f"host:pid={n}", [("127.0.0.1", 5250)])
                for n, store in enumerate(stores)
            ],
            consumeErrors=True,
        )

    _inReactor(advertiseAll)
    [(name, endpoints)] = _inReactor(stores[0].eventloops).items()
    assert name in {f"host:pid={n}" for n in range(count)}
    assert endpoints == [("127.0.0.1", 5250)]


def test_postgresql_reconnects_after_losing_its_connection(
    postgresql: PostgreSQLDatabase,
) -> None:
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    store = postgresql.store(FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    # What a server restart does to every connection.
    assert postgresql.terminate() == 1
    globalLogPublisher.addObserver(observer)
    try:
        assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}
        assert postgresql.terminate() == 1
        successResultOf(store.advertise(NAME_B, [("10.0.0.2", 5250)]))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert successResultOf(store.eventloops()) == {
        NAME_A: [("10.0.0.1", 5250)],
        NAME_B: [("10.0.0.2", 5250)],
    }
    reconnects = [e for e in events if "Reconnecting" in e.get("log_format", "")]
    assert len(reconnects) == 2


def test_postgresql_reports_an_unreachable_server(
    postgresql: PostgreSQLDatabase,
) -> None:
    import socket

    import psycopg

    # A port nothing listens on.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    url = f"postgresql://maas@127.0.0.1:{port}/maas?connect_timeout=2"
    store = postgresql.store(FakeReactor(), url=url, timeout=2)
    started = time.monotonic()
    failureResultOf(store.eventloops(), psycopg.OperationalError)
    failureResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    print(f"two failed connections took {time.monotonic() - started:.2f}s")
    assert time.monotonic() - started < 10


def test_postgresql_statements_time_out(postgresql: PostgreSQLDatabase) -> None:
    import psycopg

    store = postgresql.store(FakeReactor(), timeout=0.5)
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    locked = threading.Event()
    release = threading.Event()

    def holdLock() -> None:
        with (
            psycopg.connect(postgresql.url) as connection,
            connection.transaction(),
        ):
            connection.execute(
                psycopg.sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    psycopg.sql.Identifier(postgresql.schema, DEFAULT_POSTGRESQL_TABLE)
                )
            )
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=holdLock)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        failureResultOf(store.eventloops(), psycopg.errors.QueryCanceled)
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(30)
    print(f"a statement blocked by a lock failed after {waited:.2f}s")
    assert 0.4 <= waited < 5
    # The connection survives: the next operation works on it.
    assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}


def test_postgresql_expire_passes_over_rows_a_vanished_writer_holds(
    postgresql: PostgreSQLDatabase,
) -> None:
    # A region host that loses its network in the middle of refreshing its
    # advertisement leaves its transaction open on the server, holding its
    # rows' locks. The other hosts' expiry must not wait on those rows (each
    # attempt would time out, and the dead host's rows would stay until the
    # server noticed, hours later with default keepalives); it deletes what
    # it can and the rest once the locks are released.
    import psycopg

    store = postgresql.store(FakeReactor(), timeout=2)
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    successResultOf(store.advertise(NAME_B, [("10.0.0.2", 5250)]))
    successResultOf(store.advertise("stale:pid=3", [("10.0.0.3", 5250)]))
    postgresql.query(
        "UPDATE {table} SET updated = now() - interval '1 hour' WHERE name <> %s",
        (NAME_B,),
    )
    writer = psycopg.connect(postgresql.url)
    try:
        writer.execute(
            psycopg.sql.SQL("SELECT 1 FROM {} WHERE name = %s FOR UPDATE").format(
                psycopg.sql.Identifier(postgresql.schema, DEFAULT_POSTGRESQL_TABLE)
            ),
            (NAME_A,),
        )
        # The row nobody holds goes; the held one is passed over, not waited on.
        assert successResultOf(store.expire(60)) == 1
        assert set(successResultOf(store.eventloops())) == {NAME_A, NAME_B}
    finally:
        writer.rollback()
        writer.close()
    assert successResultOf(store.expire(60)) == 1
    assert set(successResultOf(store.eventloops())) == {NAME_B}


def test_postgresql_server_ends_a_transaction_its_client_abandoned(
    postgresql: PostgreSQLDatabase,
) -> None:
    # The store's own transactions tell the server to end the session when
    # it sits idle inside one for longer than the store's timeout: a writer
    # that vanished mid-transaction (here: one that stops talking while
    # holding its row) releases its locks within the timeout, not when the
    # server's TCP keepalives give up on it.

    abandoned = postgresql.store(FakeReactor(), timeout=1)
    other = postgresql.store(FakeReactor(), timeout=1)
    successResultOf(abandoned.advertise(NAME_A, [("10.0.0.1", 5250)]))
    postgresql.query("UPDATE {table} SET updated = now() - interval '1 hour'")
    holding = threading.Event()
    release = threading.Event()
    outcome: list[BaseException | None] = []
    calls: list[int] = []

    def work(cursor: Any, created: bool) -> None:
        calls.append(1)
        cursor.execute(
            abandoned._sql("SELECT 1 FROM {table} WHERE name = %s FOR UPDATE"),
            (NAME_A,),
        )
        holding.set()
        release.wait(60)

    def run() -> None:
        try:
            abandoned._run(True, work)
        except BaseException as error:  # noqa: BLE001 - reported below
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run)
    thread.start()
    started = time.monotonic()
    try:
        assert holding.wait(10)
        deleted = 0
        deadline = time.monotonic() + 30
        while deleted == 0 and time.monotonic() < deadline:
            deleted = successResultOf(other.expire(60))
        released = time.monotonic() - started
    finally:
        release.set()
        thread.join(30)
    print(f"the abandoned transaction's row was expired after {released:.2f}s")
    assert deleted == 1
    # The server ended the abandoned session: when its client spoke again,
    # the store found the connection closed and ran the work once more, on
    # a new connection, where the row was already gone.
    assert outcome == [None]
    assert len(calls) == 2
    assert successResultOf(abandoned.eventloops()) == {}


def test_postgresql_rolls_back_a_failed_write(postgresql: PostgreSQLDatabase) -> None:
    import psycopg

    store = postgresql.store(FakeReactor())
    successResultOf(store.advertise(NAME_A, [("10.0.0.1", 5250)]))
    # Make inserting fail after the deletion has run.
    postgresql.query(
        "CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
    )
    postgresql.query(
        "CREATE TRIGGER refuse BEFORE INSERT ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION {schema}.refuse()"
    )
    failureResultOf(
        store.advertise(NAME_A, [("10.0.0.2", 5250)]), psycopg.errors.RaiseException
    )
    assert successResultOf(store.eventloops()) == {NAME_A: [("10.0.0.1", 5250)]}


# A process that advertises one name on a PostgreSQL store of its own, when
# told to go. It connects (and finds no table) before it says it is ready, so
# that all of them create the table at once.
PG_ADVERTISER = """
import os, sys
from twisted.internet import task, threads
from maasserver.rpc.stores import PostgreSQLAdvertisementStore

schema, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = PostgreSQLAdvertisementStore(os.environ["STORE_URL"], schema=schema)

def main(reactor):
    d = store.eventloops()
    d.addCallback(lambda found: print("ready" if found == {} else found, flush=True))
    d.addCallback(lambda _: threads.deferToThread(sys.stdin.readline))
    d.addCallback(lambda _: store.advertise(name, [("127.0.0.1", port)]))
    d.addBoth(lambda result: store.close().addCallback(lambda _: result))
    return d

task.react(main)
"""


def test_postgresql_processes_create_the_store_at_once(
    reactor_thread: Any, postgresql: PostgreSQLDatabase
) -> None:
    count = 8
    root = os.path.dirname(os.path.dirname(os.path.abspath(maasserver.__file__)))
    env = dict(os.environ, PYTHONPATH=root, STORE_URL=postgresql.url)
    processes = []
    started = time.monotonic()
    try:
        for n in range(count):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", PG_ADVERTISER, postgresql.schema]
                    + [f"host:pid={n}", str(5250 + n)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            )
        # Wait until every process is connected, then set them all going.
        deadline = time.monotonic() + 30
        for process in processes:
            assert _readline(process, deadline) == b"ready\n"
        assert not postgresql.exists()
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
    assert _inReactor(postgresql.store().eventloops) == {
        f"host:pid={n}": [("127.0.0.1", 5250 + n)] for n in range(count)
    }
