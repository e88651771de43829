"""Reading and writing AMP boxes: the bytes on the wire.

:class:`BoxProtocol` is :class:`amp.AMP` with its framing layer replaced by
one that costs less and bounds what a peer can make it hold:

* **Parsing** in one pass over the received bytes instead of stock AMP's
  string-at-a-time state machine, with the same outcome for every input: the
  same boxes, in the same order; a key longer than 255 bytes closes the
  connection as stock AMP does; after a ``ProtocolSwitchCommand`` the bytes
  that follow the switching box go to the new protocol.
* **Budgets** on what one received box may hold: bytes (each entry counted
  with :data:`ENTRY_OVERHEAD` for what it costs in memory, not only its
  length on the wire) and keys, tighter until the peer is authenticated. A
  peer over budget is dropped with one log line, and its buffers are freed
  at once.
* **Writing** with a serialiser that produces exactly
  :meth:`amp.AmpBox.serialize`'s bytes (and its errors).
* **Values over 65,535 bytes** (AMP's limit) are split into chunks, MAAS's
  key scheme (``key``, ``key.2``, ``key.3``, ...), only with a peer that
  announced the :data:`~provisioningserver.rpc.chunking.CHUNKED_VALUES`
  capability; with any other peer
  (MAAS, stock AMP), such a value raises
  :class:`~provisioningserver.rpc.exceptions.ArgumentTooLarge` before
  anything is sent, because a peer that does not reassemble would silently
  keep the first chunk only.
* **Back-pressure**: the protocol is its transport's streaming producer;
  while the peer does not read, this side stops reading from it, and a peer
  that leaves more than ``limits.maxUnsentBytes`` unread is dropped.

Twisted's private names this module relies on are listed, and checked, in
:mod:`provisioningserver.rpc.twistedprivate`.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from provisioningserver.rpc.chunking import (
    CHUNK_BYTES,
    CHUNKED_VALUES,
    joinChunks,
    splitLargeValues,
)
from provisioningserver.rpc.exceptions import ArgumentTooLarge
from provisioningserver.rpc.limits import DEFAULT_LIMITS, Limits
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.text import printable

__all__ = [
    "ENTRY_OVERHEAD",
    "BoxProtocol",
    "ClosingTransport",
    "keyPrefix",
    "peerAddress",
    "serializeBox",
    "serializeLayout",
]

log = Logger()

#: Bytes of memory a received box entry costs beyond its key and value (two
#: bytes objects and a dict slot), counted against the box budget so that a
#: box of many tiny entries cannot cost far more than its size on the wire.
ENTRY_OVERHEAD = 128

_MAX_VALUE = CHUNK_BYTES
_pack = struct.Struct(">H").pack
_keyPrefixes: dict[bytes, bytes] = {}


def keyPrefix(key: bytes) -> bytes:
    """A box key's wire form: its 16-bit length, then the key (cached).

    :param key: the key.
    :return: the prefix that precedes its value on the wire.
    """
    prefix = _keyPrefixes.get(key)
    if prefix is None:
        prefix = _pack(len(key)) + key
        if len(_keyPrefixes) < 4096:
            _keyPrefixes[key] = prefix
    return prefix


def serializeBox(box: dict[bytes, bytes]) -> bytes:
    """Serialise a box exactly as :meth:`amp.AmpBox.serialize` does.

    Keys in sorted order, each key and value prefixed with its 16-bit
    length, then an empty key. Anything stock AMP would refuse (a text key
    or value, a key over 255 or a value over 65,535 bytes, a value that is
    not bytes-like) is refused with stock AMP's own exception.

    :param box: keys and values.
    :return: the wire encoding.
    :raises TypeError: for a text key or value, or a value that is not
        bytes-like.
    :raises amp.TooLong: for a key over 255 or a value over 65,535 bytes.
    """
    parts: list[Any] = []
    append = parts.append
    for key in sorted(box):
        value = box[key]
        if type(key) is not bytes or type(value) is not bytes:
            # Stock AMP's checks, messages and (for values that are not
            # bytes-like) the error its final join raises.
            return amp.AmpBox(box).serialize()
        if len(key) > amp.MAX_KEY_LENGTH:
            raise amp.TooLong(True, True, key, None)
        if len(value) > _MAX_VALUE:
            raise amp.TooLong(False, True, value, key)
        append(keyPrefix(key))
        append(_pack(len(value)))
        append(value)
    append(b"\x00\x00")
    return b"".join(parts)


def serializeLayout(
    layout: list[tuple[bytes, bytes]], box: dict[bytes, bytes]
) -> bytes | None:
    """Serialise a box as :func:`serializeBox` does, in a precomputed order.

    :param layout: every key the box may hold, sorted, each with its wire
        prefix (:func:`keyPrefix`); keys absent from the box are skipped.
    :param box: keys and values.
    :return: the wire encoding, or ``None`` when a value is not
        :class:`bytes` or is longer than AMP allows (for the caller to take
        :func:`serializeBox`'s path, which raises stock AMP's error).
    """
    parts: list[bytes] = []
    append = parts.append
    get = box.get
    for key, prefix in layout:
        value = get(key)
        if value is None:
            continue
        if type(value) is not bytes or len(value) > _MAX_VALUE:
            return None
        append(prefix)
        append(_pack(len(value)))
        append(value)
    append(b"\x00\x00")
    return b"".join(parts)


def peerAddress(proto: Any) -> str:
    """Describe a protocol's peer as ``host:port``, for log lines.

    :param proto: a protocol (connected or not).
    :return: its peer's address, or a placeholder when it is not known.
    """
    transport = getattr(proto, "transport", None)
    if transport is None:
        return "(disconnected)"
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else printable(str(peer))


class ClosingTransport:
    """A protocol's transport, as :class:`BoxProtocol` sees it: the real
    one, except that closing it first unregisters the protocol as its
    producer.

    The protocol is its transport's streaming producer (for back-pressure);
    a TLS transport waits for its producer to unregister before it sends its
    close alert, so a ``transport.loseConnection()`` (stock AMP's, after a
    fatal error or an over-long key, or a user's) would otherwise never
    close a connection over TLS. Everything else is the real transport's.

    :param transport: the real transport.
    """

    __slots__ = ("_real", "write", "writeSequence")

    def __init__(self, transport: Any) -> None:
        object.__setattr__(self, "_real", transport)
        object.__setattr__(self, "write", transport.write)
        object.__setattr__(self, "writeSequence", transport.writeSequence)

    def loseConnection(self) -> None:
        """Stop being produced for, then close once pending output is sent
        (see :meth:`twisted.internet.interfaces.ITransport.loseConnection`)."""
        real = self._real
        if getattr(real, "producer", None) is not None:
            real.unregisterProducer()
        real.loseConnection()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)

    def __repr__(self) -> str:
        return f"<ClosingTransport of {self._real!r}>"


class BoxProtocol(amp.AMP):
    """:class:`amp.AMP` with a bounded, one-pass framing layer.

    See the module's documentation. Subclasses set ``peerCapabilities``
    once the peer has announced what it supports, and
    ``acceptsChunks`` once this side has announced that it reassembles
    chunked values.

    :param boxReceiver: as for :class:`amp.AMP`.
    :param locator: as for :class:`amp.AMP`.
    :param limits: the :class:`~provisioningserver.rpc.limits.Limits`
        applied to the peer; :data:`~provisioningserver.rpc.limits.DEFAULT_LIMITS`
        when ``None``.

    :ivar limits: the limits applied to the peer.
    :ivar peerCapabilities: what the peer announced it supports (empty for
        a MAAS or stock AMP peer).
    :ivar acceptsChunks: whether this side told the peer that it reassembles
        chunked values (so it joins them on receipt).
    :ivar logLimiter: a
        :class:`~provisioningserver.utils.ratelimit.LogLimiter` for warnings
        about the peer, or ``None`` to log each one.
    """

    __slots__ = (
        "limits",
        "peerCapabilities",
        "acceptsChunks",
        "_receiver",
        "_locator",
        "_sender",
        "_buffer",
        "_box",
        "_key",
        "_boxBytes",
        "_boxKeys",
        "_rbuf",
        "_rpos",
        "_lost",
        "_plaintextEnds",
        "_writePaused",
        "_unsentWhilePaused",
        "logLimiter",
        "_peerHostName",
    )

    def __init__(
        self,
        boxReceiver: Any = None,
        locator: Any = None,
        *,
        limits: Limits | None = None,
    ) -> None:
        self._receiver: Any = None
        self._locator: Any = None
        self._sender: Any = None
        super().__init__(boxReceiver=boxReceiver, locator=locator)
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        self.peerCapabilities: frozenset[str] = frozenset()
        self.acceptsChunks = False
        self._buffer = b""
        self._box: dict[bytes, bytes] | None = None
        self._key: bytes | None = None
        self._boxBytes = 0
        self._boxKeys = 0
        self._rbuf = b""
        self._rpos = 0
        self._lost = False
        self._plaintextEnds = False
        self._writePaused = False
        self._unsentWhilePaused = 0
        self.logLimiter: Any = None
        self._peerHostName = "(not connected)"

    # Stock AMP points these at the protocol itself, which makes every
    # connection a reference cycle that only a full garbage collection
    # frees. Stored as None when they are the protocol itself, they cost no
    # cycle; they read as stock AMP's attributes do.

    @property
    def boxReceiver(self) -> Any:
        """The ``IBoxReceiver`` of received boxes (usually this
        protocol)."""
        return self if self._receiver is None else self._receiver

    @boxReceiver.setter
    def boxReceiver(self, value: Any) -> None:
        self._receiver = None if value is self else value

    @property
    def locator(self) -> Any:
        """The ``IResponderLocator`` for commands (usually this
        protocol)."""
        return self if self._locator is None else self._locator

    @locator.setter
    def locator(self, value: Any) -> None:
        self._locator = None if value is self else value

    @property
    def boxSender(self) -> Any:
        """The ``IBoxSender`` answers are sent through (usually
        this protocol)."""
        return self if self._sender is None else self._sender

    @boxSender.setter
    def boxSender(self, value: Any) -> None:
        self._sender = None if value is self else value

    # Logging what the peer does.

    def peerWarn(self, kind: str, format: str, **kwargs: Any) -> None:  # noqa: A002
        """Log a warning about the peer's behaviour: through
        ``logLimiter`` when it has one (the region's and the clusters'
        connections do: once per minute per kind and peer address, with a
        count of the lines held back), else at once.

        Anything a peer can make a process do over and over (open, refuse,
        break connections) must not let it fill the log.

        :param kind: what happened, e.g. ``"box-budget"``.
        :param format: the :mod:`twisted.logger` format string.
        :param kwargs: its fields.
        """
        self._peerLog(LogLevel.warn, kind, format, kwargs)

    def peerError(self, kind: str, format: str, **kwargs: Any) -> None:  # noqa: A002
        """As :meth:`peerWarn`, at error level (a peer that failed to prove
        it knows the secret, say).

        :param kind: what happened.
        :param format: the :mod:`twisted.logger` format string.
        :param kwargs: its fields.
        """
        self._peerLog(LogLevel.error, kind, format, kwargs)

    def _peerLog(
        self,
        level: LogLevel,
        kind: str,
        format: str,
        kwargs: dict[str, Any],  # noqa: A002
    ) -> None:
        limiter = self.logLimiter
        if limiter is None:
            log.emit(level, format, **kwargs)
        else:
            limiter.emit(level, (kind, self._peerHostName), format, **kwargs)

    # Connection.

    def makeConnection(self, transport: Any) -> None:
        """Connect, as :class:`amp.BinaryBoxProtocol` does (without stock
        AMP's two info log lines per connection), through a
        :class:`ClosingTransport`.

        :param transport: the transport.
        """
        amp.BinaryBoxProtocol.makeConnection(self, ClosingTransport(transport))

    def connectionMade(self) -> None:
        """Become the transport's streaming producer, for back-pressure."""
        super().connectionMade()
        transport: Any = self.transport
        self._peerHostName = str(getattr(transport.getPeer(), "host", "?"))
        transport.registerProducer(self, True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Free the parser's buffers, then fail outstanding calls as AMP
        does.

        :param reason: why the connection was lost.
        """
        self._lost = True
        self._dropParserState()
        transport = self.transport
        if transport is not None and getattr(transport, "producer", None) is not None:
            # Not kept alive by a transport (or its TLS layer) that outlives
            # it: this protocol is the only producer it has.
            transport.unregisterProducer()  # type: ignore[attr-defined]
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None

    def _dropParserState(self) -> None:
        self._buffer = b""
        self._box = None
        self._key = None
        self._boxBytes = self._boxKeys = 0
        self._rbuf = b""
        self._rpos = 0

    def abort(self) -> None:
        """Close the connection at once, discarding pending output, and
        parse nothing more from the peer."""
        self._lost = True
        self._dropParserState()
        transport = self.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    def isConnected(self) -> bool:
        """Tell whether the connection is open (and not closing).

        :return: ``True`` while connected.
        """
        transport = self.transport
        if transport is None or self._lost:
            return False
        return not getattr(transport, "disconnecting", False)

    # Back-pressure (IPushProducer).

    def pauseProducing(self) -> None:
        """The peer is not reading: stop reading from it, and start counting
        what waits unsent."""
        self._writePaused = True
        self._unsentWhilePaused = 0
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None:
            pause()

    def resumeProducing(self) -> None:
        """The peer reads again: read from it again."""
        self._writePaused = False
        self._unsentWhilePaused = 0
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None:
            resume()

    def stopProducing(self) -> None:
        """The transport is going away; nothing to do."""

    # Budgets.

    def budgetsApply(self) -> bool:
        """Tell whether the unauthenticated budgets apply (overridden where
        there is a handshake).

        :return: ``False`` here: a bare protocol has no handshake.
        """
        return False

    def _boxCaps(self) -> tuple[int, int]:
        limits = self.limits
        if self.budgetsApply():
            return limits.maxUnauthenticatedBoxBytes, limits.maxUnauthenticatedKeys
        return limits.maxBoxBytes, limits.maxKeys

    def _overBudget(self, what: str, cap: int) -> None:
        self.peerWarn(
            "box-budget",
            "Peer {peer} sent a box of more than {cap} {what}; dropping the "
            "connection.",
            peer=peerAddress(self),
            cap=cap,
            what=what,
        )
        self.abort()

    # Receiving.

    @property
    def recvd(self) -> bytes:
        """The received bytes not parsed yet (what a protocol switch hands
        to the new protocol)."""
        return self._rbuf[self._rpos :]

    @recvd.setter
    def recvd(self, value: bytes) -> None:
        self._rbuf = value
        self._rpos = 0

    def dataReceived(self, data: bytes) -> None:
        """Parse boxes from the peer's bytes, in one pass, within budget.

        :param data: bytes from the peer.
        """
        if self._justStartedTLS:
            self._justStartedTLS = False
        if self.innerProtocol is not None:
            self.innerProtocol.dataReceived(data)
            return
        if self._lost:
            return
        buf = self._buffer + data if self._buffer else data
        end = len(buf)
        pos = 0
        box: Any = self._box
        key = self._key
        size = self._boxBytes
        keys = self._boxKeys
        capBytes, capKeys = self._boxCaps()
        while end - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            stop = pos + 2 + length
            if key is None:
                if length > amp.MAX_KEY_LENGTH:
                    # As stock AMP: TooLong, and the connection closes.
                    self._lost = True
                    self._dropParserState()
                    self.lengthLimitExceeded(length)
                    return
                if stop > end:
                    break
                pos = stop
                if length == 0:
                    self._box = None
                    self._boxBytes = size = self._boxKeys = keys = 0
                    # What a protocol switch inside this box hands on.
                    self._rbuf = buf
                    self._rpos = pos
                    receiver = self._receiver
                    if box is None:
                        box = amp.AmpBox()
                    if receiver is None:
                        self.ampBoxReceived(box)
                    else:
                        receiver.ampBoxReceived(box)
                    box = None
                    if self.innerProtocol is not None:
                        # Switched: the rest went to the new protocol (see
                        # recvd). Parse nothing more here.
                        self._buffer = self._rbuf = b""
                        return
                    self._rbuf = b""
                    if self._lost:
                        return
                    if self._plaintextEnds:
                        self._plaintextEnds = False
                        if pos < end:
                            self._plaintextAfterSwitch()
                            return
                    capBytes, capKeys = self._boxCaps()
                    continue
                keys += 1
                if keys > capKeys:
                    self._overBudget("keys", capKeys)
                    return
                key = buf[pos - length : pos]
                if box is None:
                    box = amp.AmpBox()
            else:
                if stop > end:
                    if size + length + ENTRY_OVERHEAD > capBytes:
                        # The value announced would not fit: don't wait for it.
                        self._overBudget("bytes", capBytes)
                        return
                    break
                size += length + len(key) + ENTRY_OVERHEAD
                if size > capBytes:
                    self._overBudget("bytes", capBytes)
                    return
                box[key] = buf[pos + 2 : stop]
                pos = stop
                key = None
        self._buffer = buf[pos:] if pos < end else b""
        self._box = box
        self._key = key
        self._boxBytes = size
        self._boxKeys = keys

    def _plaintextAfterSwitch(self) -> None:
        self.peerWarn(
            "plaintext",
            "Peer {peer} sent bytes in the clear after asking for TLS; "
            "dropping the connection.",
            peer=peerAddress(self),
        )
        self.abort()

    def expectTLSNext(self) -> None:
        """Say that the box being handled is the last one in the clear: TLS
        starts right after it, so any byte already received after it is a
        protocol violation (an injection), and drops the connection."""
        self._plaintextEnds = True

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """Reassemble chunked values (when this side accepts them), then
        handle the box as AMP does.

        A box with no command, answer or error drops the connection with one
        log line (stock AMP raises, and Twisted logs the whole box).

        :param box: the received box.
        """
        if self.acceptsChunks:
            for key in box:
                if key[-2:] == b".2":
                    joinChunks(box)
                    break
        if amp.ANSWER in box:
            self._answerReceived(box)
        elif amp.ERROR in box:
            self._errorReceived(box)
        elif amp.COMMAND in box:
            self._commandReceived(box)
        else:
            self.peerWarn(
                "empty-box",
                "Peer {peer} sent a box with no command, answer or error (keys "
                "{keys}); dropping the connection.",
                peer=peerAddress(self),
                keys=", ".join(printable(key, 32) for key in list(box)[:8]),
            )
            self.abort()

    # Sending.

    def _prepareLargeValues(self, box: amp.AmpBox) -> amp.AmpBox:
        """Split values over AMP's limit, or refuse them.

        :param box: the box to send.
        :return: the box to serialise.
        :raises ArgumentTooLarge: when a value is over AMP's limit and the
            peer has not agreed to chunks, or over ``limits.maxValueBytes``.
        """
        chunked = CHUNKED_VALUES in self.peerCapabilities
        limit = self.limits.maxValueBytes if chunked else _MAX_VALUE
        command = box.get(amp.COMMAND, b"answer")
        for key, value in box.items():
            if len(value) > limit:
                raise ArgumentTooLarge(command, key, len(value), limit, chunked=chunked)
        return splitLargeValues(box)

    def sendBox(self, box: amp.AmpBox) -> None:
        """Send a box (see :meth:`amp.BinaryBoxProtocol.sendBox`): split or
        refuse values over AMP's limit, and drop a peer that leaves too much
        unread.

        :param box: the box.
        :raises ArgumentTooLarge: when a value is over AMP's limit and the
            peer has not agreed to chunks (nothing is sent).
        :raises amp.ProtocolSwitched: after a protocol switch.
        :raises twisted.internet.error.ConnectionLost: when the connection
            is gone, or the peer leaves too much unread.
        """
        for value in box.values():
            if len(value) > _MAX_VALUE:
                box = self._prepareLargeValues(box)
                break
        if self._writePaused:
            self._unsentWhilePaused += sum(len(k) + len(v) + 4 for k, v in box.items())
            if self._unsentWhilePaused > self.limits.maxUnsentBytes:
                self.peerWarn(
                    "unread",
                    "Peer {peer} left more than {limit} bytes unread; dropping "
                    "the connection.",
                    peer=peerAddress(self),
                    limit=self.limits.maxUnsentBytes,
                )
                self.abort()
                raise ConnectionLost("the peer does not read")
        if (
            self._locked
            or self.transport is None
            or self._startingTLSBuffer is not None
        ):
            # Stock AMP's errors, and its buffering while TLS starts.
            amp.BinaryBoxProtocol.sendBox(self, box)
        else:
            self.transport.write(serializeBox(box))
