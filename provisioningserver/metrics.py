"""Prometheus metrics, on a loopback port, when ``MAAS_RPC_METRICS_PORT`` is set.

Needs the ``metrics`` extra (``pip install maas-rpc[metrics]``, which brings
``prometheus_client``). The protocol core reports what happens to an
observer (``provisioningserver.rpc.observers``); :class:`PrometheusObserver`
turns that into:

``maas_rpc_calls_total{command, direction}``
    Calls completed; ``direction`` is ``out`` (this process called) or
    ``in`` (this process answered).
``maas_rpc_call_errors_total{command, direction, code}``
    Calls that failed, by error code (``UNHANDLED``, ``TIMEOUT``, a declared
    error's code, ...).
``maas_rpc_call_duration_seconds{command, direction}``
    A histogram of how long calls took.
``maas_rpc_connections{side, state}``
    Connections now open, by ``state`` (``handshake`` or ``authenticated``).
``maas_rpc_handshake_failures_total{side, reason}``
    Handshakes that failed, by reason (``wrong-secret``, ``timeout``,
    ``legacy-refused``, ``tls``, ``protocol``, ``refused-registration``).
``maas_rpc_reconnects_total{side}``
    Connections a cluster made again after losing one.

Metrics are served at ``http://127.0.0.1:<port>/metrics`` (never on another
interface) by :class:`MetricsService`.

**Workers of one region are added up** by ``maas-rpc region`` itself: it
serves the one port, and on each scrape asks every worker for its counts
over the worker's control socket (:mod:`provisioningserver.control`, op
``metrics``) and adds them up. One scrape target per region; no files to
share or clean up. A worker that is restarted starts counting from zero, so
the region's sums drop once: Prometheus's ``rate()`` and ``increase()``
treat that as the counter reset it is. A standalone event-loop or a
cluster serves its own counts.

Counting costs the RPC layer little: :class:`PrometheusObserver` keeps plain
numbers, updated in the reactor thread without locks, and
``prometheus_client`` formats them only when scraped
(:class:`TallyCollector`).

Without ``MAAS_RPC_METRICS_PORT`` no observer is installed, and the core
pays nothing.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from provisioningserver.utils.twisted import ListeningService

__all__ = [
    "BUCKETS",
    "MetricsResource",
    "MetricsService",
    "PrometheusObserver",
    "TallyCollector",
    "addSnapshots",
    "floatToGoString",
    "observe",
    "registryFor",
    "requirePrometheus",
    "setUp",
    "snapshot",
]

log = Logger()

#: Latency histogram buckets, in seconds.
BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def _observerInterface() -> Any:
    try:
        from provisioningserver.rpc.observers import IRPCObserver
    except ImportError:  # An older core without observers.
        return None
    return IRPCObserver


class PrometheusObserver:
    """Counts what the RPC core reports (an ``IRPCObserver``).

    Everything is plain numbers in dicts, updated by the reactor thread (the
    only thread the core reports from), so counting takes no lock;
    :meth:`snapshot` hands them out, as JSON, to be formatted when scraped.

    :ivar calls: ``(command, direction)`` → ``[count, total seconds,
        per-bucket counts]`` (the last bucket is ``+Inf``).
    :ivar errors: ``(command, direction, code)`` → count.
    :ivar connections: ``(side, state)`` → open now.
    :ivar handshakeFailures: ``(side, reason)`` → count.
    :ivar reconnects: ``side`` → count.
    """

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], list[Any]] = {}
        self.errors: dict[tuple[str, str, str], int] = {}
        self.connections: dict[tuple[str, str], int] = {}
        self.handshakeFailures: dict[tuple[str, str], int] = {}
        self.reconnects: dict[str, int] = {}

    def callCompleted(
        self, command: str, direction: str, error: str | None, seconds: float
    ) -> None:
        """Count a completed call.

        :param command: the command's name.
        :param direction: ``"out"`` or ``"in"``.
        :param error: the error code, or ``None`` for success.
        :param seconds: how long it took.
        """
        entry = self.calls.get((command, direction))
        if entry is None:
            entry = self.calls[(command, direction)] = [
                0,
                0.0,
                [0] * (len(BUCKETS) + 1),
            ]
        entry[0] += 1
        entry[1] += seconds
        entry[2][bisect_left(BUCKETS, seconds)] += 1
        if error is not None:
            key = (command, direction, error)
            self.errors[key] = self.errors.get(key, 0) + 1

    def connectionChanged(self, side: str, state: str, delta: int) -> None:
        """Follow the number of open connections.

        :param side: ``"region"`` or ``"cluster"``.
        :param state: ``"handshake"`` or ``"authenticated"``.
        :param delta: +1 or -1.
        """
        key = (side, state)
        self.connections[key] = self.connections.get(key, 0) + delta

    def handshakeFailed(self, side: str, reason: str) -> None:
        """Count a failed handshake.

        :param side: ``"region"`` or ``"cluster"``.
        :param reason: a short fixed word (``"wrong-secret"``, ...).
        """
        key = (side, reason)
        self.handshakeFailures[key] = self.handshakeFailures.get(key, 0) + 1

    def reconnected(self, side: str) -> None:
        """Count a reconnection.

        :param side: ``"region"`` or ``"cluster"``.
        """
        self.reconnects[side] = self.reconnects.get(side, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """The counts, as JSON-able lists (for the control socket).

        :return: ``{"calls": [[command, direction, count, seconds,
            buckets], ...], "errors": [[command, direction, code, count],
            ...], "connections": [[side, state, n], ...],
            "handshakeFailures": [[side, reason, n], ...], "reconnects":
            [[side, n], ...]}``.
        """
        return {
            "calls": [[*k, v[0], v[1], list(v[2])] for k, v in self.calls.items()],
            "errors": [[*k, v] for k, v in self.errors.items()],
            "connections": [[*k, v] for k, v in self.connections.items()],
            "handshakeFailures": [[*k, v] for k, v in self.handshakeFailures.items()],
            "reconnects": [[k, v] for k, v in self.reconnects.items()],
        }


_interface = _observerInterface()
if _interface is not None:
    implementer(_interface)(PrometheusObserver)


def addSnapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up several :meth:`PrometheusObserver.snapshot` results.

    :param snapshots: one per process.
    :return: one snapshot, the sum.
    """
    calls: dict[tuple[str, str], list[Any]] = {}
    sums: dict[str, dict[tuple[Any, ...], int]] = {
        "errors": {},
        "connections": {},
        "handshakeFailures": {},
        "reconnects": {},
    }
    for snap in snapshots:
        for command, direction, count, seconds, buckets in snap.get("calls", ()):
            entry = calls.setdefault((command, direction), [0, 0.0, [0] * len(buckets)])
            entry[0] += count
            entry[1] += seconds
            entry[2] = [a + b for a, b in zip(entry[2], buckets, strict=False)]
        for name, table in sums.items():
            for *key, value in snap.get(name, ()):
                table[tuple(key)] = table.get(tuple(key), 0) + value
    return {
        "calls": [[*k, v[0], v[1], v[2]] for k, v in calls.items()],
        **{name: [[*k, v] for k, v in table.items()] for name, table in sums.items()},
    }


