"""Two AMP peers in memory, and what they did, in comparable form.

:class:`Link` joins two protocols through in-memory transports, as
:mod:`twisted.test.iosim` does, but it also plays the part of the reactor
where the comparison needs it: an exception that escapes ``dataReceived``
closes the connection (and discards what that side had not sent yet), as
Twisted's TCP transport does; data is delivered in the pieces a test chooses
(to split boxes at any byte boundary); and file descriptors sent with
``sendFileDescriptor`` arrive before the bytes that name them. Nothing runs
on a reactor and nothing waits: :meth:`Link.flush` moves bytes until both
sides are quiet.

:func:`outcome` reduces a finished exchange to plain, comparable values: the
boxes each side wrote (with the one varying part of an ``Unknown Error``
description checked and then replaced by a placeholder), what each call
gave its caller, and the connection's fate.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from provisioningserver.rpc.exceptions import ArgumentTooLarge
from twisted.internet import error as neterror
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

__all__ = [
    "Call",
    "End",
    "Link",
    "RawPeer",
    "canon",
    "describeError",
    "parseBoxes",
    "normaliseStream",
]

_CLOSED = (neterror.ConnectionDone, neterror.ConnectionLost, neterror.ConnectionClosed)


class MemoryTransport(StringTransport):
    """One end of an in-memory connection.

    Writes are buffered until the :class:`Link` moves them. ``abortConnection``
    discards what is buffered, as a TCP abort does.
    """

    def __init__(self, host: int, peer: int) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", host),
            peerAddress=IPv4Address("TCP", "127.0.0.1", peer),
        )
        self.fds: list[int] = []
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        super().write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True

    def sendFileDescriptor(self, descriptor: int) -> None:
        self.fds.append(descriptor)

    # The protocol may pause and resume reading (back-pressure); in memory
    # there is nothing to pause.
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@dataclass(eq=False)
class End:
    """One side of a :class:`Link`.

    :ivar name: ``"caller"`` or ``"responder"`` (or what the test chose).
    :ivar proto: the protocol.
    :ivar transport: its transport.
    :ivar wrote: every byte that left this side, in order.
    :ivar crashed: exceptions that escaped this side's ``dataReceived``.
    :ivar lost: the reason given to ``connectionLost``, once called.
    :ivar closedFirst: whether this side closed the connection.
    """

    name: str
    proto: Any
    transport: MemoryTransport
    wrote: bytearray = field(default_factory=bytearray)
    crashed: list[Failure] = field(default_factory=list)
    lost: Failure | None = None
    closedFirst: bool = False

    @property
    def closed(self) -> bool:
        return self.transport.closed


class RawPeer(Protocol):
    """A peer that only records the bytes it receives: a test writes raw
    bytes through its transport."""

    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Link:
    """Two protocols connected in memory.

    :param responder: the accepting side.
    :param caller: the connecting side.
    :param pieces: how to cut the bytes delivered to each side, as a function
        of the bytes; all at once when ``None``.
    """

    def __init__(
        self,
        responder: Any,
        caller: Any,
        *,
        pieces: Callable[[bytes], list[bytes]] | None = None,
    ) -> None:
        self.responder = End("responder", responder, MemoryTransport(5250, 40000))
        self.caller = End("caller", caller, MemoryTransport(40000, 5250))
        self.pieces = pieces
        responder.makeConnection(self.responder.transport)
        caller.makeConnection(self.caller.transport)

    def other(self, end: End) -> End:
        return self.caller if end is self.responder else self.responder

    def flush(self, rounds: int = 10_000) -> None:
        """Move bytes both ways, and close what was closed, until quiet.

        :param rounds: give up (an assertion error) after this many passes.
        """
        for _ in range(rounds):
            moved = self._move(self.caller) | self._move(self.responder)
            closed = self._closeIfDone(self.responder) | self._closeIfDone(self.caller)
            if not (moved or closed):
                return
        raise AssertionError(f"the link was still busy after {rounds} rounds")

    def _move(self, src: End) -> bool:
        transport = src.transport
        if transport.closed:
            return False
        data = transport.value()
        fds = transport.fds
        if not data and not fds:
            return False
        transport.clear()
        transport.fds = []
        if transport.aborted:
            return True  # An abort discards what was not sent.
        src.wrote += data
        dst = self.other(src)
        if dst.closed or dst.transport.disconnecting:
            return True  # Closing: it reads no more.
        for fd in fds:
            dst.proto.fileDescriptorReceived(fd)
        for piece in self.pieces(data) if self.pieces else [data]:
            if dst.closed or dst.transport.disconnecting:
                break
            try:
                dst.proto.dataReceived(piece)
            except Exception:  # noqa: BLE001 - the reactor's part: see below
                # Twisted's TCP transport logs an exception that escapes
                # dataReceived and closes the connection with it as the
                # reason; what the protocol had not yet sent is lost.
                reason = Failure()
                dst.crashed.append(reason)
                dst.transport.clear()
                dst.transport.aborted = True
                self._close(dst, reason)
                break
        return True

    def _closeIfDone(self, end: End) -> bool:
        transport = end.transport
        if transport.closed or not transport.disconnecting:
            return False
        if transport.value() and not transport.aborted:
            return False  # Sent first, then closed.
        if transport.aborted:
            reason = Failure(neterror.ConnectionAborted())
        else:
            reason = Failure(neterror.ConnectionDone())
        self._close(end, reason)
        return True

    def _close(self, end: End, reason: Failure) -> None:
        peer = self.other(end)
        end.closedFirst = not peer.closed
        for side, why in (
            (end, reason),
            (peer, Failure(neterror.ConnectionDone("the peer closed"))),
        ):
            if side.closed:
                continue
            side.transport.closed = True
            side.transport.disconnecting = True
            side.lost = why
            side.proto.connectionLost(why)

    @property
    def fate(self) -> str:
        """``"open"``, or which side closed the connection."""
        for end in (self.responder, self.caller):
            if end.closed and end.closedFirst:
                return f"closed by {end.name}"
        return "open"


# Comparable values.


def canon(value: Any) -> Any:
    """Reduce a value to a form that compares by content (NaN equal to NaN,
    ``FilePath`` by path, dict keys sorted).

    :param value: a value an AMP argument type produced.
    :return: nested tuples of plain values.
    """
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), canon(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(canon(v) for v in value))
    if isinstance(value, float | Decimal):
        return (type(value).__name__, repr(value))
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), repr(value.utcoffset()))
    if isinstance(value, FilePath):
        return ("FilePath", value.path)
    return (type(value).__name__, repr(value))


_UNKNOWN = re.compile(
    r"Unknown Error \[(?P<host>[^\]:]*):pid=(?P<pid>[^:\]]*):cmd=(?P<cmd>[^:\]]*)"
    r":ask=(?P<ask>[^\]]*)\]"
)


def normaliseDescription(text: str, ask: str | None = None) -> str:
    """Replace the reference in an ``Unknown Error [ref]`` description with
    ``<ref>`` once it is checked: the host and process are this one's, the
    command is a plain name, the ask is ``ask`` when given.

    A reference that does not check out is kept, marked, so that a
    comparison fails and shows it.

    :param text: a description, or any text containing one.
    :param ask: the tag of the command that failed, when known.
    :return: the text with each checked reference replaced.
    """

    def replace(match: re.Match[str]) -> str:
        ok = (
            match["host"] == socket.gethostname()
            and match["pid"] == str(os.getpid())
            and re.fullmatch(r"[A-Za-z0-9_.-]+", match["cmd"]) is not None
            and (ask is None or match["ask"] == ask)
        )
        return "Unknown Error [<ref>]" if ok else f"Unknown Error [BAD: {match[0]}]"

    return _UNKNOWN.sub(replace, text)


Pairs = tuple[tuple[bytes, bytes], ...]


def parseBoxes(data: bytes) -> tuple[list[Pairs], bytes]:
    """Parse AMP boxes as they are on the wire, keeping key order.

    :param data: a byte stream.
    :return: the complete boxes (each a tuple of ``(key, value)`` in wire
        order) and whatever follows the last complete box.
    """
    boxes: list[Pairs] = []
    pos = 0
    while True:
        start = pos
        pairs: list[tuple[bytes, bytes]] = []
        while True:
            if len(data) - pos < 2:
                return boxes, data[start:]
            (n,) = struct.unpack_from(">H", data, pos)
            if n == 0:
                pos += 2
                boxes.append(tuple(pairs))
                break
            if n > amp.MAX_KEY_LENGTH or len(data) - pos < 2 + n + 2:
                return boxes, data[start:]
            key = data[pos + 2 : pos + 2 + n]
            pos += 2 + n
            (m,) = struct.unpack_from(">H", data, pos)
            if len(data) - pos < 2 + m:
                return boxes, data[start:]
            pairs.append((key, data[pos + 2 : pos + 2 + m]))
            pos += 2 + m


def normaliseStream(data: bytes) -> tuple[tuple[Pairs, ...], bytes]:
    """The boxes of a stream, with ``Unknown Error`` references checked and
    replaced (see :func:`normaliseDescription`).

    :param data: what one side wrote.
    :return: ``(boxes, trailing bytes)``.
    """
    boxes, rest = parseBoxes(data)
    out = []
    for box in boxes:
        keys = dict(box)
        ask = keys.get(amp.ERROR)
        out.append(
            tuple(
                (
                    key,
                    normaliseDescription(
                        value.decode("utf-8", "replace"),
                        ask.decode("ascii", "replace") if ask is not None else None,
                    ).encode("utf-8")
                    if key == amp.ERROR_DESCRIPTION
                    else value,
                )
                for key, value in box
            )
        )
    return tuple(out), rest


def describeError(error: BaseException) -> tuple[Any, ...]:
    """Reduce an exception a caller received to comparable values.

    Connection losses compare equal to each other (how a peer closed a TCP
    connection is not part of AMP's contract); ``UnhandledCommand`` and its
    subclasses compare by type and description (with its reference
    normalised); ``ArgumentTooLarge`` by its attributes; anything else by
    type and message.

    :param error: the exception.
    :return: a tuple.
    """
    if isinstance(error, _CLOSED):
        return ("connection closed",)
    if isinstance(error, ArgumentTooLarge):
        # This project's own exception: its attributes are the contract, its
        # wording is not.
        return (type(error), error.command, error.key, error.size, error.limit)
    if isinstance(error, amp.UnhandledCommand):
        description = getattr(error, "description", None)
        if description is None:
            args = error.args
            description = args[1] if len(args) == 2 else str(error)
        extra = ()
        reference = getattr(error, "reference", _MISSING)
        if reference is not _MISSING:
            match = _UNKNOWN.search(str(description))
            expected = match[0][len("Unknown Error [") : -1] if match else None
            extra = (("reference matches description", reference == expected),)
        return (type(error), normaliseDescription(str(description)), *extra)
    return (type(error), normaliseDescription(str(error)))


_MISSING = object()


@dataclass(eq=False)
class Call:
    """One call made by the caller, and what it got.

    :ivar result: ``("answer", canon(value))``, ``("failed", ...)`` (see
        :func:`describeError`), ``("raised", ...)`` for an exception raised
        by ``callRemote`` itself, ``("sent",)`` for a command that wants no
        answer, or ``("pending",)``.
    """

    deferred: Deferred[Any] | None = None
    result: tuple[Any, ...] = ("pending",)
    error: BaseException | None = None

    @classmethod
    def make(
        cls, proto: Any, command: Any, *args: Any, handled: bool = True, **kw: Any
    ) -> Call:
        """Call ``command`` through ``proto.callRemote`` and watch the result.

        :param handled: whether the caller handles a failure (when ``False``
            the failure is recorded and passed on, unhandled, as a careless
            caller would leave it).
        """
        call = cls()
        try:
            d = proto.callRemote(command, *args, **kw)
        except Exception as e:  # noqa: BLE001 - recorded for comparison
            call.result = ("raised", *describeError(e))
            return call
        if d is None:
            call.result = ("sent",)
            return call
        call.deferred = d

        def answered(value: Any) -> Any:
            call.result = ("answer", canon(value))
            return value

        def failed(failure: Failure) -> Any:
            call.error = failure.value
            call.result = ("failed", *describeError(failure.value))
            return None if handled else failure

        d.addCallbacks(answered, failed)
        return call

    def seen(self, link: Link) -> tuple[Any, ...]:
        """The result, with a failure caused by the connection being closed
        reported as such.

        When an exception escapes ``dataReceived``, Twisted closes the
        connection with that exception as the reason, and AMP fails every
        outstanding call with it: those calls fail because the connection
        was closed, whatever the exception (``NoEmptyBoxes``, ``KeyError``,
        ...). Which exception carries the news is not part of the contract;
        that the connection was closed is.
        """
        if self.error is not None and any(
            self.error is crash.value
            for end in (link.caller, link.responder)
            for crash in end.crashed
        ):
            return ("failed", "connection closed")
        return self.result

    def settle(self) -> None:
        """Consume a failure left unhandled on purpose, once compared, so
        that it is not logged when collected."""
        if self.deferred is not None:
            self.deferred.addErrback(lambda _: None)
