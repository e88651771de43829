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
* :class:`PostgreSQLAdvertisementStore` keeps records in a PostgreSQL
  database that event-loop processes on many hosts share (it needs psycopg 3:
  install ``maas-rpc[postgresql]``).
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Interface, implementer

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_POSTGRESQL_TABLE",
    "IAdvertisementStore",
    "MemoryAdvertisementStore",
    "PostgreSQLAdvertisementStore",
    "SQLiteAdvertisementStore",
    "ThreadedAdvertisementStore",
]

_T = TypeVar("_T")

log = Logger()

#: An address and port that an RPC server listens on.
Endpoint = tuple[str, int]

#: Seconds an :class:`SQLiteAdvertisementStore` operation waits for another
#: process's write transaction to finish before failing; also how long a
#: :class:`PostgreSQLAdvertisementStore` waits to connect, and for a statement.
DEFAULT_BUSY_TIMEOUT = 10.0

#: The table a :class:`PostgreSQLAdvertisementStore` keeps its records in.
DEFAULT_POSTGRESQL_TABLE = "maas_rpc_eventloops"


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


class ThreadedAdvertisementStore:
    """Base of the stores whose database calls block (SQLite, PostgreSQL).

    Arguments are checked in the reactor thread; the blocking work runs in
    the reactor's thread pool (``_advertise``, ``_withdraw``, ``_expire`` and
    ``_eventloops``, which subclasses provide). The Deferreds may also fail
    with the database's own errors.

    :ivar reactor: the reactor whose thread pool runs the work; the global
        reactor when ``None``.
    """

    reactor: Any = None

    def _defer(self, func: Callable[..., _T], *args: Any) -> Deferred[_T]:
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), func, *args)

    def _advertise(self, name: str, endpoints: list[Endpoint]) -> None:
        raise NotImplementedError

    def _withdraw(self, name: str) -> None:
        raise NotImplementedError

    def _expire(self, max_age: float) -> int:
        raise NotImplementedError

    def _eventloops(self) -> dict[str, list[Endpoint]]:
        raise NotImplementedError

    def advertise(self, name: str, endpoints: Iterable[Endpoint]) -> Deferred[None]:
        """See :meth:`IAdvertisementStore.advertise`.

        :param name: the event-loop's name.
        :param endpoints: its ``(address, port)`` pairs.
        :return: a Deferred.
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
        :return: a Deferred.
        """
        try:
            name = _checkName(name)
        except TypeError:
            return defer.fail()
        return self._defer(self._withdraw, name)

    def expire(self, max_age: float) -> Deferred[int]:
        """See :meth:`IAdvertisementStore.expire`.

        :param max_age: the age in seconds beyond which a record is stale.
        :return: a Deferred with the number of records deleted.
        """
        try:
            max_age = _checkMaxAge(max_age)
        except ValueError:
            return defer.fail()
        return self._defer(self._expire, max_age)

    def eventloops(self) -> Deferred[dict[str, list[Endpoint]]]:
        """See :meth:`IAdvertisementStore.eventloops`.

        :return: a Deferred with name -> endpoints.
        """
        return self._defer(self._eventloops)


