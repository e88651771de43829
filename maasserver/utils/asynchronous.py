"""Bridge ordinary region threads and the reactor thread.

A region process runs Twisted's reactor in a background thread (through
:mod:`crochet`) while request handlers and other ordinary code run in their
own threads. The helpers here let such a thread fan work out to the reactor
and collect the answers, or queue work for the reactor to do later:

* :func:`gather` runs many calls in the reactor at once and hands their
  results back to the calling thread as they arrive, giving up on the stragglers
  at a deadline.
* :class:`DeferredHooks` collects, per thread, Deferreds to be fired (or
  cancelled) later, for example once a database transaction has committed.
* :class:`UseOnceIterator` is an iterator that refuses to be iterated twice, so
  a consumer cannot silently see an exhausted stream as an empty one.

(MAAS calls this module ``maasserver.utils.async``, a name Python 3.7 and later
cannot import because ``async`` is a keyword.)
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from twisted.internet.defer import (
    AlreadyCalledError,
    CancelledError,
    Deferred,
    maybeDeferred,
)
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from provisioningserver.utils.twisted import (
    isInReactorThread,
    resolveReactor,
    synchronous,
)

__all__ = [
    "AlreadyIterated",
    "DeferredHooks",
    "GatherResults",
    "IteratorReusedError",
    "UseOnceIterator",
    "gather",
]

T = TypeVar("T")

log = Logger()


class AlreadyIterated(RuntimeError):
    """Raised when a :class:`UseOnceIterator` is iterated a second time."""


#: MAAS's name for :class:`AlreadyIterated` (MAAS defines it in
#: ``maasserver.exceptions`` and imports it into this module), so that
#: ``except IteratorReusedError`` written against MAAS catches it here.
IteratorReusedError = AlreadyIterated


class UseOnceIterator(Iterator[T]):
    """An iterator that can be iterated only once.

    The first :func:`iter` call (which a ``for`` loop or :class:`list` makes)
    returns the iterator itself; every later one raises
    :class:`AlreadyIterated`. A second loop over a plain iterator quietly sees
    nothing, which hides bugs where results are consumed twice; this one makes
    such a mistake loud. :func:`next` works as usual at any time.

    :param iterable: the values to yield, in order.
    """

    def __init__(self, iterable: Iterable[T]) -> None:
        self._iterator: Iterator[T] = iter(iterable)
        self._iterated = False

    def __iter__(self) -> UseOnceIterator[T]:
        """Return this iterator, the first time only.

        :return: this iterator.
        :raises AlreadyIterated: when it has been iterated before.
        """
        if self._iterated:
            raise AlreadyIterated(
                f"{type(self).__name__} can be iterated only once; it has been "
                "iterated already"
            )
        self._iterated = True
        return self

    def __next__(self) -> T:
        """Return the next value.

        :return: the next value from the wrapped iterable.
        :raises StopIteration: when there are no more values.
        """
        return next(self._iterator)


class _Batch(list[Any]):
    """Results that arrived in one turn of the reactor, handed over together
    (one wake-up of the calling thread, not one per result)."""


class _Finished:
    """Put on a gather's queue last; it carries the calls that timed out."""

    def __init__(self, timedOut: list[Callable[[], Any]]) -> None:
        self.timedOut = timedOut


class GatherResults(UseOnceIterator[Any]):
    """The results of :func:`gather`, in the order they arrive.

    Each value is a call's result, or a :class:`~twisted.python.failure.Failure`
    for a call that failed. Iterating blocks the calling thread until the next
    result arrives, and ends once every call has answered or the deadline has
    passed. :func:`gather` creates these; there is no need to make one.

    :param results: the queue the reactor puts results on; a private
        end-of-results marker, put last, ends the iteration.
    :ivar timedOut: the calls (the objects given to :func:`gather`) that had
        not answered by the deadline, in the order they were given. It is
        complete once iteration has ended; until then it is an empty list.
    """

    def __init__(self, results: queue.Queue[Any]) -> None:
        self.timedOut: list[Callable[[], Any]] = []
        super().__init__(self._receive(results))

    def _receive(self, results: queue.Queue[Any]) -> Iterator[Any]:
        while True:
            result = results.get()
            if type(result) is _Batch:
                yield from result
            elif isinstance(result, _Finished):
                self.timedOut = result.timedOut
                return
            else:
                yield result


