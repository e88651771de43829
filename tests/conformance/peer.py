"""A responder in a process of its own, for the conformance tests between
real processes (``test_processes.py``).

Usage: ``python peer.py rpc|stock``. It listens on 127.0.0.1 on a free port
with a bare ``RPCProtocol`` subclass (``rpc``; no handshake) or a plain
``twisted.protocols.amp.AMP`` subclass (``stock``), both answering the
commands below the same way, prints ``PORT <n>`` on a line of its own, and
runs a plain reactor until it gets SIGTERM or its standard input closes.

Commands:

* ``AsyncEcho(text)``: answered by an ``async def`` responder that awaits a
  timer first;
* ``FailDeclared(text)``: answered by returning
  ``Failure(DeclaredError(text))``;
* ``Forbidden()`` and ``Allowed()``: the protocol overrides
  ``dispatchCommand`` to refuse ``Forbidden`` (error code ``REFUSED``)
  before its responder runs, and to let ``Allowed`` through.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import fail
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python.failure import Failure

__all__ = [
    "Allowed",
    "AsyncEcho",
    "DeclaredError",
    "FailDeclared",
    "Forbidden",
    "main",
    "peerClass",
]


class DeclaredError(Exception):
    """The error ``FailDeclared`` declares."""


class AsyncEcho(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class FailDeclared(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response: list = []
    errors = {DeclaredError: b"DECLARED"}


class Forbidden(amp.Command):
    arguments: list = []
    response = [(b"ran", amp.Boolean())]


class Allowed(amp.Command):
    arguments: list = []
    response = [(b"ran", amp.Boolean())]


def peerClass(base: type[amp.AMP]) -> type[amp.AMP]:
    """The peer's protocol on ``base``."""

    class Peer(base):
        @AsyncEcho.responder
        async def asyncEcho(self, text: str) -> dict[str, Any]:
            await task.deferLater(reactor, 0.01, lambda: None)
            return {"text": text.upper()}

        @FailDeclared.responder
        def failDeclared(self, text: str) -> Failure:
            return Failure(DeclaredError(text))

        @Forbidden.responder
        def forbidden(self) -> dict[str, Any]:
            return {"ran": True}

        @Allowed.responder
        def allowed(self) -> dict[str, Any]:
            return {"ran": True}

        def dispatchCommand(self, box: amp.AmpBox) -> Any:
            if box[amp.COMMAND] == Forbidden.commandName:
                return fail(
                    amp.RemoteAmpError(b"REFUSED", "refused by dispatchCommand")
                )
            return super().dispatchCommand(box)

    return Peer


def main(kind: str) -> None:
    if kind == "rpc":
        from provisioningserver.rpc.common import RPCProtocol

        base: type[amp.AMP] = RPCProtocol
    elif kind == "stock":
        base = amp.AMP
    else:
        raise SystemExit(f"usage: {sys.argv[0]} rpc|stock")
    factory = Factory.forProtocol(peerClass(base))

    def listening(port: Any) -> None:
        print(f"PORT {port.getHost().port}", flush=True)

    def failed(failure: Failure) -> None:
        print(f"FAILED {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    d.addCallbacks(listening, failed)

    # Stop when the test process goes away, even if it could not signal.
    def watchStdin() -> None:
        sys.stdin.read()
        reactor.callFromThread(reactor.stop)

    threading.Thread(target=watchStdin, daemon=True).start()
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