class TallyCollector:
    """A ``prometheus_client`` collector of :meth:`PrometheusObserver.snapshot`
    results, formatted when scraped.

    :param snapshot: returns the snapshot to show (already added up).
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (``prometheus_client``'s protocol).

        :return: an iterator of metric families.
        """
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self.snapshot()
        calls = CounterMetricFamily(
            "maas_rpc_calls", "RPC calls completed.", labels=["command", "direction"]
        )
        latency = HistogramMetricFamily(
            "maas_rpc_call_duration_seconds",
            "How long RPC calls took.",
            labels=["command", "direction"],
        )
        for command, direction, count, seconds, buckets in snap["calls"]:
            calls.add_metric([command, direction], count)
            cumulative, running = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), buckets, strict=False):
                running += n
                cumulative.append((floatToGoString(bound), running))
            latency.add_metric([command, direction], cumulative, seconds)
        errors = CounterMetricFamily(
            "maas_rpc_call_errors",
            "RPC calls that failed, by error code.",
            labels=["command", "direction", "code"],
        )
        for command, direction, code, count in snap["errors"]:
            errors.add_metric([command, direction, code], count)
        connections = GaugeMetricFamily(
            "maas_rpc_connections",
            "RPC connections open, by state.",
            labels=["side", "state"],
        )
        for side, state, n in snap["connections"]:
            connections.add_metric([side, state], n)
        failures = CounterMetricFamily(
            "maas_rpc_handshake_failures",
            "Handshakes that failed, by reason.",
            labels=["side", "reason"],
        )
        for side, reason, n in snap["handshakeFailures"]:
            failures.add_metric([side, reason], n)
        reconnects = CounterMetricFamily(
            "maas_rpc_reconnects",
            "Connections made again after one was lost.",
            labels=["side"],
        )
        for side, n in snap["reconnects"]:
            reconnects.add_metric([side], n)
        yield from (calls, errors, latency, connections, failures, reconnects)