class _Gathering:
    """The reactor-side state of one :func:`gather`.

    Every method runs in the reactor thread; only the results queue is shared
    with the calling thread.
    """

    def __init__(
        self,
        calls: list[Callable[[], Any]],
        results: queue.Queue[Any],
        timeout: float | None,
        reactor: Any,
    ) -> None:
        self._calls = calls
        self._results = results
        self._timeout = timeout
        self._reactor = reactor
        self._outstanding: dict[int, Deferred[Any]] = {}
        self._starting = True
        self._finished = False
        self._timer: Any = None
        self._pending: list[Any] = []
        self._flushCall = False

    def start(self) -> None:
        """Make every call, then wait for the answers until the deadline."""
        for index, call in enumerate(self._calls):
            d = maybeDeferred(call)
            self._outstanding[index] = d
            d.addBoth(self._answered, index)
        self._starting = False
        if not self._outstanding:
            self._finish()
        elif self._timeout is not None:
            self._timer = self._reactor.callLater(self._timeout, self._expire)

    def _answered(self, result: Any, index: int) -> None:
        if self._finished:
            # Finished already: this is a timed-out call answering the
            # cancellation, so nobody is listening for it any more.
            return None
        del self._outstanding[index]
        self._pending.append(result)
        if not self._starting and not self._outstanding:
            self._finish()
        elif not self._flushCall:
            # Hand over what arrives in this turn of the reactor together, at
            # its next turn (whatever clock the deadline is measured with).
            self._flushCall = True
            self._reactor.callFromThread(self._flush)
        return None

    def _flush(self) -> None:
        self._flushCall = False
        if self._pending:
            batch, self._pending = _Batch(self._pending), []
            self._results.put(batch)

    def _finish(self) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._flush()
        self._results.put(_Finished([]))

    def _expire(self) -> None:
        self._timer = None
        self._finished = True
        self._flush()
        outstanding = self._outstanding
        timedOut = [self._calls[index] for index in outstanding]
        try:
            for index, d in outstanding.items():
                try:
                    d.cancel()
                except Exception:
                    log.failure(
                        "Cancelling timed-out call {call!r} failed.",
                        call=self._calls[index],
                        level=LogLevel.error,
                    )
        finally:
            self._results.put(_Finished(timedOut))


