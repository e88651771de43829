"""Where region event-loops advertise their RPC endpoints.

Each region event-loop process records the addresses and ports its RPC server
listens on in a store that every event-loop process of the region shares, and
refreshes that record periodically. Any event-loop can then tell a cluster
where all of them are (``GET /MAAS/rpc/``), and stale records of processes
that died without withdrawing are expired.

* :class:`IAdvertisementStore` is the interface every store provides.
* :class:`MemoryAdvertisementStore` keeps records in memory, on an injected
  clock: for deterministic tests of the services that use a store.
* :class:`SQLiteAdvertisementStore` keeps records in an SQLite file that the
  event-loop processes on one host share.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Interface, implementer

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "IAdvertisementStore",
    "MemoryAdvertisementStore",
    "SQLiteAdvertisementStore",
]

_T = TypeVar("_T")

log = Logger()

#: An address and port that an RPC server listens on.
Endpoint = tuple[str, int]

#: Seconds an :class:`SQLiteAdvertisementStore` operation waits for another
#: process's write transaction to finish before failing.
DEFAULT_BUSY_TIMEOUT = 10.0


class IAdvertisementStore(Interface):
    """Records of where region event-loops' RPC servers listen.

    A record is an event-loop name, an address and a port, stamped with the
    store's time when it was last advertised. An (address, port) pair belongs
    to one event-loop at a time.

    Every method returns a :class:`~twisted.internet.defer.Deferred`; call
    them in the reactor thread.
    """

    def advertise(name, endpoints):  # noqa: N805
        """Record that event-loop ``name`` listens at ``endpoints``, now.

        All earlier records of ``name`` are replaced, so advertising again
        refreshes the time stamp and drops endpoints no longer given.
        Records of *other* names at any of the same (address, port) pairs are
        deleted: an event-loop restarted at the same address and port
        replaces the stale record of its predecessor.

        :param name: the event-loop's name, ``<hostname>:pid=<pid>``.
        :param endpoints: an iterable of ``(address, port)`` pairs, the
            address a :class:`str` and the port an :class:`int` in 1–65535;
            duplicates are ignored, and an empty iterable withdraws ``name``.
        :return: a Deferred that fires with ``None`` once recorded, or fails
            with :exc:`TypeError` or :exc:`ValueError` when ``name`` or
            ``endpoints`` are not as described.
        """

    def withdraw(name):  # noqa: N805
        """Delete every record of event-loop ``name``.

        :param name: the event-loop's name.
        :return: a Deferred that fires with ``None`` once deleted (also when
            there was nothing to delete), or fails with :exc:`TypeError` when
            ``name`` is not a :class:`str`.
        """

    def expire(max_age):  # noqa: N805
        """Delete the records not advertised in the last ``max_age`` seconds.

        Age is measured by the store's clock. A record exactly ``max_age``
        seconds old is kept.

        :param max_age: the age in seconds (a non-negative number) beyond
            which a record is stale.
        :return: a Deferred that fires with the number of records deleted, or
            fails with :exc:`ValueError` when ``max_age`` is negative or not a
            number.
        """

    def eventloops():
        """Tell which event-loops are advertised, and where.

        :return: a Deferred that fires with a dict mapping each event-loop
            name to a list of its ``(address, port)`` tuples, sorted by
            address then port.
        """


def _checkName(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be str, not {type(name).__name__}")
    return name


def _checkEndpoints(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """Validate ``endpoints``; return them deduplicated and sorted."""
    checked = set()
    for endpoint in endpoints:
        address, port = endpoint
        if not isinstance(address, str):
            raise TypeError(f"address must be str, not {type(address).__name__}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be int, not {type(port).__name__}")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1-65535, not {port}")
        checked.add((address, port))
    return sorted(checked)


def _checkMaxAge(max_age: object) -> float:
    if isinstance(max_age, bool) or not isinstance(max_age, int | float):
        raise ValueError(f"max_age must be a number, not {max_age!r}")
    if not max_age >= 0:  # Also refuses NaN.
        raise ValueError(f"max_age must not be negative, not {max_age!r}")
    return float(max_age)


def _isBusy(error: sqlite3.Error) -> bool:
    """Tell whether ``error`` means another connection holds a lock."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


def _group(rows: Iterable[tuple[str, str, int]]) -> dict[str, list[Endpoint]]:
    """Group ``(name, address, port)`` rows by name, in a stable order."""
    groups: dict[str, list[Endpoint]] = {}
    for name, address, port in sorted(rows):
        groups.setdefault(name, []).append((address, port))
    return groups