def floatToGoString(value: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf``, ``0.5``, ``1.0``).

    :param value: the bound.
    :return: its text.
    """
    from prometheus_client import utils

    return str(utils.floatToGoString(value))


def registryFor(snapshot: Callable[[], dict[str, Any]]) -> Any:
    """A :class:`prometheus_client.CollectorRegistry` that shows ``snapshot``.

    :param snapshot: returns the counts to show.
    :return: the registry.
    """
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TallyCollector(snapshot))
    return registry


class MetricsResource(Resource):
    """Serves metrics in Prometheus's text format.

    :param registry: the :class:`prometheus_client.CollectorRegistry`, or a
        function returning a Deferred of the exposition (bytes), for counts
        that must be gathered first (``maas-rpc region``'s workers').
    """

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> Any:
        """Answer with the current values.

        :param request: the request.
        :return: the exposition, or ``NOT_DONE_YET`` while it is gathered.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        if not callable(self.registry):
            return generate_latest(self.registry)

        def write(body: bytes) -> None:
            if not request.finished and not request._disconnected:
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            log.failure("Gathering metrics failed.", failure)
            if not request.finished and not request._disconnected:
                request.setResponseCode(500)
                request.finish()

        defer.maybeDeferred(self.registry).addCallbacks(write, failed)
        return NOT_DONE_YET


class MetricsService(ListeningService):
    """Serves metrics at ``http://127.0.0.1:<port>/metrics``.

    :param port: the port; 0 for any free one.
    :param registry: what to serve.
    :param reactor: the reactor; the global one when ``None``.
    """

    name = "metrics"  # type: ignore[assignment]

    def __init__(self, port: int, registry: Any, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.port = port
        self.registry = registry

    @property
    def url(self) -> str:
        """Where the metrics are served."""
        port = self._listening.getHost().port if self._listening else self.port
        return f"http://127.0.0.1:{port}/metrics"

    def listen(self, reactor: Any) -> Any:
        """Listen on 127.0.0.1.

        :param reactor: the reactor.
        :return: the listening port.
        """
        root = Resource()
        root.putChild(b"metrics", MetricsResource(self.registry))
        site = Site(root)
        site.noisy = False
        return reactor.listenTCP(self.port, site, interface="127.0.0.1")


#: This process's observer, once metrics are on.
installed: PrometheusObserver | None = None


def observe(on: bool) -> bool:
    """Install a fresh :class:`PrometheusObserver`, or remove the observer.

    :param on: whether to observe.
    :return: whether this RPC core reports to observers at all.
    """
    global installed
    try:
        from provisioningserver.rpc.observers import setObserver
    except ImportError:
        return False
    installed = PrometheusObserver() if on else None
    setObserver(installed)
    return True


def snapshot(request: Any = None) -> dict[str, Any]:
    """This process's counts (the control socket's ``metrics`` op).

    :param request: the control request (unused).
    :return: :meth:`PrometheusObserver.snapshot`, or empty counts when
        metrics are off.
    """
    if installed is None:
        return addSnapshots([])
    return installed.snapshot()


def requirePrometheus() -> None:
    """Check that ``prometheus_client`` (the ``metrics`` extra) is installed.

    :raises provisioningserver.config.ConfigError: when it is not.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        from provisioningserver.config import ConfigError

        raise ConfigError(
            "MAAS_RPC_METRICS_PORT needs prometheus_client: pip install "
            "'maas-rpc[metrics]'"
        ) from None


def setUp(port: int | None, environ: Mapping[str, str] | None = None) -> Any:
    """Install the metrics observer and build the service that serves them.

    :param port: ``MAAS_RPC_METRICS_PORT``, or ``None`` for no metrics.
    :param environ: the environment; ``os.environ`` when ``None``. In a
        worker of ``maas-rpc region`` (``MAAS_RPC_WORKER`` set) the counts
        are handed to the supervisor through the control socket and nothing
        is served here.
    :return: a :class:`MetricsService` to add to the process's services, or
        ``None``.
    :raises provisioningserver.config.ConfigError: when metrics are asked
        for and ``prometheus_client`` is not installed.
    """
    env = os.environ if environ is None else environ
    if port is None:
        return None
    requirePrometheus()
    if not observe(True):
        log.warn(
            "This version of the RPC core reports nothing to observers: the "
            "metrics will stay at zero."
        )
    if env.get("MAAS_RPC_WORKER"):
        return None
    return MetricsService(port, registryFor(snapshot))
