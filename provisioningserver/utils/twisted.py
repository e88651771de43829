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
"""

from __future__ import annotations

import weakref
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Iterator
from functools import partial, wraps
from inspect import iscoroutine
from typing import Any

import crochet
from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.log import err
from zope.interface import Interface, alsoProvides

__all__ = [
    "FOREVER",
    "LONGTIME",
    "IAsynchronous",
    "ISynchronous",
    "DeferredValue",
    "asynchronous",
    "callInReactor",
    "callOut",
    "deferWithTimeout",
    "deferred",
    "isInReactorThread",
    "pause",
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


def _reactor(clock: Any = None) -> Any:
    """Return ``clock``, or the global reactor when it is ``None``."""
    if clock is None:
        from twisted.internet import reactor

        return reactor
    return clock


def isInReactorThread() -> bool:
    """Tell whether the caller runs in the reactor's thread.

    :return: ``True`` in the thread that runs (or ran) the reactor.
    """
    return bool(threadable.isInIOThread())


def asynchronous(func: Callable[..., Any] | None = None, *, timeout: Any = None) -> Any:
    """Mark a function as belonging to the reactor thread.

    In the reactor thread (or when no reactor runs at all) the decorated
    function is called directly and its result returned unchanged. From any
    other thread it is scheduled in the reactor with
    :func:`crochet.run_in_reactor`; without a ``timeout`` the caller gets a
    :class:`crochet.EventualResult`, with one the caller blocks until the
    result arrives and gets it (or its exception).

    Use it bare (``@asynchronous``) or with a timeout
    (``@asynchronous(timeout=FOREVER)``).

    :param func: the function to wrap; omitted when a ``timeout`` is given.
    :param timeout: ``None`` to return an :class:`~crochet.EventualResult` to
        callers outside the reactor; a number of seconds to wait for the result
        there; or :data:`FOREVER` to wait without a deadline.
    :return: the wrapped function, which provides :class:`IAsynchronous`, or a
        decorator when ``func`` is omitted.
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
        if isInReactorThread():
            return func(*args, **kwargs)
        reactor = _reactor()
        if not reactor.running:
            # No reactor running (a script before crochet starts, a test
            # driving a Clock): call through.
            return func(*args, **kwargs)
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


class _EventualResult(crochet.EventualResult):
    """A :class:`crochet.EventualResult` that signals with a bare lock.

    crochet's signals with a :class:`threading.Event` (a condition variable
    and a lock allocated on each wait); a lock held until the result arrives
    is the cheapest way for one thread to wake another in CPython, and the
    thread hop is most of what a call from a thread costs.
    """

    def __init__(self, reactor: Any) -> None:
        self._deferred: Deferred[Any] | None = None
        self._reactor = reactor
        self._value = None
        self._result_retrieved = False
        self._done = _allocate_lock()
        self._done.acquire()
        self._isSet = False

    def _set_result(self, result: Any) -> None:
        if self._isSet:
            return
        self._value = result
        self._isSet = True
        self._done.release()

    def _result(self, timeout: float | None) -> Any:
        if not self._isSet:
            if not self._done.acquire(True, -1 if timeout is None else timeout):
                raise crochet.TimeoutError()
            self._done.release()
        self._result_retrieved = True
        return self._value

    def __del__(self) -> None:
        if self._result_retrieved or not self._isSet:
            return
        if isinstance(self._value, Failure):
            err(self._value, "Unhandled error in EventualResult")


def _deliver(result: Any, eventual: Any) -> None:
    target = eventual()
    if target is not None:
        target._set_result(result)
    elif isinstance(result, Failure):
        err(result, "Unhandled error in EventualResult")


def _runInReactor(
    eventual: _EventualResult,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    try:
        value = func(*args, **kwargs)
    except BaseException:
        eventual._set_result(Failure())
        return
    if isinstance(value, Deferred):
        eventual._deferred = value
        # A weak reference, as crochet does: no cycle through the result.
        value.addBoth(_deliver, weakref.ref(eventual))
    elif iscoroutine(value):
        d = Deferred.fromCoroutine(value)
        eventual._deferred = d
        d.addBoth(_deliver, weakref.ref(eventual))
    else:
        eventual._set_result(value)


def callInReactor(
    reactor: Any,
    func: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> crochet.EventualResult:
    """Call ``func`` in the reactor thread; return its eventual result.

    What :func:`crochet.run_in_reactor` does, with less work per call: no
    per-call closures or registry, and a bare lock to wake the waiting thread.
    Unlike crochet's, results still pending when the reactor stops are not
    failed with ``ReactorStopped``; their waiters time out.

    :param reactor: the running reactor.
    :param func: the function; it may return a value, a Deferred or a
        coroutine.
    :param args: its positional arguments.
    :param kwargs: its keyword arguments.
    :return: a :class:`crochet.EventualResult` of its result.
    """
    eventual = _EventualResult(reactor)
    reactor.callFromThread(_runInReactor, eventual, func, args, kwargs or {})
    return eventual


def synchronous(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a function as one that may block, so never in the reactor thread.

    :param func: the function to wrap.
    :return: the wrapped function, which provides :class:`ISynchronous`.
    :raises AssertionError: (from the wrapper) when it is called in the reactor
        thread while the reactor runs.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if isInReactorThread() and _reactor().running:
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
        d.addTimeout(timeout, _reactor(clock))
    return d


def pause(duration: float, clock: Any = None) -> Deferred[None]:
    """Return a Deferred that fires with ``None`` after ``duration`` seconds.

    Cancelling it stops the timer.

    :param duration: seconds to wait.
    :param clock: the clock to wait on; the global reactor when ``None``.
    :return: a cancellable Deferred.
    """
    clock = _reactor(clock)

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
    clock = _reactor(clock)
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
            d.addTimeout(timeout, _reactor(clock))
        return d
