"""The object callers use: ``client(Command, **kwargs)``.

* :class:`Client` wraps one connection; calling it calls the peer, from the
  reactor thread (a Deferred) or from any other thread (a
  :class:`crochet.EventualResult`), with a deadline.
* :func:`callWithFallback` calls the first of several forms of a command
  that the peer knows, for version skew.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.python.failure import Failure

from provisioningserver.rpc import observers
from provisioningserver.rpc.deadlines import Deadlines
from provisioningserver.rpc.exceptions import CallTimedOut, RemoteResponderFailed
from provisioningserver.rpc.interfaces import IConnection
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.twisted import asynchronous

__all__ = ["DEFAULT_CALL_TIMEOUT", "Client", "callWithFallback", "peerLacksCommand"]

#: Seconds a call made through a :class:`Client` may take, unless the call
#: passes ``_timeout``.
DEFAULT_CALL_TIMEOUT = 120.0


def peerLacksCommand(error: BaseException) -> bool:
    """Tell whether an error means the peer does not know the command (an
    older peer), rather than that its responder failed.

    :param error: an exception from a call.
    :return: ``True`` for a plain :class:`amp.UnhandledCommand`; ``False``
        for :class:`~provisioningserver.rpc.exceptions.RemoteResponderFailed`
        and anything else.
    """
    return isinstance(error, amp.UnhandledCommand) and not isinstance(
        error, RemoteResponderFailed
    )


def _checkCommand(cmd: Any) -> None:
    if not (isinstance(cmd, type) and issubclass(cmd, amp.Command)):
        raise TypeError(f"expected an amp.Command subclass; got {cmd!r}")


def _errorCode(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, CallTimedOut):
        return "TIMEOUT"
    code = getattr(error, "errorCode", None)
    if isinstance(code, bytes):
        return code.decode("ascii", "replace")
    if isinstance(error, RemoteResponderFailed):
        return "UNHANDLED"
    return type(error).__name__


class Client:
    """A handle for calling one peer over one connection.

    Call it with a command and its arguments as keywords::

        response = client(EatCheez, name="Brie", origin="France")

    In the reactor thread that returns a Deferred; in any other thread it
    returns a :class:`crochet.EventualResult` (call ``.wait(timeout)`` on it).
    The Deferred fires with the response dict, or fails with a declared
    exception; :class:`~provisioningserver.rpc.exceptions.CallTimedOut` at
    the deadline;
    :class:`~provisioningserver.rpc.exceptions.RemoteResponderFailed` when
    the peer's responder failed; :class:`amp.UnhandledCommand` when the peer
    does not know the command; or the reason the connection was lost.

    Clients compare equal, and hash the same, when they wrap the same
    connection. Don't keep one around: ask for a client each time you call,
    since connections come and go.

    :param conn: the connection to wrap (an
        :class:`~provisioningserver.rpc.interfaces.IConnection`).
    :param clock: the clock that measures call deadlines; the connection's
        ``clock`` when ``None`` (or the global reactor, for a connection
        without one).
    """

    __slots__ = ("_conn", "_clock")

    def __init__(self, conn: IConnection, clock: Any = None) -> None:
        self._conn = conn
        self._clock = clock

    @property
    def ident(self) -> str | None:
        """The peer's identity: a cluster's UUID or a region event-loop's
        name."""
        return self._conn.ident

    @property
    def connection(self) -> IConnection:
        """The wrapped connection."""
        return self._conn

    def isSecure(self) -> bool:
        """Tell whether the connection is encrypted (the secure channel or
        mutual TLS), as MAAS's ``Client.isSecure`` does.

        :return: ``True`` when the connection uses TLS.
        """
        return getattr(self._conn, "mode", None) in ("secure", "mtls")

    def getHostCertificate(self) -> Any:
        """Return this side's TLS certificate (MAAS's ``Client`` API).

        :return: the certificate, or ``None`` without TLS.
        """
        return self._conn.getHostCertificate()

    def getPeerCertificate(self) -> Any:
        """Return the peer's TLS certificate (MAAS's ``Client`` API).

        :return: the certificate, or ``None`` without TLS or when the peer
            presented none (the secure channel's server does not ask
            clusters for one).
        """
        return self._conn.getPeerCertificate()

    def __call__(
        self,
        cmd: type[amp.Command],
        *args: Any,
        _timeout: Any = DEFAULT_CALL_TIMEOUT,
        **kwargs: Any,
    ) -> Any:
        """Call ``cmd`` on the peer.

        :param cmd: an :class:`amp.Command` subclass.
        :param _timeout: the call's deadline in seconds (default
            :data:`DEFAULT_CALL_TIMEOUT`); ``None`` or ≤ 0 for none.
        :param kwargs: the command's arguments, by name.
        :return: a Deferred in the reactor thread, a
            :class:`crochet.EventualResult` elsewhere, with the response dict.
        :raises TypeError: when called with positional arguments or a ``cmd``
            that is not a command.
        """
        if args:
            raise TypeError(
                f"{cmd.__name__ if isinstance(cmd, type) else cmd!r} takes its "
                f"arguments by keyword only: client({getattr(cmd, '__name__', 'Cmd')}"
                ", name=value, ...); got positional arguments "
                f"{args!r}"
            )
        _checkCommand(cmd)
        return self._call(cmd, _timeout, kwargs)

    @asynchronous
    def _call(
        self, cmd: type[amp.Command], timeout: Any, kwargs: dict[str, Any]
    ) -> Deferred[dict[str, Any]]:
        conn: Any = self._conn
        observing = observers.current is not None
        started = time.monotonic() if observing else 0.0
        try:
            conn.callsMade += 1
            conn.lastCallAt = time.time()
        except AttributeError:
            pass  # A connection that keeps no statistics.
        try:
            d = conn.callRemote(cmd, **kwargs)
        except Exception:  # noqa: BLE001 - the caller gets it as a failure
            d = fail()
        else:
            if timeout is not None and timeout > 0:

                def timedOut() -> CallTimedOut:
                    try:
                        conn.callsFailed += 1
                    except AttributeError:
                        pass
                    return CallTimedOut(
                        f"{cmd.__name__} to {self.ident} got no answer within "
                        f"{timeout} seconds"
                    )

                d = self._deadlines().add(d, timeout, timedOut)
        if observing:
            d.addBoth(self._observed, cmd, started)
        return d

    @staticmethod
    def _observed(result: Any, cmd: Any, started: float) -> Any:
        error = None
        if isinstance(result, Failure):
            error = "CANCELLED" if result.check(CancelledError) else _errorCode(result)
        observers.callCompleted(cmd.commandName, "out", error, started)
        return result

    def _deadlines(self) -> Deadlines:
        # One shared timer per connection and clock, not one per call.
        conn: Any = self._conn
        clock = self._clock
        if clock is None:
            clock = getattr(conn, "clock", None)
            if clock is None:
                from twisted.internet import reactor as clock
        table = getattr(conn, "_rpcDeadlines", None)
        if table is None:
            table = {}
            conn._rpcDeadlines = table
        deadlines = table.get(clock)
        if deadlines is None:
            deadlines = table[clock] = Deadlines(clock)
        return deadlines

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Client):
            return self._conn is other._conn
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._conn)

    def __repr__(self) -> str:
        return f"<Client for {self.ident!r}>"


async def _firstKnown(
    client: Client,
    calls: tuple[tuple[type[amp.Command], dict[str, Any]], ...],
    timeout: Any,
) -> tuple[type[amp.Command], dict[str, Any]]:
    for command, kwargs in calls[:-1]:
        try:
            return command, await client(command, _timeout=timeout, **kwargs)
        except amp.UnhandledCommand as error:
            if not peerLacksCommand(error):
                raise  # Its responder failed: that is not version skew.
    command, kwargs = calls[-1]
    return command, await client(command, _timeout=timeout, **kwargs)


@asynchronous
def callWithFallback(
    client: Client,
    *calls: tuple[type[amp.Command], dict[str, Any]],
    _timeout: Any = DEFAULT_CALL_TIMEOUT,
) -> Deferred[tuple[type[amp.Command], dict[str, Any]]]:
    """Call the first of several forms of a command that the peer knows.

    For version skew: a newer command (``EatCheezV2``) is tried first, and
    an older form only when the peer does not know it (it answers
    ``UNHANDLED`` / ``Unhandled Command``, a plain
    :class:`amp.UnhandledCommand`). Any other error, including a failed
    responder
    (:class:`~provisioningserver.rpc.exceptions.RemoteResponderFailed`, also
    ``UNHANDLED`` but ``Unknown Error [...]``), is raised as it is::

        command, answer = await callWithFallback(
            client,
            (EatCheezV2, {"name": "Brie", "origin": "France", "age": 8}),
            (EatCheez, {"name": "Brie", "origin": "France"}),
        )

    :param client: the :class:`Client` to call.
    :param calls: ``(command, arguments)`` pairs, newest first.
    :param _timeout: each call's deadline, as for :class:`Client`.
    :return: a Deferred (in the reactor; an
        :class:`~crochet.EventualResult` elsewhere) of the command that
        answered and its answer.
    :raises ValueError: when no calls are given.
    :raises amp.UnhandledCommand: when the peer knows none of them.
    """
    if not calls:
        raise ValueError("callWithFallback needs at least one (command, arguments)")
    return Deferred.fromCoroutine(_firstKnown(client, calls, _timeout))
