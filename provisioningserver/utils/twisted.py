"""Helpers for code that straddles the reactor thread and other threads.

The region runs Twisted's reactor in a background thread (through
:mod:`crochet`) while ordinary Python code runs in other threads. The
decorators here make a function's threading contract explicit:

* :func:`asynchronous` functions belong to the reactor. Called in the reactor
  thread they run straight away; called from any other thread they are
  scheduled in the reactor and the caller gets a
  :class:`crochet.EventualResult` (or, with a ``timeout``, the result itself).
* :func:`synchronous` functions may block, so they refuse to run in the
  reactor thread.
* :func:`deferred` functions always return a
  :class:`~twisted.internet.defer.Deferred`.

Where time is involved, the reactor or clock is a parameter (``clock=None``
means the global reactor, resolved when the function is called).

The thread hop
--------------

A call from another thread is handed to the reactor by :func:`callInReactor`
and answered through a :class:`ReactorCallResult`, which is a
:class:`crochet.EventualResult` that behaves as crochet's (its behaviour
tests are run against it) but costs less per call. Results still pending
when the reactor stops fail with :class:`crochet.ReactorStopped`, and so
does a hand-off after it stopped. That is race-free where crochet knows the
reactor (:func:`crochet.setup`, or :func:`crochet.no_setup` where twistd or
another runner runs it), as every process of this package arranges; a
program that runs a reactor without telling crochet keeps working, but
there results pending when the reactor stops are failed only if it had not
begun to shut down when it ran the first call handed to it.

Only crochet's public names are used: ``EventualResult`` (subclassed, its
public methods overridden; its constructor is not called, see
:class:`ReactorCallResult`), ``run_in_reactor``, ``TimeoutError`` and
``ReactorStopped``. No private crochet or Twisted name is touched here, so
crochet needs no upper bound for this module; a test fails, naming the
method, if a crochet release gives ``EventualResult`` a method this class
does not override.
"""

from __future__ import annotations

from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Iterator
from functools import partial, wraps
from inspect import iscoroutine
from typing import Any

import crochet
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.log import err
from zope.interface import Interface, alsoProvides

__all__ = [
    "FOREVER",
    "LONGTIME",
    "IAsynchronous",
    "ListeningService",
    "ReactorCallResult",
    "ISynchronous",
    "DeferredValue",
    "asynchronous",
    "callInReactor",
    "callOut",
    "deferWithTimeout",
    "deferred",
    "isInReactorThread",
    "pause",
    "resolveReactor",
    "retries",
    "synchronous",
]


class _Forever:
    """The type of :data:`FOREVER`; it has a readable ``repr``."""

    def __repr__(self) -> str:
        return "FOREVER"


#: Pass as ``timeout`` to :func:`asynchronous` to wait without a deadline.
FOREVER = _Forever()

#: How long "forever" is when a number is needed: one year, in seconds. Waiting
#: on a :class:`crochet.EventualResult` needs a finite number.
LONGTIME = 60.0 * 60.0 * 24.0 * 365.0


class IAsynchronous(Interface):
    """Provided by functions wrapped with :func:`asynchronous`."""


class ISynchronous(Interface):
    """Provided by functions wrapped with :func:`synchronous`."""


_globalReactor: Any = None


def resolveReactor(clock: Any = None) -> Any:
    """Return ``clock``, or the global reactor when it is ``None``.

    The global reactor is imported (installing the default one if none is)
    on first use, not when this module is imported.

    :param clock: a reactor (or a clock), or ``None``.
    :return: ``clock``, or the global reactor.
    """
    if clock is not None:
        return clock
    global _globalReactor
    if _globalReactor is None:
        from twisted.internet import reactor

        _globalReactor = reactor
    return _globalReactor


def isInReactorThread() -> bool:
    """Tell whether the caller runs in the reactor's thread.

    :return: ``True`` in the thread that runs (or ran) the reactor.
    """
    return bool(threadable.isInIOThread())


