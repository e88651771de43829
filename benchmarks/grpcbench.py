"""P7: the same tiny call in gRPC Python, sync and aio (needs ``grpcio``).

The service is declared with gRPC's generic handlers and no serialisers, so
no protoc code generation is needed: the request is ``b"<name>\\0<origin>"``
and the answer the rating as ASCII digits, the same work as ``EatCheez``.

``python -m benchmarks.grpcbench sync|aio`` runs a server; like
:mod:`benchmarks.worker` it answers each line on its standard input with a
JSON line (carrying its port) and stops when its standard input closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any

__all__ = ["available", "aioRate", "main", "syncRate"]

SERVICE = "bench.Cheese"
METHOD = f"/{SERVICE}/EatCheez"
REQUEST = b"Brie\0France"


def available() -> bool:
    """Whether ``grpcio`` is installed."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        return False
    return True


def _rate(request: bytes) -> bytes:
    from benchmarks.raw import rate_cheese

    name, origin = request.decode().split("\0", 1)
    return str(rate_cheese(name, origin)).encode()


def _serveSync() -> None:
    import grpc

    def eatCheez(request: bytes, context: Any) -> bytes:
        return _rate(request)

    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"EatCheez": grpc.unary_unary_rpc_method_handler(eatCheez)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    for line in sys.stdin.buffer:
        ident = json.loads(line).get("id")
        print(json.dumps({"id": ident, "ok": True, "port": port}), flush=True)
    server.stop(0)


async def _serveAio() -> None:
    import grpc

    async def eatCheez(request: bytes, context: Any) -> bytes:
        return _rate(request)

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"EatCheez": grpc.unary_unary_rpc_method_handler(eatCheez)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
        if not line:
            break
        ident = json.loads(line).get("id")
        print(json.dumps({"id": ident, "ok": True, "port": port}), flush=True)
    await server.stop(0)


def syncRate(port: int, n: int, window: int = 1) -> float:
    """Calls per second from this thread with the sync API: sequential when
    ``window`` is 1, else ``window`` futures outstanding."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        call(REQUEST)  # Connect.
        start = perf_counter()
        if window == 1:
            for _ in range(n):
                call(REQUEST)
        else:
            pending: deque[Any] = deque()
            for _ in range(n):
                if len(pending) >= window:
                    pending.popleft().result()
                pending.append(call.future(REQUEST))
            while pending:
                pending.popleft().result()
        return n / (perf_counter() - start)


def aioRate(port: int, n: int, window: int = 1) -> float:
    """Calls per second with the asyncio API, ``window`` at a time."""
    import grpc

    async def run() -> float:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD)
            await call(REQUEST)  # Connect.

            async def worker(count: int) -> None:
                for _ in range(count):
                    await call(REQUEST)

            share, extra = divmod(n, window)
            counts = [share + (1 if i < extra else 0) for i in range(window)]
            start = perf_counter()
            await asyncio.gather(*(worker(c) for c in counts if c))
            return n / (perf_counter() - start)

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    """Serve until standard input closes.

    :param argv: ``["sync"]`` or ``["aio"]``.
    """
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "aio":
        asyncio.run(_serveAio())
    else:
        _serveSync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
