"""A MAAS peer built from stock Twisted AMP alone, for the interop tests.

Nothing of maas-rpc is imported here: the commands are declared as MAAS
declares them (same wire names, argument names and types), the argument
types MAAS adds are written again from their documented encodings, and the
protocol behaves as MAAS's ``RPCProtocol`` does (an exception a responder
did not declare goes back as ``UNHANDLED`` / ``Unknown Error [<ref>]``, and
the connection stays up). See ``README.md`` in this folder.

It plays a MAAS region event-loop (``--role region``: it listens, and on
each connection calls the cluster's ``Identify`` then ``Authenticate``) or
a MAAS cluster (``--role cluster``: it connects, calls the region's
``Authenticate``, then ``Register`` with its UUID), with the plain MAAS
handshake: digest = HMAC-SHA256(secret, message + salt).

Control: the test writes one JSON object per line on standard input
(``{"id": 1, "op": "call", "command": "EchoBytes", "args": {...}}``) and
reads one JSON object per line on standard output: events (``{"event":
...}``) and replies (``{"id": 1, "ok": ...}``). Bytes travel in JSON as
``{"$size": n}`` (the test pattern of that length) or ``{"$hex": "..."}``,
and come back described as ``{"$bytes": n, "sha256": "..."}``.

Run ``python maaspeer.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import sys
import zlib
from typing import Any
from urllib.parse import urlparse

from twisted.internet import defer, endpoints, protocol, reactor, stdio
from twisted.protocols import amp, basic
from twisted.python.failure import Failure

# What the peer emits, one JSON object per line.


def emit(**event: Any) -> None:
    # Through Twisted's standard I/O transport, which owns the (non-blocking)
    # standard output and buffers what the pipe cannot take yet.
    CONTROL.transport.write(json.dumps(event).encode() + b"\n")


def note(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def pattern(size: int) -> bytes:
    """The test pattern: ``size`` bytes that barely compress."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d" % counter).digest()
        counter += 1
    return bytes(out[:size])