def asynchronous(func: Callable[..., Any] | None = None, *, timeout: Any = None) -> Any:
    """Mark a function as belonging to the reactor thread.

    In the reactor thread the decorated function is called directly and its
    result returned unchanged. From any other thread it is handed to the
    reactor with :func:`callInReactor`; without a ``timeout`` the caller gets
    a :class:`crochet.EventualResult`, with one the caller blocks until the
    result arrives and gets it (or its exception). A wait that times out
    cancels the call. In a process where no reactor has ever run, the
    function is called directly (with a ``timeout``, a Deferred that already
    has a result gives that result, or raises).

    Use it bare (``@asynchronous``) or with a timeout
    (``@asynchronous(timeout=FOREVER)``).

    :param func: the function to wrap; omitted when a ``timeout`` is given.
    :param timeout: ``None`` to return an :class:`~crochet.EventualResult` to
        callers outside the reactor; a number of seconds to wait for the result
        there; or :data:`FOREVER` to wait without a deadline.
    :return: the wrapped function, which provides :class:`IAsynchronous`, or a
        decorator when ``func`` is omitted. From another thread the wrapper
        raises :class:`crochet.ReactorStopped` once the reactor has stopped
        (or when it stops while the caller waits), and
        :class:`crochet.TimeoutError` when ``timeout`` passes first.
    :raises ValueError: when ``timeout`` is neither ``None``, :data:`FOREVER`
        nor a non-negative number.
    """
    if func is None:
        return partial(asynchronous, timeout=timeout)
    if timeout is FOREVER:
        wait_for: float | None = LONGTIME
    elif timeout is None:
        wait_for = None
    elif (
        isinstance(timeout, int | float)
        and not isinstance(timeout, bool)
        and timeout >= 0
    ):
        wait_for = min(float(timeout), LONGTIME)
    else:
        raise ValueError(f"timeout must be None, FOREVER or seconds; not {timeout!r}")

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threadable.isInIOThread():
            return func(*args, **kwargs)
        reactor = resolveReactor()
        if not reactor.running and threadable.ioThread is None:
            # No reactor has run in this process (a script that does not use
            # one): call through. Once one has, calls are handed over, and
            # refused with ReactorStopped after it stopped.
            value = func(*args, **kwargs)
            return value if wait_for is None else _unwrapFired(value)
        result = callInReactor(reactor, func, args, kwargs)
        if wait_for is None:
            return result
        try:
            return result.wait(wait_for)
        except crochet.TimeoutError:
            result.cancel()
            raise

    alsoProvides(wrapper, IAsynchronous)
    return wrapper


