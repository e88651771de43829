"""The control channel: how ``maas-rpc status`` and ``call`` reach a process.

Each region event-loop and each cluster process listens on a UNIX socket,
``<data dir>/control/<pid>.sock``. The directory is created mode 0700 and
the socket mode 0600, and the server checks the connecting process's user
(``SO_PEERCRED``): only the same user, or root, is served. That is the
authentication: whoever may use the socket may read the data directory, and
so the shared secret, anyway. Nothing listens on the network, no port is
taken, and there is no second secret to manage. Every event-loop of a
region shares the data directory, so ``maas-rpc status`` finds them all by
listing it; a socket whose process is gone is skipped (and removed). A path
longer than a UNIX socket's limit (107 bytes) is reached through its open
directory (:func:`shortPath`).

The protocol is one JSON object per line: the client sends a request
(``{"op": "status"}``), the server answers one object and closes the
connection. Requests are bounded (64 KiB); the answer is not (a status of
thousands of connections is long).

* :class:`ControlService` serves requests with the handlers it is given.
* :func:`ask` and :func:`askAll` are the (blocking) client.
* :func:`describeConnection` is the status of one RPC connection, shared by
  the region's and the cluster's ``status``.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from provisioningserver.utils.twisted import ListeningService

__all__ = [
    "ControlError",
    "ControlService",
    "ask",
    "shortPath",
    "askAll",
    "askEach",
    "controlSockets",
    "describeConnection",
]

log = Logger()

#: The longest request line a control socket accepts.
MAX_REQUEST = 64 * 1024

#: The longest path a UNIX socket can have on Linux (``sun_path``).
MAX_SOCKET_PATH = 107


class ControlError(Exception):
    """A control socket could not be asked, or answered with an error."""


def shortPath(path: Path) -> tuple[str, int | None]:
    """A path to bind or connect a UNIX socket at, short enough for one.

    A UNIX socket's path may not be longer than 107 bytes. A longer one is
    reached through its open directory instead
    (``/proc/self/fd/<fd>/<name>``); the caller closes that descriptor when
    done with the path.

    :param path: the socket's path.
    :return: the path to use, and the descriptor to close (or ``None``).
    :raises OSError: when the directory cannot be opened.
    """
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return str(path), None
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


def _peerUID(transport: Any) -> int | None:
    try:
        handle = transport.getHandle()
        creds = handle.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
    except (AttributeError, OSError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST

    def connectionMade(self) -> None:
        uid = _peerUID(self.transport)
        if uid is None or uid not in (os.getuid(), 0):
            log.warn("Refused a control connection from user {uid}.", uid=uid)
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self._busy = False

    def lineReceived(self, line: bytes) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as error:
            self._answer({"error": f"malformed request: {error}"})
            return
        d = self.factory.service.handle(request)
        d.addCallback(self._answer)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer({"error": "request too long"})

    def _answer(self, answer: Mapping[str, Any]) -> None:
        if self.transport is None:
            return
        self.transport.write(json.dumps(answer, default=str).encode("utf-8") + b"\n")
        self.transport.loseConnection()


class ControlService(ListeningService):
    """Serves control requests on ``<directory>/<pid>.sock``.

    :param directory: the control directory (created mode 0700).
    :param handlers: op name → function of the request returning a dict, or
        a Deferred (or coroutine) of one.
    :param reactor: the reactor; the global one when ``None``.
    :param pid: the process ID naming the socket; this process's when
        ``None``.

    :ivar path: the socket's path.
    """

    name = "control"  # type: ignore[assignment]

    def __init__(
        self,
        directory: Path,
        handlers: Mapping[str, Callable[[dict[str, Any]], Any]],
        reactor: Any = None,
        pid: int | None = None,
    ) -> None:
        super().__init__(reactor)
        self.directory = Path(directory)
        self.handlers = dict(handlers)
        self.handlers.setdefault("ping", lambda request: {"pong": os.getpid()})
        self.path = self.directory / f"{os.getpid() if pid is None else pid}.sock"
        self._dirfd: int | None = None

    def listen(self, reactor: Any) -> Any:
        """Listen on the socket (replacing a stale one of the same name).

        :param reactor: the reactor.
        :return: the listening port.
        :raises OSError: when the directory cannot be created.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.path.unlink(missing_ok=True)
        factory = Factory.forProtocol(_ControlProtocol)
        factory.noisy = False
        factory.service = self  # type: ignore[attr-defined]
        where, self._dirfd = shortPath(self.path)
        return reactor.listenUNIX(where, factory, mode=0o600)

    def stopService(self) -> Deferred[None]:
        """Stop listening and remove the socket.

        :return: a Deferred that fires once closed.
        """
        if self._listening is None:
            return super().stopService()

        def cleanUp(_: Any) -> None:
            self.path.unlink(missing_ok=True)
            dirfd, self._dirfd = self._dirfd, None
            if dirfd is not None:
                os.close(dirfd)

        return super().stopService().addBoth(cleanUp)

    def handle(self, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Answer one request.

        :param request: the decoded request; ``op`` names the handler.
        :return: a Deferred of the answer; an ``{"error": ...}`` answer for
            an unknown op or a handler that failed (logged).
        """
        op = request.get("op")
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            return defer.succeed({"error": f"unknown op {op!r}"})

        def failed(failure: Failure) -> dict[str, Any]:
            log.failure("Control request {op} failed.", failure, op=op)
            return {"error": failure.getErrorMessage()}

        return defer.maybeDeferred(handler, request).addErrback(failed)


def controlSockets(directory: Path) -> list[Path]:
    """The control sockets of the live processes in ``directory``.

    A socket whose process is gone is removed.

    :param directory: a control directory.
    :return: the sockets, ordered by process ID.
    """
    found = []
    try:
        entries = list(directory.glob("*.sock"))
    except OSError:
        return []
    for path in entries:
        try:
            pid = int(path.stem)
        except ValueError:
            continue
        if not Path(f"/proc/{pid}").exists():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                path.unlink(missing_ok=True)
                continue
            except PermissionError:
                pass
        found.append((pid, path))
    return [path for _, path in sorted(found)]


def ask(path: Path, request: Mapping[str, Any], timeout: float = 10.0) -> Any:
    """Send one request to one control socket and return its answer.

    :param path: the socket.
    :param request: the request (``{"op": ...}``).
    :param timeout: seconds to wait for the whole answer.
    :return: the decoded answer.
    :raises ControlError: when the socket cannot be reached, or the answer
        is not one JSON object, or says ``error``.
    """
    deadline = time.monotonic() + timeout
    dirfd = None
    try:
        where, dirfd = shortPath(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(where)
            sock.sendall(json.dumps(dict(request)).encode("utf-8") + b"\n")
            chunks = []
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except TimeoutError:
        raise ControlError(f"{path} did not answer within {timeout} s") from None
    except OSError as error:
        raise ControlError(f"cannot reach {path}: {error.strerror or error}") from None
    finally:
        if dirfd is not None:
            os.close(dirfd)
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"{path} answered something that is not JSON") from None
    if isinstance(answer, dict) and "error" in answer and len(answer) == 1:
        raise ControlError(str(answer["error"]))
    return answer


def askAll(
    directory: Path, request: Mapping[str, Any], timeout: float = 10.0
) -> list[tuple[Path, Any]]:
    """Send a request to every live control socket in ``directory``, at once.

    :param directory: a control directory.
    :param request: the request.
    :param timeout: seconds to wait for each.
    :return: ``(socket, answer or ControlError)`` for each, by process ID.
    """
    return askEach(controlSockets(directory), request, timeout)


def askEach(
    paths: list[Path], request: Mapping[str, Any], timeout: float = 10.0
) -> list[tuple[Path, Any]]:
    """Send a request to each of the control sockets ``paths``, at once.

    :param paths: control sockets.
    :param request: the request.
    :param timeout: seconds to wait for each.
    :return: ``(socket, answer or ControlError)`` for each, in order.
    """
    if not paths:
        return []

    def one(path: Path) -> tuple[Path, Any]:
        try:
            return path, ask(path, request, timeout)
        except ControlError as error:
            return path, error

    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        return list(pool.map(one, paths))


def describeConnection(conn: Any, **extra: Any) -> dict[str, Any]:
    """The status of one RPC connection, for ``maas-rpc status``.

    It reads the counters the protocol keeps (``connectedAt``,
    ``callsMade``, ``callsFailed``, ``lastCallAt``, ``mode``); those a
    protocol lacks are ``None``.

    :param conn: an :class:`~provisioningserver.rpc.common.RPCProtocol`.
    :param extra: more fields to include.
    :return: a JSON-able dict.
    """
    from provisioningserver.rpc.common import peerAddress

    mode = getattr(conn, "mode", None)
    tls = getattr(conn, "tlsEstablished", None)
    if mode is None and tls is not None:
        mode = "tls" if tls else "plain"
    peer = conn.peerAddress() if hasattr(conn, "peerAddress") else peerAddress(conn)
    return {
        "peer": peer,
        "authenticated": bool(getattr(conn, "peerAuthenticated", False)),
        "mode": mode,
        "tls": bool(tls) or mode in ("secure", "mtls"),
        "connectedAt": getattr(conn, "connectedAt", None),
        "callsMade": getattr(conn, "callsMade", None),
        "callsFailed": getattr(conn, "callsFailed", None),
        "lastCallAt": getattr(conn, "lastCallAt", None),
        **extra,
    }