@synchronous
def gather(
    calls: Iterable[Callable[[], Any]],
    timeout: float | None = 10.0,
    *,
    reactor: Any = None,
) -> GatherResults:
    """Make calls in the reactor and hand their results back as they arrive.

    Every call is made at once, in the reactor thread, with no arguments. A
    call may return a plain value, a :class:`~twisted.internet.defer.Deferred`
    or a coroutine (:func:`~twisted.internet.defer.maybeDeferred` decides).
    The returned iterator yields, in the calling thread and in the order they
    arrive, each call's result, or a :class:`~twisted.python.failure.Failure`
    for a call that raised or failed.

    At ``timeout`` seconds, measured by the reactor, every call still waiting
    is cancelled (:meth:`~twisted.internet.defer.Deferred.cancel`) and the
    iteration ends. Timed-out calls yield nothing, not even the
    :class:`~twisted.internet.defer.CancelledError` their cancellation causes;
    they are listed in the iterator's ``timedOut`` once iteration has ended.
    When every call has answered, the iteration ends at once.

    Use it from a thread that may block, never from the reactor thread::

        for result in gather([partial(client, Ping) for client in clients]):
            if isinstance(result, Failure):
                ...

    :param calls: callables taking no arguments. The iterable is consumed in
        the calling thread before any call is made.
    :param timeout: seconds to wait for the answers; ``None`` waits without a
        deadline.
    :param reactor: the reactor to make the calls in and to measure the
        timeout with; the global reactor when ``None``. It must be running in
        another thread (as crochet runs it).
    :return: a :class:`GatherResults` (a :class:`UseOnceIterator`) of results
        and failures, with a ``timedOut`` list of the calls that did not
        answer in time.
    :raises ValueError: when ``timeout`` is negative.
    :raises AssertionError: when called in the reactor thread.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0 seconds; not {timeout!r}")
    calls = list(calls)
    results: queue.Queue[Any] = queue.Queue()
    if calls:
        reactor = resolveReactor(reactor)
        gathering = _Gathering(calls, results, timeout, reactor)
        reactor.callFromThread(gathering.start)
    else:
        results.put(_Finished([]))
    return GatherResults(results)


def _logHookFailure(failure: Failure, hook: Deferred[Any]) -> None:
    log.failure(
        "Hook {hook!r} failed; carrying on with the others.",
        failure,
        level=LogLevel.error,
        hook=hook,
    )
    return None


def _suppressCancelled(failure: Failure, hook: Deferred[Any]) -> None:
    if failure.check(CancelledError) is None:
        log.failure(
            "Hook {hook!r} failed while being cancelled.",
            failure,
            level=LogLevel.error,
            hook=hook,
        )
    return None


class DeferredHooks(threading.local):
    """Deferreds to fire, or cancel, later: one collection per thread.

    Code running in a thread (typically inside a database transaction) adds
    hooks; later the same thread either fires them all, in order, with
    :meth:`fire` (say after a commit) or cancels them all with :meth:`reset`
    (say after a rollback). Hooks are Deferreds whose callbacks do the work;
    they are fired and cancelled in the reactor thread.

    The collection is thread-local: hooks added in one thread are invisible
    in every other thread, and each thread fires or resets only its own.

    :param reactor: the reactor to fire and cancel hooks in; the global
        reactor when ``None``. It must be running in another thread (as
        crochet runs it).
    :ivar hooks: this thread's pending hooks, oldest first.
    """

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self.hooks: deque[Deferred[Any]] = deque()

    def __len__(self) -> int:
        """Count this thread's pending hooks.

        :return: the number of hooks added and not yet fired or reset.
        """
        return len(self.hooks)

    def __iter__(self) -> Iterator[Deferred[Any]]:
        """Iterate over a snapshot of this thread's pending hooks.

        :return: an iterator over the hooks, oldest first.
        """
        return iter(tuple(self.hooks))

    def add(self, d: Deferred[Any]) -> None:
        """Add a hook to this thread's collection.

        :param d: an unfired :class:`~twisted.internet.defer.Deferred`; its
            callbacks receive ``None`` when it is fired.
        :raises TypeError: when ``d`` is not a Deferred.
        """
        if not isinstance(d, Deferred):
            raise TypeError(f"a hook must be a Deferred; not {d!r}")
        self.hooks.append(d)

    @synchronous
    def fire(self) -> None:
        """Fire this thread's hooks one after another, in the reactor thread.

        Each hook is fired with ``None`` in the reactor thread, and the next is
        fired only once the previous one's callbacks have finished (including
        any Deferred they returned). A hook that fails, or was fired already,
        is logged and the others still run. No hooks are left afterwards.

        :return: ``None``, once every hook has run.
        :raises AssertionError: when called in the reactor thread.
        """
        reactor = resolveReactor(self._reactor)
        try:
            while self.hooks:
                hook = self.hooks.popleft()
                blockingCallFromThread(reactor, self._fireInReactor, hook)
        finally:
            # Only when interrupted are there hooks left; cancel them.
            self.reset()

    @staticmethod
    def _fireInReactor(hook: Deferred[Any]) -> Deferred[Any] | None:
        try:
            hook.callback(None)
        except AlreadyCalledError:
            log.failure(
                "Hook {hook!r} was fired already; carrying on with the others.",
                level=LogLevel.error,
                hook=hook,
            )
            return None
        return hook.addErrback(_logHookFailure, hook)

    def reset(self) -> None:
        """Cancel this thread's hooks, in the reactor thread, and forget them.

        The :class:`~twisted.internet.defer.CancelledError` a cancellation
        causes is suppressed; any other failure is logged. From the reactor
        thread, this cancels the reactor thread's own hooks directly.

        :return: ``None``, once every hook has been cancelled.
        """
        if not self.hooks:
            return
        hooks = list(self.hooks)
        self.hooks.clear()
        if isInReactorThread():
            self._cancelInReactor(hooks)
        else:
            reactor = resolveReactor(self._reactor)
            blockingCallFromThread(reactor, self._cancelInReactor, hooks)

    @staticmethod
    def _cancelInReactor(hooks: list[Deferred[Any]]) -> None:
        for hook in hooks:
            hook.addErrback(_suppressCancelled, hook)
            try:
                hook.cancel()
            except Exception:
                log.failure(
                    "Cancelling hook {hook!r} failed.",
                    level=LogLevel.error,
                    hook=hook,
                )
