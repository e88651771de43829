"""A tiny AMP wire codec and blocking peers, for fuzzing live processes.

Nothing here uses Twisted: the fuzz tests talk to real region and cluster
processes over plain sockets, so that what they send is exactly the bytes
they mean (including bytes no AMP implementation would ever produce).

An AMP box on the wire is a sequence of key/value pairs, each a 2-byte
big-endian length followed by that many bytes, ended by a zero-length key
(two zero bytes).

Every wait here is bounded by a socket timeout or a deadline; nothing
sleeps.
"""

from __future__ import annotations

import errno
import itertools
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from provisioningserver.rpc.handshake import answerChallenge
from provisioningserver.security import calculate_digest, digests_match

__all__ = [
    "BoxDecoder",
    "authenticate_responder",
    "check_authenticate",
    "Peer",
    "PeerClosed",
    "RemoteError",
    "Reply",
    "ServedPeer",
    "decode_boxes",
    "encode_box",
    "encode_pairs",
    "exchange",
    "join_chunks",
]

MAX_KEY = 0xFF
MAX_VALUE = 0xFFFF

Box = dict[bytes, bytes]
Pairs = Iterable[tuple[bytes, bytes]]


def _b(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def encode_pairs(pairs: Pairs, *, end: bool = True) -> bytes:
    """Encode key/value pairs as one AMP box (duplicates allowed).

    :param pairs: the pairs, in order; keys must be 1-255 bytes, values at
        most 65,535 bytes (the limits a length prefix can express, and AMP's
        key limit).
    :param end: whether to end the box with the empty key.
    :raises ValueError: when a key or value does not fit.
    """
    out = bytearray()
    for key, value in pairs:
        if not 0 < len(key) <= MAX_KEY:
            raise ValueError(f"a key must be 1-{MAX_KEY} bytes; got {len(key)}")
        if len(value) > MAX_VALUE:
            raise ValueError(f"a value must be at most {MAX_VALUE} bytes")
        out += struct.pack(">H", len(key)) + key
        out += struct.pack(">H", len(value)) + value
    if end:
        out += b"\x00\x00"
    return bytes(out)


def encode_box(box: Mapping[bytes | str, bytes | str]) -> bytes:
    """Encode a box given as a mapping (text is encoded as UTF-8).

    :param box: key to value.
    :return: the box's bytes.
    """
    return encode_pairs((_b(k), _b(v)) for k, v in box.items())


class BoxDecoder:
    """Decodes boxes from a byte stream fed in pieces.

    :param strict: when true, a key longer than 255 bytes (which AMP
        refuses) makes the stream :attr:`broken`; otherwise it is decoded
        like any other.
    :ivar broken: why the stream cannot be decoded further, or ``None``.
    """

    def __init__(self, *, strict: bool = True) -> None:
        self._buffer = bytearray()
        self._box: Box = {}
        self._key: bytes | None = None
        self._strict = strict
        self.broken: str | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not make up a whole box yet."""
        return len(self._buffer) + (1 if self._box or self._key else 0)

    def feed(self, data: bytes) -> list[Box]:
        """Add bytes; return the boxes they complete.

        :param data: the next bytes of the stream.
        :return: the completed boxes, in order.
        """
        boxes: list[Box] = []
        if self.broken is not None:
            return boxes
        self._buffer += data
        buf = self._buffer
        offset = 0
        while len(buf) - offset >= 2:
            (length,) = struct.unpack_from(">H", buf, offset)
            if self._key is None and self._strict and length > MAX_KEY:
                self.broken = f"key length {length} > {MAX_KEY}"
                break
            if len(buf) - offset - 2 < length:
                break
            string = bytes(buf[offset + 2 : offset + 2 + length])
            offset += 2 + length
            if self._key is None:
                if not string:
                    boxes.append(self._box)
                    self._box = {}
                else:
                    self._key = string
            else:
                self._box[self._key] = string
                self._key = None
        del buf[:offset]
        return boxes


def decode_boxes(data: bytes, *, strict: bool = False) -> list[Box]:
    """Decode the whole boxes at the start of ``data`` (tolerantly).

    :param data: bytes.
    :param strict: as for :class:`BoxDecoder`.
    :return: the boxes that could be decoded.
    """
    return BoxDecoder(strict=strict).feed(data)


def join_chunks(box: Box) -> Box:
    """Reassemble chunked values as the wire contract says (a copy).

    A value over 65,535 bytes travels as chunks: the first under its own key
    ``k``, the rest under ``k.2``, ``k.3``, ...; ``k`` is joined with them
    when ``k`` and ``k.2`` are both present.

    :param box: a box as decoded.
    :return: a new box with the chunks joined.
    """
    out = dict(box)
    for key in [k for k in box if k.endswith(b".2")]:
        base = key[:-2]
        if base not in out:
            continue
        parts = [out[base]]
        n = 2
        while (part := out.pop(b"%s.%d" % (base, n), None)) is not None:
            parts.append(part)
            n += 1
        out[base] = b"".join(parts)
    return out


@dataclass
class Reply:
    """What came back from a peer in one :func:`exchange`.

    :ivar boxes: the boxes received.
    :ivar data: every byte received.
    :ivar closed: the peer closed (EOF) or reset the connection.
    :ivar reset: it was a reset (or a write failed because it closed).
    :ivar hung: nothing arrived, and no close, within the idle bound.
    :ivar broken: set when the bytes received are not valid AMP framing.
    :ivar seconds: how long the exchange took.
    """

    boxes: list[Box] = field(default_factory=list)
    data: bytes = b""
    closed: bool = False
    reset: bool = False
    hung: bool = False
    broken: str | None = None
    seconds: float = 0.0


_GONE = (
    errno.ECONNRESET,
    errno.EPIPE,
    errno.ECONNABORTED,
    errno.ENOTCONN,
    errno.ESHUTDOWN,
)


def exchange(
    sock: socket.socket,
    payload: bytes,
    *,
    idle: float = 5.0,
    total: float = 60.0,
    ending: str = "eof",
    decoder: BoxDecoder | None = None,
    boxes: list[Box] | None = None,
) -> Reply:
    """Send ``payload`` while reading, end the case, and read until closed.

    Sending and reading are interleaved (with a selector) so a peer that
    answers while it reads, and stops reading while its answers are not
    read, cannot deadlock the exchange.

    :param sock: a connected socket.
    :param payload: the bytes to send.
    :param idle: seconds without any byte or close before the peer counts
        as hung.
    :param total: a bound on the whole exchange.
    :param ending: ``"eof"``: shut down writing once the payload is sent,
        then read until the peer closes; ``"rst"``: arm a reset (``SO_LINGER``
        0) once the payload is sent, reading nothing more (the caller's close
        sends it).
    :param decoder: the decoder to continue with, when the connection has
        been read from before (a :class:`Peer`'s).
    :param boxes: boxes already decoded but not consumed, to include.
    :return: the :class:`Reply`.
    """
    started = time.monotonic()
    reply = Reply(boxes=list(boxes or []))
    decoder = decoder if decoder is not None else BoxDecoder()
    received = bytearray()
    view = memoryview(payload)
    sent = 0
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = started + total
    last = started
    shut = False
    try:
        while True:
            if sent >= len(view) and not shut:
                if ending == "rst":
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    break
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError as error:
                    if error.errno not in _GONE:
                        raise
                shut = True
                selector.modify(sock, selectors.EVENT_READ)
            now = time.monotonic()
            if now >= deadline or now - last >= idle:
                reply.hung = True
                break
            events = selector.select(min(deadline, last + idle) - now)
            for _, mask in events:
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        data = None
                    except OSError as error:
                        if error.errno not in _GONE:
                            raise
                        reply.closed = reply.reset = True
                        break
                    if data is None:
                        continue
                    if not data:
                        reply.closed = True
                        break
                    last = time.monotonic()
                    received += data
                    reply.boxes += decoder.feed(data)
                if mask & selectors.EVENT_WRITE and sent < len(view):
                    try:
                        sent += sock.send(view[sent : sent + (1 << 16)])
                    except BlockingIOError:
                        pass
                    except OSError as error:
                        if error.errno not in _GONE:
                            raise
                        # The peer is gone; read what it said first.
                        sent = len(view)
                        shut = True
                        reply.reset = True
                        selector.modify(sock, selectors.EVENT_READ)
                    last = time.monotonic()
            if reply.closed:
                break
    finally:
        selector.close()
    reply.data = bytes(received)
    reply.broken = decoder.broken
    reply.seconds = time.monotonic() - started
    return reply


class PeerClosed(ConnectionError):
    """The peer closed the connection."""


class RemoteError(Exception):
    """The peer answered a call with an error box.

    :ivar box: the error box.
    """

    def __init__(self, box: Box) -> None:
        super().__init__(
            f"{box.get(b'_error_code', b'?').decode('ascii', 'replace')}: "
            f"{box.get(b'_error_description', b'').decode('utf-8', 'replace')}"
        )
        self.box = box
        self.code = box.get(b"_error_code")


Responder = Callable[[Box], Mapping[bytes | str, bytes | str]]


class Peer:
    """A blocking AMP peer over one socket: it calls, and it answers the
    commands it has responders for while it waits.

    :param sock: a connected socket.
    :param responders: command name → function from the command box to the
        answer's arguments.
    :param timeout: the socket timeout: the bound on every wait.
    :param prefix: a prefix for the ask tags this peer sends (so they cannot
        be mistaken for another peer's).
    :ivar received: every command box received, in order.
    """

    def __init__(
        self,
        sock: socket.socket,
        responders: Mapping[bytes, Responder] | None = None,
        *,
        timeout: float = 10.0,
        prefix: str = "p",
    ) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        # Small boxes go out at once (no Nagle delay behind a delayed ACK).
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.responders = dict(responders or {})
        self._decoder = BoxDecoder()
        self._queue: list[Box] = []
        self._tags = (f"{prefix}{n:x}".encode() for n in itertools.count(1))
        self._posted: set[bytes] = set()
        self.received: list[Box] = []
        self.unhandled: set[bytes] = set()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def leftover(self) -> tuple[BoxDecoder, list[Box]]:
        """Hand over the stream's state, for :func:`exchange`.

        :return: the decoder and the boxes decoded but not consumed.
        """
        boxes, self._queue = self._queue, []
        return self._decoder, boxes

    def send(self, box: Mapping[bytes | str, bytes | str]) -> None:
        """Send one box.

        :param box: the box.
        """
        try:
            self.sock.sendall(encode_box(box))
        except (BrokenPipeError, ConnectionResetError) as error:
            raise PeerClosed("the peer closed the connection") from error

    def post(self, command: bytes | str, **arguments: bytes | str) -> None:
        """Call a command without waiting for its answer, which is dropped
        when it comes (as a MAAS cluster's first challenge, which a test
        peer sends only to start the region's side of the handshake).

        :param command: the command's name.
        :param arguments: its arguments.
        """
        tag = next(self._tags)
        self._posted.add(tag)
        self.send({b"_command": _b(command), b"_ask": tag, **arguments})

    def next_box(self) -> Box:
        """Read the next box (answers to posted calls are skipped).

        :return: the box.
        :raises PeerClosed: when the peer closes first.
        :raises TimeoutError: when nothing comes within the timeout.
        """
        while True:
            box = self._next_box()
            tag = box.get(b"_answer", box.get(b"_error"))
            if tag is not None and tag in self._posted and b"_command" not in box:
                self._posted.discard(tag)
                continue
            return box

    def settle(self) -> None:
        """Read until every posted call has been answered (those answers are
        dropped), answering the peer's commands meanwhile.

        :raises ValueError: when a box other than those arrives.
        """
        while self._posted:
            box = self._next_box()
            tag = box.get(b"_answer", box.get(b"_error"))
            if b"_command" in box:
                self.answer(box)
            elif tag in self._posted:
                self._posted.discard(tag)
            else:
                raise ValueError(f"unexpected box while settling: {box!r}")

    def _next_box(self) -> Box:
        while not self._queue:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError as error:
                raise PeerClosed("the peer reset the connection") from error
            if not data:
                raise PeerClosed("the peer closed the connection")
            self._queue += self._decoder.feed(data)
            if self._decoder.broken:
                raise ValueError(
                    f"bad AMP framing from the peer: {self._decoder.broken}"
                )
        return self._queue.pop(0)

    def answer(self, box: Box) -> None:
        """Answer a command box with its responder; leave it unanswered when
        there is none (a fake peer that stalls a handshake on purpose).

        :param box: the command box.
        """
        self.received.append(box)
        ask = box.get(b"_ask")
        responder = self.responders.get(box[b"_command"])
        if responder is None:
            if ask is not None and box[b"_command"] in self.unhandled:
                # As stock AMP (and so MAAS) answers a command it does not know.
                self.send(
                    {
                        b"_error": ask,
                        b"_error_code": b"UNHANDLED",
                        b"_error_description": b"Unhandled Command: "
                        + repr(box[b"_command"]).encode(),
                    }
                )
            return
        result = dict(responder(box))
        if ask is not None:
            self.send({b"_answer": ask, **result})

    def serve_until(self, done: Callable[[], bool]) -> None:
        """Answer commands until ``done()`` is true.

        :param done: the condition, checked after each command.
        :raises ValueError: when a box other than a command arrives.
        """
        while not done():
            box = self.next_box()
            if b"_command" not in box:
                raise ValueError(f"unexpected box while serving: {box!r}")
            self.answer(box)

    def call(self, command: bytes | str, **arguments: bytes | str) -> Box:
        """Call a command and return its answer box, answering the peer's
        commands meanwhile.

        :param command: the command's name.
        :param arguments: its arguments (text is encoded as UTF-8).
        :return: the answer box (``_answer`` and the response's keys).
        :raises RemoteError: when the peer answers with an error box.
        """
        tag = next(self._tags)
        self.send({b"_command": _b(command), b"_ask": tag, **arguments})
        while True:
            box = self.next_box()
            if b"_command" in box:
                self.answer(box)
            elif box.get(b"_answer") == tag:
                return box
            elif box.get(b"_error") == tag:
                raise RemoteError(box)
            else:
                raise ValueError(f"unexpected box while calling {command!r}: {box!r}")


class ServedPeer:
    """A :class:`Peer` kept alive by a thread of its own, for a connection
    that lives for a whole test run: the thread answers the peer's commands
    at once (its keepalives, say), optionally sends a keepalive of its own
    when the line is quiet, and hands answers to :meth:`call`.

    :param peer: the (handshaken) peer.
    :param keepalive: seconds of quiet after which to send ``Ping``; ``None``
        for none.
    """

    def __init__(self, peer: Peer, *, keepalive: float | None = None) -> None:
        self.peer = peer
        self.keepalive = keepalive
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._waiting: dict[bytes, queue.Queue[Box | None]] = {}
        self._tags = (f"s{n:x}".encode() for n in itertools.count(1))
        self._stopping = False
        peer.sock.settimeout(keepalive or 1.0)
        self._thread = threading.Thread(target=self._run, name="served-peer")
        self._thread.start()

    @property
    def received(self) -> list[Box]:
        """Every command box the peer sent."""
        return self.peer.received

    def _send(self, box: Mapping[bytes | str, bytes | str]) -> None:
        with self._lock:
            self.peer.send(box)

    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    box = self.peer.next_box()
                except TimeoutError:
                    if self.keepalive is not None and not self._stopping:
                        self._send({b"_command": b"Ping", b"_ask": b"keepalive"})
                    continue
                if b"_command" in box:
                    with self._lock:
                        self.peer.answer(box)
                    continue
                tag = box.get(b"_answer", box.get(b"_error"))
                waiting = self._waiting.pop(tag, None) if tag is not None else None
                if waiting is not None:
                    waiting.put(box)
        except (PeerClosed, OSError, ValueError) as error:
            if not self._stopping:
                self.error = error
        finally:
            for waiting in list(self._waiting.values()):
                waiting.put(None)

    def call(
        self, command: bytes | str, *, timeout: float = 30.0, **arguments: bytes | str
    ) -> Box:
        """Call a command; as :meth:`Peer.call`, bounded by ``timeout``.

        :raises PeerClosed: when the connection is (or gets) closed.
        """
        if not self._thread.is_alive():
            raise PeerClosed(f"the connection is gone: {self.error!r}")
        tag = next(self._tags)
        waiting: queue.Queue[Box | None] = queue.Queue()
        self._waiting[tag] = waiting
        self._send({b"_command": _b(command), b"_ask": tag, **arguments})
        try:
            box = waiting.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer to {command!r} in {timeout}s") from None
        if box is None:
            raise PeerClosed(f"the connection is gone: {self.error!r}")
        if b"_error" in box:
            raise RemoteError(box)
        return box

    def close(self) -> None:
        """Stop the thread and close the connection."""
        self._stopping = True
        try:
            self.peer.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(30)
        self.peer.close()


def authenticate_responder(secret: bytes, role: bytes | None = None) -> Responder:
    """A responder that answers ``Authenticate`` challenges correctly.

    :param secret: the shared secret.
    :param role: the answering side's role, to refuse challenges it issued;
        ``None`` to answer anything.
    """

    def respond(box: Box) -> dict[str, bytes]:
        return answerChallenge(secret, box[b"message"], role)

    return respond


def check_authenticate(secret: bytes, message: bytes, answer: Box) -> bool:
    """Tell whether an ``Authenticate`` answer proves knowledge of ``secret``.

    :param secret: the shared secret.
    :param message: the challenge sent.
    :param answer: the answer box.
    """
    salt = answer.get(b"salt", b"")
    expected = calculate_digest(secret, message, salt)
    return len(salt) == 16 and digests_match(expected, answer.get(b"digest", b""))