@implementer(IAdvertisementStore)
class SQLiteAdvertisementStore(ThreadedAdvertisementStore):
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
        before an operation fails with ``sqlite3.OperationalError``.
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
        busy handler; that one tries again after a growing pause, and gives
        up rather than pause more than ``timeout`` seconds in all.
        """
        paused = 0.0
        pause = 0.001
        while True:
            try:
                (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
            except sqlite3.OperationalError as error:
                pause = min(pause * 2, 0.1)
                if not _isBusy(error) or paused + pause > self.timeout:
                    raise
                self._sleep(pause * random.uniform(0.5, 1.0))
                paused += pause
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

    # How _enableWAL pauses; tests replace it.
    _sleep = staticmethod(time.sleep)

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


#: The key of the PostgreSQL advisory lock under which every
#: :class:`PostgreSQLAdvertisementStore` creates its schema and table: the
#: ASCII of ``maas_rpc``.
_CREATE_LOCK = 0x6D6161735F727063


@implementer(IAdvertisementStore)
class PostgreSQLAdvertisementStore(ThreadedAdvertisementStore):
    """An :class:`IAdvertisementStore` in a PostgreSQL database.

    Event-loop processes on many hosts may share the database. Each
    operation runs in the reactor's thread pool, in one transaction, on a
    connection the store keeps open between operations; a lock lets one
    operation use it at a time. When the connection turns out to be broken
    (the server restarted, say), the store connects again and tries the
    operation once more, on the new connection; an operation that fails on a
    new connection fails. Nothing connects until the first operation.

    Time stamps and ages come from the database's clock (``now()``), so
    every host sharing the database agrees on them whatever its own clock
    says.

    Each write creates the schema and the table if missing, inside its
    transaction and under a transaction-level advisory lock, so that any
    number of processes may start on a new database at once
    (``CREATE TABLE IF NOT EXISTS`` alone can fail when two transactions run
    it at the same time). Reading a new database creates nothing.

    Unless ``url`` says otherwise, connections time out after ``timeout``
    seconds (``connect_timeout``), dead peers are detected in about as long
    (TCP keepalives and ``tcp_user_timeout``), and they name themselves
    ``maas-rpc`` (``fallback_application_name``); each statement may run for
    ``timeout`` seconds at most (``statement_timeout``), and the server ends
    a session whose client falls silent inside a transaction for as long
    (``idle_in_transaction_session_timeout``). A host that vanishes in the
    middle of a write therefore holds its rows' locks for ``timeout``
    seconds at most, and :meth:`expire` passes over rows locked by another
    transaction rather than waiting for them (they go at a later expiry).

    :param url: a libpq connection string: a ``postgresql://`` URL or
        ``key=value`` settings; libpq's ``PG*`` environment variables supply
        whatever it leaves out.
    :param reactor: the reactor whose thread pool runs the operations; the
        global reactor when ``None``.
    :param timeout: seconds to wait to connect, and for each statement
        (including waits for locks), before an operation fails.
    :param schema: the schema that holds the table; created when missing.
    :param table: the table's name.
    :raises ImportError: when psycopg 3 is not installed.
    :ivar url: the connection string, as given (it may hold a password).
    :ivar reactor: the ``reactor`` given (``None`` when none was).
    :ivar timeout: the ``timeout`` given.
    :ivar schema: the ``schema`` given.
    :ivar table: the ``table`` given.
    """

    def __init__(
        self,
        url: str,
        reactor: Any = None,
        timeout: float = DEFAULT_BUSY_TIMEOUT,
        *,
        schema: str = "public",
        table: str = DEFAULT_POSTGRESQL_TABLE,
    ) -> None:
        try:
            from psycopg import sql
        except ImportError as error:
            raise ImportError(
                "PostgreSQLAdvertisementStore needs psycopg 3; install"
                " maas-rpc[postgresql] (or psycopg[binary])."
            ) from error
        self.url = url
        self.reactor = reactor
        self.timeout = timeout
        self.schema = schema
        self.table = table
        self._schemaSQL = sql.Identifier(schema)
        self._tableSQL = sql.Identifier(schema, table)
        self._connection: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def _sql(self, statement: str) -> Any:
        """Compose ``statement``, with ``{table}`` and ``{schema}`` quoted."""
        from psycopg import sql

        return sql.SQL(statement).format(table=self._tableSQL, schema=self._schemaSQL)

    # Everything below until the public methods runs in a pool thread.

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        seconds = max(1, round(self.timeout))
        defaults: dict[str, Any] = {
            "connect_timeout": max(2, seconds),
            "keepalives": 1,
            "keepalives_idle": seconds,
            "keepalives_interval": max(1, seconds // 3),
            "keepalives_count": 3,
            "tcp_user_timeout": round(self.timeout * 1000),
            "fallback_application_name": "maas-rpc",
        }
        given = conninfo_to_dict(self.url)
        settings = {k: v for k, v in defaults.items() if k not in given}
        return psycopg.connect(self.url, **settings)

    def _discard(self) -> None:
        """Close the connection, if any, and forget it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _run(
        self,
        write: bool,
        work: Callable[[psycopg.Cursor[Any], bool], _T],
    ) -> _T:
        """Run ``work(cursor, created)`` in a transaction; return its result.

        ``created`` tells whether the table exists; a write creates it first
        when it does not.
        """
        import psycopg

        with self._lock:
            while True:
                connection = self._connection
                reused = connection is not None and not connection.closed
                if connection is None or connection.closed:
                    connection = self._connection = self._connect()
                try:
                    return self._transact(connection, write, work)
                except psycopg.Error as error:
                    if not connection.closed:
                        raise
                    self._discard()
                    if not reused:
                        raise
                    log.info(
                        "Reconnecting to the PostgreSQL advertisement store"
                        " after: {error}",
                        error=str(error).strip(),
                    )

    def _transact(
        self,
        connection: psycopg.Connection[Any],
        write: bool,
        work: Callable[[psycopg.Cursor[Any], bool], _T],
    ) -> _T:
        import psycopg

        try:
            with connection.cursor() as cursor:
                # The first statement starts the transaction.
                # The server ends the session if this side falls silent
                # inside the transaction for longer than the timeout (its
                # host vanished, say), so its locks do not outlive it.
                timeout = f"{round(self.timeout * 1000)}ms"
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true),"
                    " set_config('idle_in_transaction_session_timeout', %s, true),"
                    " EXISTS (SELECT FROM pg_catalog.pg_class c"
                    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relname = %s)",
                    (timeout, timeout, self.schema, self.table),
                )
                _, _, created = cursor.fetchone() or (None, None, False)
                if write and not created:
                    self._create(cursor)
                    created = True
                result = work(cursor, created)
            connection.commit()
        except BaseException:
            if not connection.closed:
                try:
                    connection.rollback()
                except psycopg.Error:
                    self._discard()
            raise
        return result

    def _create(self, cursor: psycopg.Cursor[Any]) -> None:
        """Create the schema and table, taking turns with other creators.

        The advisory lock is held until the transaction ends, so a creator
        that waited for it runs its statements after the one before it has
        committed, and finds the schema and table there (in READ COMMITTED
        each statement sees what committed before it started).
        """
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
        cursor.execute(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %s)",
            (self.schema,),
        )
        row = cursor.fetchone()
        if row is None or not row[0]:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS needs the
            # privilege to create schemas even when the schema exists.
            cursor.execute(self._sql("CREATE SCHEMA IF NOT EXISTS {schema}"))
        cursor.execute(
            self._sql(
                "CREATE TABLE IF NOT EXISTS {table} ("
                " address text NOT NULL,"
                " port integer NOT NULL CHECK (port BETWEEN 1 AND 65535),"
                " name text NOT NULL,"
                " updated timestamptz NOT NULL,"
                " PRIMARY KEY (address, port))"
            )
        )

    def _advertise(self, name: str, endpoints: list[Endpoint]) -> None:
        def work(cursor: psycopg.Cursor[Any], created: bool) -> None:
            cursor.execute(self._sql("DELETE FROM {table} WHERE name = %s"), (name,))
            if endpoints:
                # A record of another name at the same address and port is
                # taken over; concurrent advertisers of one endpoint take
                # turns on its row rather than fail.
                cursor.executemany(
                    self._sql(
                        "INSERT INTO {table} (address, port, name, updated)"
                        " VALUES (%s, %s, %s, now())"
                        " ON CONFLICT (address, port) DO UPDATE"
                        " SET name = excluded.name, updated = excluded.updated"
                    ),
                    [(address, port, name) for address, port in endpoints],
                )

        self._run(True, work)

    def _withdraw(self, name: str) -> None:
        def work(cursor: psycopg.Cursor[Any], created: bool) -> None:
            cursor.execute(self._sql("DELETE FROM {table} WHERE name = %s"), (name,))

        self._run(True, work)

    def _expire(self, max_age: float) -> int:
        def work(cursor: psycopg.Cursor[Any], created: bool) -> int:
            # Compared as numbers of seconds, so any max_age (even infinity)
            # works.
            # Rows another transaction holds are passed over, not waited
            # for: that transaction may belong to a host that vanished in
            # the middle of refreshing them (its rows go at a later expiry,
            # once the server has ended its session).
            cursor.execute(
                self._sql(
                    "DELETE FROM {table} WHERE (address, port) IN ("
                    " SELECT address, port FROM {table}"
                    " WHERE extract(epoch FROM now() - updated)::float8 > %s"
                    " FOR UPDATE SKIP LOCKED)"
                ),
                (max_age,),
            )
            return cursor.rowcount

        return self._run(True, work)

    def _eventloops(self) -> dict[str, list[Endpoint]]:
        def work(
            cursor: psycopg.Cursor[Any], created: bool
        ) -> dict[str, list[Endpoint]]:
            if not created:
                return {}  # Nothing has been advertised here yet.
            cursor.execute(self._sql("SELECT name, address, port FROM {table}"))
            return _group(cursor.fetchall())

        return self._run(False, work)

    def _close(self) -> None:
        with self._lock:
            self._discard()

    def close(self) -> Deferred[None]:
        """Close the store's connection, once the operation using it ends.

        The store stays usable: the next operation connects again.

        :return: a Deferred that fires with ``None`` once closed.
        """
        return self._defer(self._close)