def describe(value: Any) -> Any:
    """Make an answer JSON-friendly: bytes as their length and digest."""
    if isinstance(value, bytes):
        return {"$bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {key: describe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(item) for item in value]
    if hasattr(value, "geturl"):
        return {"$url": value.geturl()}
    return value


def undescribe(value: Any) -> Any:
    """Turn the test's JSON arguments into Python values."""
    if isinstance(value, dict):
        if set(value) == {"$size"}:
            return pattern(value["$size"])
        if set(value) == {"$hex"}:
            return bytes.fromhex(value["$hex"])
        if set(value) == {"$url"}:
            return urlparse(value["$url"])
        if set(value) == {"$json"}:
            return value["$json"]  # Taken as it is, for StructureAsJSON.
        return {key: undescribe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [undescribe(item) for item in value]
    return value


# MAAS's argument types, from their documented encodings.


class Bytes(amp.Argument):
    """MAAS's Bytes: the bytes as they are; anything else is refused."""

    def toString(self, inObject):
        if not isinstance(inObject, bytes):
            raise TypeError(f"Not bytes: {inObject!r}")
        return inObject

    def fromString(self, inString):
        return inString


class StructureAsJSON(amp.Argument):
    """MAAS's StructureAsJSON: zlib of json.dumps's ASCII text."""

    def toString(self, inObject):
        return zlib.compress(json.dumps(inObject).encode("ascii"))

    def fromString(self, inString):
        return json.loads(zlib.decompress(inString).decode("ascii"))


class ParsedURL(amp.Argument):
    """MAAS's ParsedURL: the URL with its network location IDNA-encoded,
    as ASCII; received as urlparse's result."""

    def toString(self, inObject):
        parts = urlparse(inObject.geturl())
        netloc = parts.netloc.encode("idna").decode("ascii")
        return parts._replace(netloc=netloc).geturl().encode("ascii")

    def fromString(self, inString):
        return urlparse(inString.decode("ascii"))


class CompressedAmpList(amp.AmpList):
    """MAAS's CompressedAmpList: zlib of the AmpList bytes.

    With ``chunked`` it also does what MAAS did from 2024-07 to 2026-07: a
    compressed value over 65,535 bytes goes out as ``<key>`` (the first
    65,535 bytes), ``<key>.2``, ``<key>.3``, ...
    """

    def __init__(self, subargs, optional=False, chunked=False):
        super().__init__(subargs, optional)
        self.chunked = chunked

    def toStringProto(self, inObject, proto):
        return zlib.compress(super().toStringProto(inObject, proto))

    def fromStringProto(self, inString, proto):
        return super().fromStringProto(zlib.decompress(inString), proto)

    def toBox(self, name, strings, objects, proto):
        if not self.chunked:
            return super().toBox(name, strings, objects, proto)
        key = name.decode("ascii").replace("-", "_")
        value = objects.get(key)
        if value is None and self.optional:
            return
        data = self.toStringProto(value, proto)
        strings[name] = data[:65535]
        for n, start in enumerate(range(65535, len(data), 65535), start=2):
            strings[b"%s.%d" % (name, n)] = data[start : start + 65535]
        chunks = sorted(k.decode() for k in strings if k.split(b".")[0] == name)
        emit(event="sent-chunks", keys=chunks, size=len(data))


# MAAS's exceptions that cross the wire here.


class CannotRegisterCluster(Exception):
    pass


class NoSuchCluster(Exception):
    pass


# MAAS's handshake commands, declared as MAAS declares them.


class Identify(amp.Command):
    response = [(b"ident", amp.Unicode())]


class Authenticate(amp.Command):
    arguments = [(b"message", amp.String())]
    response = [(b"digest", amp.String()), (b"salt", amp.String())]
    errors: list = []


class Register(amp.Command):
    arguments = [
        (b"uuid", amp.Unicode()),
        (
            b"networks",
            amp.AmpList(
                [
                    (b"interface", amp.Unicode()),
                    (b"ip", amp.Unicode()),
                    (b"subnet_mask", amp.Unicode()),
                ],
                optional=True,
            ),
        ),
        (b"url", ParsedURL(optional=True)),
        (b"ip_addr_json", amp.Unicode(optional=True)),
    ]
    response: list = []
    errors = {CannotRegisterCluster: b"CannotRegisterCluster"}


class Ping(amp.Command):
    arguments: list = []
    response: list = []
    errors: list = []


# EatCheez-like commands that carry MAAS's argument types.

NAMES = [(b"name", amp.Unicode())]


class EchoBytes(amp.Command):
    arguments = [(b"data", Bytes())]
    response = [(b"data", Bytes())]


class MakeBytes(amp.Command):
    arguments = [(b"size", amp.Integer())]
    response = [(b"data", Bytes())]


class EchoJSON(amp.Command):
    arguments = [(b"value", StructureAsJSON())]
    response = [(b"value", StructureAsJSON())]


class EchoJSONRaw(amp.Command):
    """``EchoJSON`` with raw bytes: what a caller sends is up to it."""

    commandName = b"EchoJSON"
    arguments = [(b"value", amp.String())]
    response = [(b"value", amp.String())]


class ShowJSON(amp.Command):
    """Answers the raw bytes its StructureAsJSON argument arrived as."""

    arguments = [(b"value", amp.String())]
    response = [(b"raw", amp.String())]


class MakeJSON(amp.Command):
    """The answerer encodes ``text``'s structure as StructureAsJSON; here
    its answer is read raw."""

    arguments = [(b"text", amp.Unicode())]
    response = [(b"value", amp.String())]


class EchoList(amp.Command):
    arguments = [(b"items", CompressedAmpList(NAMES))]
    response = [(b"items", CompressedAmpList(NAMES))]


class SumList(amp.Command):
    arguments = [(b"items", CompressedAmpList(NAMES))]
    response = [(b"count", amp.Integer()), (b"sha256", amp.Unicode())]


class SumList2024(amp.Command):
    """``SumList`` as MAAS sent it from 2024-07 to 2026-07."""

    commandName = b"SumList"
    arguments = [(b"items", CompressedAmpList(NAMES, chunked=True))]
    response = [(b"count", amp.Integer()), (b"sha256", amp.Unicode())]


class Crash(amp.Command):
    arguments: list = []
    response: list = []


class CrashingCommand(amp.Command):
    """A newer command this peer has, whose responder crashes."""

    arguments = [(b"data", Bytes())]
    response = [(b"data", Bytes())]


class FindCluster(amp.Command):
    arguments = [(b"uuid", amp.Unicode())]
    response: list = []
    errors = {NoSuchCluster: b"NoSuchCluster"}


class Bogus(amp.Command):
    """A command no peer knows."""

    arguments: list = []
    response: list = []


COMMANDS = {
    cls.__name__: cls
    for cls in (
        Identify,
        Authenticate,
        Register,
        Ping,
        EchoBytes,
        MakeBytes,
        EchoJSON,
        EchoJSONRaw,
        ShowJSON,
        MakeJSON,
        EchoList,
        SumList,
        SumList2024,
        Crash,
        CrashingCommand,
        FindCluster,
        Bogus,
    )
}


def digestOf(secret: bytes, message: bytes, salt: bytes) -> bytes:
    return hmac.new(secret, message + salt, hashlib.sha256).digest()


def commandRef(box: amp.AmpBox) -> str:
    """MAAS's reference for a failed command: host, PID, command, ask."""
    command = box[amp.COMMAND].decode("ascii")
    ask = box.get(amp.ASK, b"none").decode("ascii")
    return f"{socket.gethostname()}:pid={os.getpid()}:cmd={command}:ask={ask}"


def listDigest(items: list[dict]) -> str:
    return hashlib.sha256(json.dumps(items).encode("ascii")).hexdigest()


class MAASProtocol(amp.AMP):
    """Stock AMP with MAAS's RPCProtocol error behaviour and the responders
    both roles share."""

    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__()
        self.options = options

    # MAAS's RPCProtocol: coerce undeclared errors, never disconnect.

    def dispatchCommand(self, box):
        d = super().dispatchCommand(box)

        def coerce(failure):
            if failure.check(amp.RemoteAmpError):
                return failure
            ref = commandRef(box)
            note(f"Unhandled failure dispatching AMP command [{ref}]:")
            note(failure.getTraceback())
            return Failure(
                amp.RemoteAmpError(
                    amp.UNHANDLED_ERROR_CODE,
                    b"Unknown Error [%s]" % ref.encode("ascii"),
                    fatal=False,
                    local=failure,
                )
            )

        return d.addErrback(coerce)

    def unhandledError(self, failure):
        note("Unhandled failure during AMP request:")
        note(failure.getTraceback())

    # Every box this peer receives, reported to the test.

    def ampBoxReceived(self, box):
        sizes = {
            key.decode("ascii", "replace"): len(value) for key, value in box.items()
        }
        if amp.COMMAND in box:
            name = box[amp.COMMAND].decode("ascii", "replace")
            emit(event="box", kind="command", command=name, keys=sizes)
        elif amp.ERROR in box:
            emit(
                event="box",
                kind="error",
                code=box.get(amp.ERROR_CODE, b"").decode("ascii", "replace"),
                description=box.get(amp.ERROR_DESCRIPTION, b"").decode(
                    "utf-8", "replace"
                ),
                keys=sizes,
            )
        else:
            emit(event="box", kind="answer", keys=sizes)
        super().ampBoxReceived(box)

    def locateResponder(self, name):
        if name == b"Ping" and self.options.ping == "absent":
            return None
        return super().locateResponder(name)

    def connectionMade(self):
        super().connectionMade()
        emit(event="connected", peer=str(self.transport.getPeer()))
        PEER.conn = self

    def connectionLost(self, reason):
        super().connectionLost(reason)
        emit(event="connection-lost", reason=reason.getErrorMessage())
        if PEER.conn is self:
            PEER.conn = None

    # Responders both roles have.

    @Authenticate.responder
    def authenticate(self, message):
        salt = os.urandom(16)
        return {"digest": digestOf(self.options.secret, message, salt), "salt": salt}

    @Ping.responder
    def ping(self):
        if self.options.ping == "crash":
            raise RuntimeError("this Ping crashes on purpose")
        return {}

    @EchoBytes.responder
    def echoBytes(self, data):
        return {"data": data}

    @MakeBytes.responder
    def makeBytes(self, size):
        return {"data": pattern(size)}

    @EchoJSON.responder
    def echoJSON(self, value):
        text = json.dumps(value, sort_keys=True)
        emit(event="json-received", sha256=hashlib.sha256(text.encode()).hexdigest())
        return {"value": value}

    @ShowJSON.responder
    def showJSON(self, value):
        return {"raw": value}

    @MakeJSON.responder
    def makeJSON(self, text):
        return {"value": StructureAsJSON().toString(json.loads(text))}

    @EchoList.responder
    def echoList(self, items):
        return {"items": items}

    @SumList.responder
    def sumList(self, items):
        return {"count": len(items), "sha256": listDigest(items)}

    @Crash.responder
    def crash(self):
        raise ZeroDivisionError("this responder crashes on purpose")

    @CrashingCommand.responder
    def crashingCommand(self, data):
        raise ZeroDivisionError("this newer command crashes on purpose")

    @FindCluster.responder
    def findCluster(self, uuid):
        raise NoSuchCluster(f"The cluster with UUID {uuid} is unknown here.")


class RegionProtocol(MAASProtocol):
    """A MAAS region event-loop's side of one cluster connection."""

    ident = None

    @Identify.responder
    def identify(self):
        return {"ident": self.options.name}

    @Register.responder
    def register(self, uuid, networks=None, url=None, ip_addr_json=None):
        emit(
            event="register-received",
            uuid=uuid,
            networks=networks,
            url=url.geturl() if url is not None else None,
            ip_addr_json=ip_addr_json,
        )
        if uuid != self.ident:
            raise CannotRegisterCluster(f"{uuid} is not who identified as {self.ident}")
        emit(event="registered", uuid=uuid)
        return {}

    def connectionMade(self):
        super().connectionMade()
        self.handshake().addErrback(self.handshakeFailed)

    @defer.inlineCallbacks
    def handshake(self):
        answer = yield self.callRemote(Identify)
        self.ident = answer["ident"]
        emit(event="identified", ident=self.ident)
        message = os.urandom(16)
        answer = yield self.callRemote(Authenticate, message=message)
        ok = hmac.compare_digest(
            answer["digest"], digestOf(self.options.secret, message, answer["salt"])
        )
        emit(event="authenticated", ok=ok)
        if not ok:
            self.transport.loseConnection()

    def handshakeFailed(self, failure):
        emit(event="handshake-failed", error=failure.getErrorMessage())
        if self.transport is not None:
            self.transport.loseConnection()


class ClusterProtocol(MAASProtocol):
    """A MAAS cluster's side of its connection to a region event-loop."""

    @Identify.responder
    def identify(self):
        return {"ident": self.options.uuid}

    def connectionMade(self):
        super().connectionMade()
        self.handshake().addErrback(self.handshakeFailed)

    @defer.inlineCallbacks
    def handshake(self):
        for name in self.options.early:
            # Commands sent before the handshake, to see how they are met.
            try:
                answer = yield self.callRemote(COMMANDS[name])
            except Exception as error:  # noqa: BLE001 - reported to the test
                emit(event="early", command=name, ok=False, **errorFields(error))
            else:
                emit(event="early", command=name, ok=True, answer=describe(answer))
        if self.options.hangup_early:
            self.transport.loseConnection()
            return
        message = os.urandom(16)
        answer = yield self.callRemote(Authenticate, message=message)
        ok = hmac.compare_digest(
            answer["digest"], digestOf(self.options.secret, message, answer["salt"])
        )
        emit(event="authenticated", ok=ok)
        if not ok:
            self.transport.loseConnection()
            return
        yield self.callRemote(
            Register,
            uuid=self.options.uuid,
            networks=[
                {"interface": "eth0", "ip": "10.0.0.2", "subnet_mask": "255.255.255.0"}
            ],
            url=urlparse(self.options.maas_url),
            ip_addr_json='{"eth0": ["10.0.0.2/24"]}',
        )
        emit(event="registered", uuid=self.options.uuid)

    def handshakeFailed(self, failure):
        emit(event="handshake-failed", error=failure.getErrorMessage())
        if self.transport is not None:
            self.transport.loseConnection()


def errorFields(error: Exception) -> dict:
    """What a failed call raised. (Stock AMP raises UNHANDLED as
    ``UnhandledCommand(code, description)``, other undeclared codes as
    ``UnknownRemoteError``, which loses the code: the ``box`` events show
    every error box as it arrived.)"""
    code = getattr(error, "errorCode", None)
    description = getattr(error, "description", None)
    if code is None and len(error.args) == 2 and isinstance(error.args[0], bytes):
        code, description = error.args
    if code is None:
        code = b""
    if description is None:
        description = str(error)
    if isinstance(code, bytes):
        code = code.decode("ascii", "replace")
    if isinstance(description, bytes):
        description = description.decode("utf-8", "replace")
    return {"type": type(error).__name__, "code": code, "description": description}


class Peer:
    """This process's one connection, and the test's requests."""

    conn: MAASProtocol | None = None


PEER = Peer()


class Control(basic.LineReceiver):
    """The test's requests, one JSON object per line."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def lineReceived(self, line):
        request = json.loads(line)
        op = request.get("op")
        if op == "call":
            self.call(request)
        elif op == "close":
            if PEER.conn is not None:
                PEER.conn.transport.loseConnection()
            emit(id=request["id"], ok=True)
        elif op == "quit":
            emit(id=request["id"], ok=True)
            reactor.stop()
        else:
            emit(id=request.get("id"), ok=False, type="BadRequest", description=op)

    def call(self, request):
        conn = PEER.conn
        if conn is None:
            emit(id=request["id"], ok=False, type="NotConnected", description="")
            return
        command = COMMANDS[request["command"]]
        try:
            d = conn.callRemote(command, **undescribe(request.get("args", {})))
        except Exception as error:  # noqa: BLE001 - reported to the test
            emit(id=request["id"], ok=False, **errorFields(error))
            return

        def done(answer):
            emit(id=request["id"], ok=True, answer=describe(answer))

        def failed(failure):
            emit(id=request["id"], ok=False, **errorFields(failure.value))

        d.addCallbacks(done, failed)

    def connectionLost(self, reason):
        # The test went away: so does this peer.
        if reactor.running:
            reactor.stop()


CONTROL = Control()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["region", "cluster"], required=True)
    parser.add_argument("--secret", required=True, help="the shared secret, hex")
    parser.add_argument("--uuid", default="", help="the cluster's UUID")
    parser.add_argument("--connect", help="cluster: the region's host:port")
    parser.add_argument("--maas-url", default="http://127.0.0.1:5240/MAAS")
    parser.add_argument(
        "--ping",
        choices=["ok", "crash", "absent"],
        default="ok",
        help="how this peer answers Ping",
    )
    parser.add_argument(
        "--early",
        default="",
        help="cluster: commands (comma-separated) to send before the handshake",
    )
    parser.add_argument(
        "--hangup-early",
        action="store_true",
        help="cluster: hang up after the early commands",
    )
    options = parser.parse_args()
    options.secret = bytes.fromhex(options.secret.strip())
    options.early = [name for name in options.early.split(",") if name]
    options.name = f"{socket.gethostname()}:pid={os.getpid()}"

    stdio.StandardIO(CONTROL)
    foreign = sorted(
        name
        for name in sys.modules
        if name.split(".")[0] in ("provisioningserver", "maasserver")
    )
    if options.role == "region":
        factory = protocol.Factory()
        factory.protocol = lambda: RegionProtocol(options)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        emit(
            event="ready",
            role="region",
            pid=os.getpid(),
            name=options.name,
            port=port.getHost().port,
            foreign=foreign,
        )
    else:
        host, port = options.connect.rsplit(":", 1)
        factory = protocol.Factory()
        factory.protocol = lambda: ClusterProtocol(options)
        emit(event="ready", role="cluster", pid=os.getpid(), foreign=foreign)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, int(port), timeout=10)
        d = endpoint.connect(factory)
        d.addErrback(lambda f: emit(event="connect-failed", error=f.getErrorMessage()))
    reactor.run()


if __name__ == "__main__":
    main()