def _unwrapFired(value: Any) -> Any:
    """Return the result of ``value`` if it is a Deferred that has one (or
    raise its exception); otherwise ``value`` itself."""
    if not isinstance(value, Deferred) or not value.called or value.paused:
        # A Deferred still waiting: no reactor will fire it, the caller has
        # it.
        return value
    outcome: list[Any] = []
    value.addBoth(outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


class _Pending:
    """The results handed to one reactor and not settled yet.

    When the reactor stops (its ``before shutdown`` event, as crochet's own
    registry) every one of them fails with :class:`crochet.ReactorStopped`,
    and later hand-offs are refused with it. ``lock`` orders the two: a
    result is either added before the reactor stops, and failed then, or
    refused. Results leave the set in the reactor thread, which is also
    where :meth:`stop` runs, so that needs no lock.

    :ivar lock: held to test ``stopped`` and add to ``results``.
    :ivar results: the unsettled :class:`ReactorCallResult` objects.
    :ivar stopped: whether the reactor has stopped.
    """

    __slots__ = ("lock", "results", "stopped")

    def __init__(self) -> None:
        self.lock = _allocate_lock()
        self.results: set[ReactorCallResult] = set()
        self.stopped = False

    def stop(self) -> None:
        """Fail every unsettled result; refuse new ones. In the reactor
        thread."""
        with self.lock:
            self.stopped = True
            results, self.results = self.results, set()
        for result in results:
            result._settle(Failure(crochet.ReactorStopped()))


#: reactor -> its :class:`_Pending`; see :func:`_pendingFor`.
_pendingByReactor: dict[Any, _Pending] = {}
_pendingLock = _allocate_lock()


def _pendingFor(reactor: Any) -> _Pending:
    """Return ``reactor``'s :class:`_Pending`, made on the first hand-off.

    Its ``before shutdown`` trigger is added in the reactor thread through
    :func:`crochet.run_in_reactor` (once per reactor, so the first call from a
    thread makes two hops). A trigger added from the calling thread could
    land after the reactor ran its ``before shutdown`` triggers, and never
    run; through crochet there is no such gap. crochet fails the install
    with :class:`crochet.ReactorStopped` when its own ``before shutdown``
    trigger ran first (then this registry starts stopped), and when the
    install succeeds, the trigger was added before crochet's ran, so it runs
    in the same round.

    Where crochet does not know the reactor (a program that runs one without
    :func:`crochet.setup` or :func:`crochet.no_setup`), the trigger is
    queued with ``callFromThread`` ahead of the first call instead: calls
    work the same, but results pending when the reactor stops are failed
    only if it had not begun to shut down before it ran that first call.

    :param reactor: the reactor calls are handed to.
    :return: its registry.
    """
    pending = _pendingByReactor.get(reactor)
    if pending is not None:
        return pending
    with _pendingLock:
        pending = _pendingByReactor.get(reactor)
        if pending is None:
            pending = _Pending()
            _installStopTrigger(reactor, pending)
            _pendingByReactor[reactor] = pending
    return pending


def _installStopTrigger(reactor: Any, pending: _Pending) -> None:
    install = crochet.run_in_reactor(reactor.addSystemEventTrigger)
    try:
        installed = install("before", "shutdown", pending.stop)
    except AttributeError:
        # crochet knows no reactor: its EventLoop has no reactor attribute
        # until setup() or no_setup() is called.
        if reactor.running:
            reactor.callFromThread(
                reactor.addSystemEventTrigger, "before", "shutdown", pending.stop
            )
        else:
            pending.stopped = True  # It ran, and no longer does.
        return
    try:
        installed.wait(LONGTIME)
    except crochet.ReactorStopped:
        pending.stopped = True


class ReactorCallResult(crochet.EventualResult):
    """The eventual result of a call that :func:`callInReactor` handed over.

    It is a :class:`crochet.EventualResult` and behaves as crochet's own
    (:meth:`wait`, :meth:`cancel`, :meth:`~crochet.EventualResult.stash`,
    :meth:`original_failure`, timeouts, an unretrieved failure logged when
    it is garbage-collected, :class:`crochet.ReactorStopped` when the reactor
    stops first); the tests run crochet's behaviour tests against it. It
    differs in its insides, because the thread hop is most of what a call
    from a thread costs: the waiting thread sleeps on a bare lock, released
    when the result arrives (crochet's builds a :class:`threading.Event`, a
    condition variable and two locks, per result), and it is registered with
    this module's per-reactor registry rather than crochet's.

    crochet's constructor is therefore not called, and none of crochet's
    private attributes or methods is used or overridden: every public method
    whose behaviour depends on the result's state is overridden here, and a
    test checks that crochet's class has no other. Create one only through
    :func:`callInReactor`.

    :param reactor: the reactor the call runs in.
    :param pending: the registry of that reactor's unsettled results.
    """

    # Not crochet's attribute names: nothing here relies on its insides.
    __slots__ = (
        "_hopReactor",
        "_hopPending",
        "_hopDone",
        "_hopIsSet",
        "_hopValue",
        "_hopRetrieved",
        "_hopDeferred",
    )

    def __init__(self, reactor: Any, pending: _Pending) -> None:
        self._hopReactor = reactor
        self._hopPending = pending
        # Held until the result arrives; a waiter acquires and releases it.
        self._hopDone = _allocate_lock()
        self._hopDone.acquire()
        self._hopIsSet = False
        self._hopValue: Any = None
        self._hopRetrieved = False
        # The function's Deferred while it has not fired, for cancel().
        self._hopDeferred: Deferred[Any] | None = None

    def _settle(self, result: Any) -> None:
        # In the reactor thread only: the first outcome wins.
        if self._hopIsSet:
            return
        self._hopPending.results.discard(self)
        self._hopDeferred = None
        self._hopValue = result
        self._hopIsSet = True
        self._hopDone.release()

    def wait(self, timeout: float | None) -> Any:
        """Return the result, or raise the exception it failed with.

        A wait that times out may be followed by another; once the result is
        there every wait returns (or raises) the same.

        :param timeout: seconds to wait at most (``None`` waits forever).
        :return: the function's result.
        :raises crochet.TimeoutError: when ``timeout`` passes first.
        :raises crochet.ReactorStopped: when the reactor stopped first.
        :raises RuntimeError: when called in the reactor thread, where it
            would wait forever.
        """
        if threadable.isInIOThread():
            raise RuntimeError(
                "EventualResult.wait() must not be run in the reactor thread."
            )
        if not self._hopIsSet:
            if timeout is None:
                acquired = self._hopDone.acquire()
            elif timeout > 0:
                acquired = self._hopDone.acquire(True, timeout)
            else:
                acquired = self._hopDone.acquire(False)
            if not acquired:
                raise crochet.TimeoutError()
            self._hopDone.release()
        self._hopRetrieved = True
        result = self._hopValue
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def cancel(self) -> None:
        """Cancel the call's Deferred, in the reactor thread.

        Safe whatever the state: when the function returned a plain value or
        raised, when the result is already there, when the reactor has
        stopped, and when called again. Whether the work stops depends on the
        Deferred's canceller; the result arrives in any case.
        """
        self._hopReactor.callFromThread(self._cancelInReactor)

    def _cancelInReactor(self) -> None:
        d = self._hopDeferred
        if d is not None:
            d.cancel()
        elif not self._hopIsSet:
            # Not run yet (callFromThread runs calls in order, so only when
            # something other than callInReactor made this result): it never
            # will.
            self._settle(Failure(CancelledError()))

    def original_failure(self) -> Failure | None:
        """Return the :class:`~twisted.python.failure.Failure` the call
        failed with, without waiting.

        :return: the failure, or ``None`` when there is no result yet or it
            is not a failure.
        """
        if not self._hopIsSet:
            return None
        self._hopRetrieved = True
        value = self._hopValue
        return value if isinstance(value, Failure) else None

    def __del__(self) -> None:
        if self._hopRetrieved or not self._hopIsSet:
            return
        if isinstance(self._hopValue, Failure):
            err(self._hopValue, "Unhandled error in EventualResult")


def _deliver(outcome: Any, result: ReactorCallResult) -> None:
    result._settle(outcome)
    # The result owns a failure now (it logs one nobody retrieved).
    return None


def _runInReactor(
    result: ReactorCallResult,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    if result._hopIsSet:
        # Failed with ReactorStopped while queued: the caller was told it did
        # not run, so it must not.
        return
    try:
        value = func(*args, **kwargs)
    except BaseException:
        result._settle(Failure())
        return
    if iscoroutine(value):
        value = Deferred.fromCoroutine(value)
    if isinstance(value, Deferred):
        result._hopDeferred = value
        value.addBoth(_deliver, result)
    else:
        # A plain value (or a Failure, which wait() raises).
        result._settle(value)


def callInReactor(
    reactor: Any,
    func: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> ReactorCallResult:
    """Call ``func`` in the reactor thread; return its eventual result.

    What :func:`crochet.run_in_reactor` does, with less work per call: no
    per-call closures, and a bare lock to wake the waiting thread (see
    :class:`ReactorCallResult`). As with crochet, results still pending when
    the reactor stops fail with :class:`crochet.ReactorStopped`.

    The guarantee about the reactor stopping is complete where crochet knows
    the reactor (:func:`crochet.setup`, or :func:`crochet.no_setup` where
    another runner such as twistd runs it). Without, pending results are
    failed only if the reactor had not begun to shut down when it ran the
    first call handed to it.

    :param reactor: the running reactor (crochet's).
    :param func: the function; it may return a value, a Deferred or a
        coroutine.
    :param args: its positional arguments.
    :param kwargs: its keyword arguments.
    :return: a :class:`crochet.EventualResult` of its result.
    :raises crochet.ReactorStopped: when the reactor has stopped.
    """
    pending = _pendingByReactor.get(reactor) or _pendingFor(reactor)
    result = ReactorCallResult(reactor, pending)
    with pending.lock:
        if pending.stopped:
            raise crochet.ReactorStopped()
        pending.results.add(result)
    reactor.callFromThread(_runInReactor, result, func, args, kwargs or {})
    return result


def synchronous(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a function as one that may block, so never in the reactor thread.

    :param func: the function to wrap.
    :return: the wrapped function, which provides :class:`ISynchronous`.
    :raises AssertionError: (from the wrapper) when it is called in the reactor
        thread while the reactor runs.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if isInReactorThread() and resolveReactor().running:
            raise AssertionError(
                f"{func.__qualname__} may block and must not be called in the "
                "reactor thread; call it from another thread"
            )
        return func(*args, **kwargs)

    alsoProvides(wrapper, ISynchronous)
    return wrapper


def deferred(func: Callable[..., Any]) -> Callable[..., Deferred[Any]]:
    """Make a function always return a :class:`~twisted.internet.defer.Deferred`.

    A plain result becomes a fired Deferred and an exception a failed one
    (:func:`~twisted.internet.defer.maybeDeferred`).

    :param func: the function to wrap.
    :return: the wrapped function.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Deferred[Any]:
        return maybeDeferred(func, *args, **kwargs)

    return wrapper


def callOut(result: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` for its side effect, then pass ``result`` on.

    Meant as a Deferred callback: ``d.addCallback(callOut, log_it)``. When
    ``func`` returns a Deferred, the chain waits for it; an error from
    ``func`` replaces ``result``.

    :param result: the value to pass on.
    :param func: called as ``func(*args, **kwargs)``.
    :return: a Deferred that fires with ``result`` once ``func`` is done.
    """
    return maybeDeferred(func, *args, **kwargs).addCallback(lambda _: result)


def deferWithTimeout(
    timeout: float | None,
    func: Callable[..., Any],
    *args: Any,
    clock: Any = None,
    **kwargs: Any,
) -> Deferred[Any]:
    """Call ``func`` and give up on its result after ``timeout`` seconds.

    At the deadline the Deferred ``func`` returned is cancelled, and the
    returned Deferred fails with :class:`twisted.internet.defer.TimeoutError`.

    :param timeout: seconds; ``None`` or ≤ 0 for no deadline.
    :param func: the function to call with ``*args`` and ``**kwargs``.
    :param clock: the :class:`~twisted.internet.interfaces.IReactorTime` to
        measure the deadline with; the global reactor when ``None``.
    :return: a Deferred with ``func``'s result.
    """
    d = maybeDeferred(func, *args, **kwargs)
    if timeout is not None and timeout > 0:
        d.addTimeout(timeout, resolveReactor(clock))
    return d


def pause(duration: float, clock: Any = None) -> Deferred[None]:
    """Return a Deferred that fires with ``None`` after ``duration`` seconds.

    Cancelling it stops the timer.

    :param duration: seconds to wait.
    :param clock: the clock to wait on; the global reactor when ``None``.
    :return: a cancellable Deferred.
    """
    clock = resolveReactor(clock)

    def cancel(d: Deferred[None]) -> None:
        if call.active():
            call.cancel()

    d: Deferred[None] = Deferred(cancel)
    call = clock.callLater(duration, d.callback, None)
    return d


def retries(
    timeout: float = 30, intervals: float = 1, clock: Any = None
) -> Iterator[tuple[float, float, float]]:
    """Yield ``(elapsed, remaining, wait)`` until ``timeout`` seconds pass.

    A loop body does its attempt, then waits ``wait`` seconds (for example
    with :func:`pause`) before the next one. The last ``wait`` is shortened
    so the loop ends at the deadline.

    :param timeout: total seconds to keep trying.
    :param intervals: seconds between attempts.
    :param clock: the clock to measure time with; the global reactor when
        ``None``.
    :return: an iterator of ``(elapsed, remaining, wait)`` tuples.
    :raises ValueError: when ``intervals`` is not positive.
    """
    if intervals <= 0:
        raise ValueError(f"intervals must be positive; not {intervals!r}")
    clock = resolveReactor(clock)
    start = clock.seconds()
    end = start + timeout
    while True:
        now = clock.seconds()
        if now >= end:
            return
        remaining = end - now
        yield now - start, remaining, min(intervals, remaining)


class DeferredValue:
    """A value that will be set once, and that many may wait for.

    :meth:`get` returns a Deferred that fires when the value is set (or
    failed). Setting a second time raises :class:`RuntimeError`.

    :ivar value: the value, once set.
    :ivar isSet: whether :meth:`set` or :meth:`fail` has been called.
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred[Any]] = []
        self.isSet = False
        self.value: Any = None

    def __repr__(self) -> str:
        if self.isSet:
            return f"<DeferredValue set={self.value!r}>"
        return "<DeferredValue unset>"

    def _fire(self, value: Any) -> None:
        if self.isSet:
            raise RuntimeError("DeferredValue is already set")
        self.isSet = True
        self.value = value
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(value, Failure):
                waiter.errback(value)
            else:
                waiter.callback(value)

    def set(self, value: Any) -> None:
        """Set the value and fire every waiter with it.

        :param value: the value.
        :raises RuntimeError: when already set.
        """
        if isinstance(value, Failure):
            raise TypeError("use fail() to set a Failure")
        self._fire(value)

    def fail(self, failure: Failure | BaseException | None = None) -> None:
        """Fail every waiter, now and later.

        :param failure: a :class:`~twisted.python.failure.Failure` or an
            exception; the current exception when ``None``.
        :raises RuntimeError: when already set.
        """
        self._fire(Failure(failure))

    def get(self, timeout: float | None = None, clock: Any = None) -> Deferred[Any]:
        """Return a Deferred that fires with the value once it is set.

        :param timeout: seconds to wait at most; ``None`` waits forever.
        :param clock: the clock for the timeout; the global reactor when
            ``None``.
        :return: a Deferred firing with the value, or failing with
            :class:`twisted.internet.defer.TimeoutError` at the timeout.
        """
        if self.isSet:
            if isinstance(self.value, Failure):
                return defer.fail(self.value)
            return defer.succeed(self.value)

        def forget(d: Deferred[Any]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        d: Deferred[Any] = Deferred(forget)
        self._waiters.append(d)
        if timeout is not None:
            d.addTimeout(timeout, resolveReactor(clock))
        return d


class ListeningService(Service):
    """A service that listens (on a port or a socket) while it runs.

    A subclass says how, in :meth:`listen`; starting listens, stopping stops
    listening.

    :param reactor: the reactor; the global one when ``None``.
    """

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self._listening: Any = None

    def listen(self, reactor: Any) -> Any:
        """Start listening.

        :param reactor: the reactor to listen with.
        :return: the listening port
            (:class:`~twisted.internet.interfaces.IListeningPort`).
        """
        raise NotImplementedError(self.listen)

    def startService(self) -> None:
        """Listen (see :meth:`listen`), then start.

        :raises twisted.internet.error.CannotListenError: when the port is
            taken.
        """
        self._listening = self.listen(resolveReactor(self._reactor))
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop listening.

        :return: a Deferred that fires once closed.
        """
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return maybeDeferred(listening.stopListening)
