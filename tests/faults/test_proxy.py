"""The fault-injecting proxy itself: pass, delay, blackhole, cut.

An echo server runs in the reactor (crochet's thread); the test talks to it
through the proxy with a plain blocking socket, whose timeouts bound every
wait.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import blockingCallFromThread

HERE = Path(__file__).resolve().parent


def _load(name: str) -> Any:
    """Import a helper module of this folder (pytest runs in importlib mode)."""
    qualified = f"maas_rpc_faults_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


proxies = _load("proxy")

#: Bound, in seconds, on every wait.
BOUND = 10.0


class Echo(Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.server.protocols.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.server.lostAt.append(time.monotonic())
        self.lost.callback(None)


class EchoServer:
    def __init__(self) -> None:
        self.protocols: list[Echo] = []
        self.lostAt: list[float] = []
        self.listening: Any = None

    def start(self) -> int:
        from twisted.internet import reactor

        self.listening = reactor.listenTCP(
            0, Factory.forProtocol(lambda: Echo(self)), interface="127.0.0.1"
        )
        return self.listening.getHost().port

    def stop(self) -> defer.Deferred[Any]:
        waits = [defer.maybeDeferred(self.listening.stopListening)]
        for proto in self.protocols:
            proto.transport.loseConnection()
            waits.append(proto.lost)
        return defer.DeferredList(waits)


@pytest.fixture
def echo(reactor_thread: Any):
    server = EchoServer()
    port = blockingCallFromThread(reactor_thread, server.start)
    yield server, port
    blockingCallFromThread(reactor_thread, server.stop)


@pytest.fixture
def proxy(echo: Any):
    server, port = echo
    proxy = proxies.FaultProxy(("127.0.0.1", port))
    proxy.start()
    yield proxy
    proxy.stop()


def connect(proxy: Any) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=BOUND)
    return sock


def roundTrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_pass_forwards_both_ways(proxy: Any) -> None:
    with connect(proxy) as sock:
        assert roundTrip(sock, b"hello") == b"hello"
        payload = bytes(range(256)) * 1024
        assert roundTrip(sock, payload) == payload
    assert proxy.forwarded == 2 * (5 + len(payload))
    assert proxy.mode == "pass"


def test_delay_adds_latency_each_way_and_keeps_order(proxy: Any) -> None:
    with connect(proxy) as sock:
        assert roundTrip(sock, b"warm") == b"warm"
        proxy.delay(0.25)
        started = time.monotonic()
        assert roundTrip(sock, b"slow") == b"slow"
        elapsed = time.monotonic() - started
        # Many small writes come back whole and in order.
        pieces = [f"<{n}>".encode() for n in range(200)]
        for piece in pieces:
            sock.sendall(piece)
        expected = b"".join(pieces)
        received = b""
        while len(received) < len(expected):
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed the connection"
            received += chunk
        assert received == expected
        proxy.passThrough()
        started = time.monotonic()
        assert roundTrip(sock, b"fast") == b"fast"
        fast = time.monotonic() - started
    print(f"\nround trip with 0.25 s each way: {elapsed:.3f} s; after: {fast:.4f} s")
    assert elapsed >= 0.45


def test_blackhole_drops_bytes_but_keeps_the_connection(proxy: Any, echo: Any) -> None:
    server, _ = echo
    with connect(proxy) as sock:
        assert roundTrip(sock, b"before") == b"before"
        proxy.blackhole()
        sock.sendall(b"lost")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        assert proxy.dropped == 4
        assert proxy.openPairs == 1
        assert server.lostAt == []
        proxy.passThrough()
        sock.settimeout(BOUND)
        assert roundTrip(sock, b"after") == b"after"


def test_blackhole_holds_a_close_until_it_ends(proxy: Any, echo: Any) -> None:
    server, _ = echo
    sock = connect(proxy)
    assert roundTrip(sock, b"x") == b"x"
    proxy.blackhole()
    sock.close()
    waitUntil(lambda: proxy.eventsFor("closed", proxies.DOWNSTREAM))
    assert server.lostAt == []
    proxy.passThrough()
    waitUntil(lambda: server.lostAt)
    waitUntil(lambda: proxy.openPairs == 0)


def test_cut_resets_connections_and_keeps_accepting(proxy: Any, echo: Any) -> None:
    server, _ = echo
    with connect(proxy) as first, connect(proxy) as second:
        assert roundTrip(first, b"1") == b"1"
        assert roundTrip(second, b"2") == b"2"
        assert proxy.cut() == 2
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.recv(100)
    waitUntil(lambda: len(server.lostAt) == 2)
    assert len(proxy.eventsFor("cut")) == 4
    with connect(proxy) as third:
        assert roundTrip(third, b"3") == b"3"


def test_unreachable_target_closes_the_accepted_connection(
    reactor_thread: Any,
) -> None:
    # A port nothing listens on: bind one, and close it again.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proxy = proxies.FaultProxy(("127.0.0.1", port))
    proxy.start()
    try:
        with connect(proxy) as sock:
            assert sock.recv(100) == b""
        assert proxy.eventsFor("refused")
    finally:
        proxy.stop()


def waitUntil(condition: Any, timeout: float = BOUND) -> Any:
    """Poll ``condition`` until true, at most ``timeout`` seconds."""
    wake = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"gave up waiting for {condition}"
        wake.wait(0.01)
