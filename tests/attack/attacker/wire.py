"""The attacker's means: Twisted's stock AMP over TCP, and TLS it sets up
itself.

Nothing here comes from maas-rpc. The commands are declared with stock
:mod:`twisted.protocols.amp` from the protocol's public description (the
wire facts of the design and the secure-channel section), and TLS is
Twisted's over pyOpenSSL with a certificate made here. The attacker never
holds the shared secret, so it can make no digest of its own: it can only
forward, replay, reflect or invent bytes.

Everything the attacker sees is written to standard output, one JSON object
a line (:func:`emit`), for the test that started it to read.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "AskRegion",
    "Authenticate",
    "EatCheez",
    "Identify",
    "Ping",
    "Register",
    "SecureChannel",
    "Side",
    "Tally",
    "Wire",
    "boxBytes",
    "clientOptions",
    "connect",
    "describe",
    "emit",
    "guardSecret",
    "serverOptions",
]

#: The exporter label of the secure channel (public: the design names it).
EXPORTER_LABEL = b"EXPORTER-maas-rpc-channel"

_started = time.monotonic()


def emit(event: str, **fields: Any) -> None:
    """Write one event, a JSON line, to standard output.

    :param event: what happened.
    :param fields: about it (JSON-able).
    """
    record = {"event": event, "t": time.monotonic(), **fields}
    sys.stdout.write(json.dumps(record, default=repr) + "\n")
    sys.stdout.flush()


def guardSecret() -> None:
    """Record any attempt of this process to open a file that looks like the
    shared secret (named ``secret``), as an ``opened-secret`` event: the test
    asserts there is none. An audit hook sees every :func:`open`, including
    those of libraries."""

    def hook(name: str, args: tuple[Any, ...]) -> None:
        if name == "open" and args and isinstance(args[0], (str, bytes)):
            path = os.fsdecode(args[0])
            if "secret" in os.path.basename(path):
                emit("opened-secret", path=path)

    sys.addaudithook(hook)


# The commands, as stock AMP declarations of the public wire contract.


class SecureChannel(amp.Command):
    arguments = [(b"capabilities", amp.ListOf(amp.Unicode(), optional=True))]
    response = [(b"capabilities", amp.ListOf(amp.Unicode(), optional=True))]


class Identify(amp.Command):
    arguments: list[Any] = []
    response = [(b"ident", amp.Unicode())]


class Authenticate(amp.Command):
    arguments = [(b"message", amp.String())]
    response = [(b"digest", amp.String()), (b"salt", amp.String())]


class Register(amp.Command):
    arguments = [(b"uuid", amp.Unicode())]
    response: list[Any] = []


class Ping(amp.Command):
    arguments: list[Any] = []
    response: list[Any] = []


class EatCheez(amp.Command):
    arguments = [(b"name", amp.Unicode()), (b"origin", amp.Unicode())]
    response = [(b"rating", amp.Integer())]


class Tally(amp.Command):
    """The test extension's counted region command."""

    arguments = [(b"origin", amp.Unicode())]
    response = [(b"count", amp.Integer())]


class AskRegion(amp.Command):
    """The test extension's cluster command that calls the region."""

    arguments = [(b"origin", amp.Unicode())]
    response = [(b"count", amp.Integer())]


COMMANDS = {
    c.commandName: c
    for c in (
        SecureChannel,
        Identify,
        Authenticate,
        Register,
        Ping,
        EatCheez,
        Tally,
        AskRegion,
    )
}


def commandBox(command: type[amp.Command], tag: bytes | None, **kw: Any) -> amp.AmpBox:
    """Encode a command as stock AMP does.

    :param command: the command class.
    :param tag: the ``_ask`` tag, or ``None`` for no answer wanted.
    :param kw: its arguments.
    :return: the box.
    """
    box = command.makeArguments(kw, None)
    box[amp.COMMAND] = command.commandName
    if tag is not None:
        box[amp.ASK] = tag
    return box


def boxBytes(box: dict[bytes, bytes]) -> bytes:
    """Serialise a box (stock AMP's wire format)."""
    return amp.AmpBox(box).serialize()


_BINARY_KEYS = {b"message", b"digest", b"salt"}


def describe(box: dict[bytes, bytes]) -> dict[str, str]:
    """A box as JSON-able text, bounded: binary values in hex."""
    shown = {}
    for key, value in list(box.items())[:12]:
        name = key.decode("ascii", "backslashreplace")
        if key in _BINARY_KEYS:
            shown[name] = value.hex()
        else:
            shown[name] = value[:200].decode("utf-8", "backslashreplace")
    return shown


# TLS.

_certificate: ssl.PrivateCertificate | None = None


def certificate() -> ssl.PrivateCertificate:
    """The attacker's own self-signed certificate (P-256), made once."""
    global _certificate
    if _certificate is None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a region")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _certificate = ssl.PrivateCertificate.loadPEM(pem)
    return _certificate