@implementer(IAdvertisementStore)
class MemoryAdvertisementStore:
    """An :class:`IAdvertisementStore` in memory, for tests.

    Every method returns a Deferred that has already fired.

    :param clock: what tells the time, through ``seconds()``: a
        :class:`twisted.internet.task.Clock` in tests; the global reactor when
        ``None``.
    :ivar clock: the ``clock`` given (``None`` when none was).
    """

    def __init__(self, clock: Any = None) -> None:
        self.clock = clock
        # (address, port) -> (name, time advertised).
        self._records: dict[Endpoint, tuple[str, float]] = {}

    def _now(self) -> float:
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        return float(clock.seconds())

    def advertise(self, name: str, endpoints: Iterable[Endpoint]) -> Deferred[None]:
        """See :meth:`IAdvertisementStore.advertise`.

        :param name: the event-loop's name.
        :param endpoints: its ``(address, port)`` pairs.
        :return: a fired Deferred.
        """
        try:
            name = _checkName(name)
            checked = _checkEndpoints(endpoints)
        except (TypeError, ValueError):
            return defer.fail()
        now = self._now()
        self._withdraw(name)
        for endpoint in checked:
            self._records[endpoint] = (name, now)
        return defer.succeed(None)

    def withdraw(self, name: str) -> Deferred[None]:
        """See :meth:`IAdvertisementStore.withdraw`.

        :param name: the event-loop's name.
        :return: a fired Deferred.
        """
        try:
            name = _checkName(name)
        except TypeError:
            return defer.fail()
        self._withdraw(name)
        return defer.succeed(None)

    def _withdraw(self, name: str) -> None:
        for endpoint, (owner, _) in list(self._records.items()):
            if owner == name:
                del self._records[endpoint]

    def expire(self, max_age: float) -> Deferred[int]:
        """See :meth:`IAdvertisementStore.expire`.

        :param max_age: the age in seconds beyond which a record is stale.
        :return: a fired Deferred.
        """
        try:
            max_age = _checkMaxAge(max_age)
        except ValueError:
            return defer.fail()
        cutoff = self._now() - max_age
        stale = [
            endpoint
            for endpoint, (_, updated) in self._records.items()
            if updated < cutoff
        ]
        for endpoint in stale:
            del self._records[endpoint]
        return defer.succeed(len(stale))

    def eventloops(self) -> Deferred[dict[str, list[Endpoint]]]:
        """See :meth:`IAdvertisementStore.eventloops`.

        :return: a fired Deferred.
        """
        rows = [
            (name, address, port)
            for (address, port), (name, _) in self._records.items()
        ]
        return defer.succeed(_group(rows))


def _nowSQL() -> str:
    """An SQL expression for the database's time, in seconds since the epoch.

    ``unixepoch('subsec')`` exists from SQLite 3.42; before that, the same
    (to the millisecond) comes from ``julianday``.
    """
    if sqlite3.sqlite_version_info >= (3, 42, 0):
        return "unixepoch('subsec')"
    return "(julianday('now') - 2440587.5) * 86400.0"