class _Options(ssl.CertificateOptions):
    """Twisted's options, with the highest TLS version set on the context.

    Twisted 24.3's ``lowerMaximumSecurityTo=TLSv1_2`` also sets
    ``OP_NO_TLSv1_2`` (fixed in later releases), leaving no version at all;
    OpenSSL's own maximum means the same on every Twisted.

    :param maximum: the highest TLS version offered (``"TLSv1_2"``), or
        ``None`` for Twisted's default.
    """

    def __init__(self, maximum: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._maximum = _VERSIONS[maximum] if maximum is not None else None

    def getContext(self) -> SSL.Context:
        context = super().getContext()
        if self._maximum is not None:
            context.set_max_proto_version(self._maximum)
        return context


_VERSIONS = {"TLSv1_2": SSL.TLS1_2_VERSION, "TLSv1_3": SSL.TLS1_3_VERSION}


def serverOptions(maximum: str | None = None) -> ssl.CertificateOptions:
    """TLS options for posing as the accepting side (a region).

    :param maximum: the highest TLS version offered (``"TLSv1_2"``), or
        ``None`` for Twisted's default.
    """
    cert = certificate()
    return _Options(
        maximum, privateKey=cert.privateKey.original, certificate=cert.original
    )


def clientOptions(maximum: str | None = None) -> ssl.CertificateOptions:
    """TLS options for posing as the connecting side (a cluster): no
    certificate, nothing verified.

    :param maximum: as for :func:`serverOptions`.
    """
    return _Options(maximum)


# Connections.


@implementer(IHandshakeListener)
class Wire(amp.BinaryBoxProtocol):
    """One TCP connection carrying stock AMP boxes; TLS on demand.

    :param side: the :class:`Side` that receives its boxes.
    """

    def __init__(self, side: Side) -> None:
        super().__init__(side)
        self.side = side
        self.deaf = False

    def dataReceived(self, data: bytes) -> None:
        self.side.received += len(data)
        if self.deaf:
            return
        super().dataReceived(data)

    def startTLSNow(self, options: ssl.CertificateOptions) -> None:
        """Start TLS at once (what was written before goes in the clear)."""
        self.side.tlsStarted = time.monotonic()
        self.transport.startTLS(options)

    def handshakeCompleted(self) -> None:
        self.side.tlsUp()

    def tlsInfo(self) -> dict[str, Any]:
        """The TLS connection's version, cipher and exported binding."""
        handle = self.transport.getHandle()
        return {
            "version": handle.get_protocol_version_name(),
            "cipher": handle.get_cipher_name(),
            "binding": bytes(
                handle.export_keying_material(EXPORTER_LABEL, 32, None)
            ).hex(),
        }


@implementer(amp.IBoxReceiver)
class Side:
    """One connection of the attacker's, and what it asked on it.

    :param name: ``"cluster"`` for a connection with the victim cluster (the
        attacker poses as a region), ``"region"`` for one with the region
        (the attacker poses as a cluster).
    :param onBox: called with ``(side, box)`` for every box that is not an
        answer to the attacker's own commands.
    :param number: which connection of that side this is, from 1.

    :ivar ready: whether boxes may be sent (the channel the attacker chose
        is up); :meth:`send` queues until then.
    :ivar relayed: ask tag → command name, for commands relayed to this
        side from the other (their answers go back).
    :ivar lost: a Deferred firing (with ``None``) once the connection ends;
        :attr:`reason` says why.
    """

    def __init__(
        self, name: str, onBox: Callable[[Side, amp.AmpBox], None], number: int = 1
    ) -> None:
        self.name = name
        self.number = number
        self.onBox = onBox
        self.wire: Wire | None = None
        self.sender: Any = None
        self.ready = False
        self.closed = False
        self.received = 0
        self.opened = time.monotonic()
        self.tlsStarted: float | None = None
        self.tls: dict[str, Any] | None = None
        self.onReady: list[Callable[[Side], None]] = []
        self.pending: list[amp.AmpBox] = []
        self.asks: dict[bytes, tuple[str, Deferred[dict[str, Any]]]] = {}
        self.relayed: dict[bytes, bytes] = {}
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._tags = itertools.count(1)

    def wireUp(self) -> Wire:
        """Make this side's protocol."""
        self.wire = Wire(self)
        return self.wire

    # IBoxReceiver.

    def startReceivingBoxes(self, sender: Any) -> None:
        self.sender = sender

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        tag = box.get(amp.ANSWER, box.get(amp.ERROR))
        if tag is not None and tag in self.asks:
            name, d = self.asks.pop(tag)
            if amp.ANSWER in box:
                d.callback({"answer": describe(box), "raw": box})
            else:
                d.callback(
                    {
                        "error": box.get(amp.ERROR_CODE, b"").decode(
                            "ascii", "replace"
                        ),
                        "description": box.get(amp.ERROR_DESCRIPTION, b"")[:300].decode(
                            "utf-8", "replace"
                        ),
                    }
                )
            return
        self.onBox(self, box)

    def stopReceivingBoxes(self, reason: Failure) -> None:
        self.closed = True
        emit(
            "closed",
            side=self.name,
            number=self.number,
            after=round(time.monotonic() - self.opened, 3),
            received=self.received,
            reason=reason.getErrorMessage()[:300],
            tls=self.tls is not None,
        )
        asks, self.asks = self.asks, {}
        for _, d in asks.values():
            d.callback({"lost": reason.getErrorMessage()[:200]})
        self.reason = reason
        self.lost.callback(None)

    # Sending.

    def tlsUp(self) -> None:
        """TLS is up on this side: note it, and it is ready."""
        assert self.wire is not None
        self.tls = self.wire.tlsInfo()
        emit("tls", side=self.name, number=self.number, **self.tls)
        self.setReady()

    def setReady(self) -> None:
        """The channel the attacker chose is up: send what waited."""
        self.ready = True
        pending, self.pending = self.pending, []
        for box in pending:
            self.sendNow(box)
        for hook in self.onReady:
            hook(self)

    def readyOrLost(self) -> Deferred[bool]:
        """A Deferred firing ``True`` once the side is ready, or ``False``
        if the connection ends first."""
        d: Deferred[bool] = Deferred()

        def fire(value: bool) -> None:
            if not d.called:
                d.callback(value)

        self.onReady.append(lambda _: fire(True))
        self.lost.addCallback(lambda _: fire(False))
        return d

    def send(self, box: amp.AmpBox) -> None:
        """Send a box once the side is ready (at once if it is)."""
        if self.ready:
            self.sendNow(box)
        else:
            self.pending.append(box)

    def sendNow(self, box: amp.AmpBox) -> bool:
        """Send a box now, whatever the channel's state.

        :return: whether it was written.
        """
        if self.closed or self.sender is None:
            emit("not-sent", side=self.name, number=self.number, box=describe(box))
            return False
        self.sender.sendBox(box)
        return True

    def write(self, data: bytes) -> None:
        """Write raw bytes, bypassing AMP."""
        if self.wire is not None and not self.closed:
            self.wire.transport.write(data)

    def call(
        self, command: type[amp.Command], now: bool = False, **kw: Any
    ) -> Deferred[dict[str, Any]]:
        """Send one of the attacker's own commands; its outcome is emitted
        as an ``outcome`` event.

        :param command: the command.
        :param now: send even before the side is ready.
        :param kw: the arguments.
        :return: a Deferred of ``{"answer": ..., "raw": box}``, ``{"error":
            code, "description": ...}`` or ``{"lost": reason}``.
        """
        tag = self._tag()
        return self._ask(commandBox(command, tag, **kw), now)

    def rawCall(self, name: bytes, **values: bytes) -> Deferred[dict[str, Any]]:
        """Send a command box built by hand (for commands the attacker does
        not declare, such as stock AMP's ``StartTLS``); as :meth:`call`.

        :param name: the command's name.
        :param values: its raw values.
        """
        box = amp.AmpBox({k.encode(): v for k, v in values.items()})
        box[amp.COMMAND] = name
        box[amp.ASK] = self._tag()
        return self._ask(box, False)

    def _tag(self) -> bytes:
        return b"atk.%d" % next(self._tags)

    def _ask(self, box: amp.AmpBox, now: bool) -> Deferred[dict[str, Any]]:
        name = box[amp.COMMAND].decode()
        d: Deferred[dict[str, Any]] = Deferred()
        self.asks[box[amp.ASK]] = (name, d)
        emit("ask", side=self.name, number=self.number, command=name, box=describe(box))
        if now:
            sent = self.sendNow(box)
        else:
            self.send(box)
            sent = True
        if not sent:
            self.asks.pop(box[amp.ASK], None)
            d.callback({"lost": "not sent: the connection was closed"})

        def report(outcome: dict[str, Any]) -> dict[str, Any]:
            shown = {k: v for k, v in outcome.items() if k != "raw"}
            emit("outcome", side=self.name, number=self.number, command=name, **shown)
            return outcome

        return d.addCallback(report)

    def answer(self, box: amp.AmpBox, **values: Any) -> None:
        """Answer a command the peer sent, with the given values (encoded
        by the command's declared response)."""
        command = COMMANDS[box[amp.COMMAND]]
        reply = command.makeResponse(values, None)
        reply[amp.ANSWER] = box[amp.ASK]
        self.sendNow(reply)

    def close(self) -> None:
        """Close the connection, if open."""
        if self.wire is not None and not self.closed:
            self.wire.transport.loseConnection()


def connect(
    reactor: Any, side: Side, host: str, port: int, source: str | None = None
) -> Deferred[Wire]:
    """Connect ``side`` to ``host:port`` over TCP, from ``source`` if given.

    :return: a Deferred firing with the :class:`Wire` once connected.
    """
    bind = (source, 0) if source else None
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=5, bindAddress=bind)
    return connectProtocol(endpoint, side.wireUp())