_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS eventloops (
        name TEXT NOT NULL,
        address TEXT NOT NULL,
        port INTEGER NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (name, address, port)
    )
    """,
    """
    CREATE UNIQUE INDEX IF NOT EXISTS eventloops_address_port
    ON eventloops (address, port)
    """,
)


@implementer(IAdvertisementStore)
class SQLiteAdvertisementStore:
    """An :class:`IAdvertisementStore` in an SQLite file.

    Several processes on one host may use the same file at once. Each
    operation runs in the reactor's thread pool, on a connection of its own,
    in one transaction; writers take the database's write lock at the start
    of theirs (``BEGIN IMMEDIATE``) and wait up to ``timeout`` seconds for
    it. The database is in WAL mode, so readers never wait for writers.

    Time stamps come from the database's clock (the host's), so every
    process sharing the file agrees on them.

    Nothing touches the file system until the first operation. That one
    creates the parent directory and the file (mode 0600) if missing, and
    puts the database in WAL mode; each write creates the table and its index
    if missing, inside its transaction. Any number of processes may start on
    a new file at once.

    :param path: the database file's path.
    :param reactor: the reactor whose thread pool runs the operations; the
        global reactor when ``None``.
    :param timeout: seconds to wait for another process's write transaction
        before an operation fails with :exc:`sqlite3.OperationalError`.
    :ivar path: the database file's path, as given.
    :ivar reactor: the ``reactor`` given (``None`` when none was).
    :ivar timeout: the ``timeout`` given.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reactor: Any = None,
        timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self.path = path
        self.reactor = reactor
        self.timeout = timeout
        self._now = _nowSQL()
        self._ready = False
        self._readyLock = threading.Lock()

    def _defer(self, func: Callable[..., _T], *args: Any) -> Deferred[_T]:
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), func, *args)

    # Everything below until the public methods runs in a pool thread.

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)

    def _prepare(self) -> None:
        """Create the directory and file, in WAL mode, once, when missing."""
        with self._readyLock:
            if self._ready:
                return
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            # Create the file before SQLite does, to choose its mode; SQLite
            # gives its -wal and -shm files the same. Without O_EXCL this is
            # harmless when another process creates it at the same time.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            with closing(self._connect()) as connection:
                self._enableWAL(connection)
            self._ready = True

    def _enableWAL(self, connection: sqlite3.Connection) -> None:
        """Put the database in WAL mode, which persists in the file.

        Two connections switching at once can deadlock on their locks, in
        which case SQLite fails one of them at once rather than calling its
        busy handler; that one tries again, for up to ``timeout`` seconds.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
            except sqlite3.OperationalError as error:
                if not _isBusy(error) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.1)
            else:
                break
        if mode.lower() != "wal":
            # Some file systems cannot share memory; the rollback journal
            # works there too, just with less concurrency.
            log.warn(
                "SQLite database {path} cannot use WAL mode; it uses {mode}.",
                path=self.path,
                mode=mode,
            )

    @staticmethod
    def _transact(
        connection: sqlite3.Connection,
        write: bool,
        work: Callable[[sqlite3.Connection], _T],
    ) -> _T:
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            if write:
                # Inside the write transaction, so creators take turns: each
                # one after the first finds the table there.
                for statement in _SCHEMA:
                    connection.execute(statement)
            result = work(connection)
        except BaseException:
            connection.rollback()
            raise
        connection.execute("COMMIT")
        return result

    def _run(self, write: bool, work: Callable[[sqlite3.Connection], _T]) -> _T:
        self._prepare()
        with closing(self._connect()) as connection:
            return self._transact(connection, write, work)

    def _advertise(self, name: str, endpoints: list[Endpoint]) -> None:
        def work(connection: sqlite3.Connection) -> None:
            (now,) = connection.execute(f"SELECT {self._now}").fetchone()
            connection.execute("DELETE FROM eventloops WHERE name = ?", (name,))
            connection.executemany(
                "DELETE FROM eventloops WHERE address = ? AND port = ?", endpoints
            )
            connection.executemany(
                "INSERT INTO eventloops (name, address, port, updated)"
                " VALUES (?, ?, ?, ?)",
                [(name, address, port, now) for address, port in endpoints],
            )

        self._run(True, work)

    def _withdraw(self, name: str) -> None:
        def work(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM eventloops WHERE name = ?", (name,))

        self._run(True, work)

    def _expire(self, max_age: float) -> int:
        def work(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(
                f"DELETE FROM eventloops WHERE updated < {self._now} - ?", (max_age,)
            )
            return cursor.rowcount

        return self._run(True, work)

    def _eventloops(self) -> dict[str, list[Endpoint]]:
        def work(connection: sqlite3.Connection) -> dict[str, list[Endpoint]]:
            created = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                ("eventloops",),
            ).fetchone()
            if created is None:
                return {}  # Nothing has been advertised here yet.
            rows = connection.execute("SELECT name, address, port FROM eventloops")
            return _group(rows.fetchall())

        return self._run(False, work)

    # The public methods, called in the reactor thread.

    def advertise(self, name: str, endpoints: Iterable[Endpoint]) -> Deferred[None]:
        """See :meth:`IAdvertisementStore.advertise`.

        :param name: the event-loop's name.
        :param endpoints: its ``(address, port)`` pairs.
        :return: a Deferred, which may also fail with
            :exc:`sqlite3.Error` or :exc:`OSError`.
        """
        try:
            name = _checkName(name)
            checked = _checkEndpoints(endpoints)
        except (TypeError, ValueError):
            return defer.fail()
        return self._defer(self._advertise, name, checked)

    def withdraw(self, name: str) -> Deferred[None]:
        """See :meth:`IAdvertisementStore.withdraw`.

        :param name: the event-loop's name.
        :return: a Deferred, which may also fail with
            :exc:`sqlite3.Error` or :exc:`OSError`.
        """
        try:
            name = _checkName(name)
        except TypeError:
            return defer.fail()
        return self._defer(self._withdraw, name)

    def expire(self, max_age: float) -> Deferred[int]:
        """See :meth:`IAdvertisementStore.expire`.

        :param max_age: the age in seconds beyond which a record is stale.
        :return: a Deferred, which may also fail with
            :exc:`sqlite3.Error` or :exc:`OSError`.
        """
        try:
            max_age = _checkMaxAge(max_age)
        except ValueError:
            return defer.fail()
        return self._defer(self._expire, max_age)

    def eventloops(self) -> Deferred[dict[str, list[Endpoint]]]:
        """See :meth:`IAdvertisementStore.eventloops`.

        :return: a Deferred, which may also fail with
            :exc:`sqlite3.Error` or :exc:`OSError`.
        """
        return self._defer(self._eventloops)
