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

**Workers of one region are added up**, with ``prometheus_client``'s
multiprocess mode: ``maas-rpc region`` gives its workers a private directory
(``PROMETHEUS_MULTIPROC_DIR``, below the data directory) in which each
keeps its counters, and serves their sum on the one port itself; a worker
that exits is marked dead so that its open connections stop counting. One
port per region, one scrape target, and counters that survive a worker's
restart. A standalone event-loop or a cluster serves its own.

Without ``MAAS_RPC_METRICS_PORT`` no observer is installed, and the core
pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

__all__ = [
    "BUCKETS",
    "MetricsResource",
    "MetricsService",
    "PrometheusObserver",
    "observe",
    "setUp",
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

    :param registry: the :class:`prometheus_client.CollectorRegistry` to
        register with; a new one when ``None``.
    """

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry() if registry is None else registry
        self.calls = Counter(
            "maas_rpc_calls",
            "RPC calls completed.",
            ["command", "direction"],
            registry=self.registry,
        )
        self.errors = Counter(
            "maas_rpc_call_errors",
            "RPC calls that failed, by error code.",
            ["command", "direction", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "maas_rpc_call_duration_seconds",
            "How long RPC calls took.",
            ["command", "direction"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.connections = Gauge(
            "maas_rpc_connections",
            "RPC connections open, by state.",
            ["side", "state"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.handshakeFailures = Counter(
            "maas_rpc_handshake_failures",
            "Handshakes that failed, by reason.",
            ["side", "reason"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "maas_rpc_reconnects",
            "Connections made again after one was lost.",
            ["side"],
            registry=self.registry,
        )
        # Label lookups cost more than the update: keep the children.
        self._perCommand: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._perError: dict[tuple[str, str, str], Any] = {}

    def callCompleted(
        self, command: str, direction: str, error: str | None, seconds: float
    ) -> None:
        """Count a completed call.

        :param command: the command's name.
        :param direction: ``"out"`` or ``"in"``.
        :param error: the error code, or ``None`` for success.
        :param seconds: how long it took.
        """
        key = (command, direction)
        children = self._perCommand.get(key)
        if children is None:
            children = self._perCommand[key] = (
                self.calls.labels(command, direction),
                self.latency.labels(command, direction),
            )
        children[0].inc()
        children[1].observe(seconds)
        if error is not None:
            failed = self._perError.get((command, direction, error))
            if failed is None:
                if len(self._perError) >= 10000:
                    self._perError.clear()  # Codes are few; never let it grow.
                failed = self._perError[(command, direction, error)] = (
                    self.errors.labels(command, direction, error)
                )
            failed.inc()

    def connectionChanged(self, side: str, state: str, delta: int) -> None:
        """Follow the number of open connections.

        :param side: ``"region"`` or ``"cluster"``.
        :param state: ``"handshake"`` or ``"authenticated"``.
        :param delta: +1 or -1.
        """
        self.connections.labels(side, state).inc(delta)

    def handshakeFailed(self, side: str, reason: str) -> None:
        """Count a failed handshake.

        :param side: ``"region"`` or ``"cluster"``.
        :param reason: a short fixed word (``"wrong-secret"``, ...).
        """
        self.handshakeFailures.labels(side, reason).inc()

    def reconnected(self, side: str) -> None:
        """Count a reconnection.

        :param side: ``"region"`` or ``"cluster"``.
        """
        self.reconnects.labels(side).inc()


_interface = _observerInterface()
if _interface is not None:
    PrometheusObserver = implementer(_interface)(PrometheusObserver)


class MetricsResource(Resource):
    """Serves a registry in Prometheus's text format.

    :param registry: the :class:`prometheus_client.CollectorRegistry`.
    """

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        """Answer with the current values.

        :param request: the request.
        :return: the exposition.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class MetricsService(Service):
    """Serves metrics at ``http://127.0.0.1:<port>/metrics``.

    :param port: the port; 0 for any free one.
    :param registry: what to serve.
    :param reactor: the reactor; the global one when ``None``.
    """

    name = "metrics"  # type: ignore[assignment]

    def __init__(self, port: int, registry: Any, reactor: Any = None) -> None:
        self.port = port
        self.registry = registry
        self._reactor = reactor
        self._listening: Any = None

    @property
    def url(self) -> str:
        """Where the metrics are served."""
        port = self._listening.getHost().port if self._listening else self.port
        return f"http://127.0.0.1:{port}/metrics"

    def startService(self) -> None:
        """Listen on 127.0.0.1.

        :raises twisted.internet.error.CannotListenError: when the port is
            taken.
        """
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        root = Resource()
        root.putChild(b"metrics", MetricsResource(self.registry))
        site = Site(root)
        site.noisy = False
        self._listening = reactor.listenTCP(self.port, site, interface="127.0.0.1")
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop listening.

        :return: a Deferred that fires once closed.
        """
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)


def _setObserver(observer: Any) -> bool:
    try:
        from provisioningserver.rpc.observers import setObserver
    except ImportError:
        log.warn(
            "This version of the RPC core reports nothing to observers: the "
            "metrics will stay at zero."
        )
        return False
    setObserver(observer)
    return True


def observe(on: bool) -> bool:
    """Install a fresh :class:`PrometheusObserver`, or remove the observer.

    The benchmarks use it to measure what metrics cost.

    :param on: whether to observe.
    :return: whether this RPC core reports to observers at all.
    """
    try:
        from provisioningserver.rpc.observers import setObserver
    except ImportError:
        return False
    setObserver(PrometheusObserver() if on else None)
    return True


def setUp(port: int | None, environ: Mapping[str, str] | None = None) -> Any:
    """Install the metrics observer and build the service that serves them.

    :param port: ``MAAS_RPC_METRICS_PORT``, or ``None`` for no metrics.
    :param environ: the environment; ``os.environ`` when ``None``. In a
        worker of ``maas-rpc region`` (``MAAS_RPC_METRICS_DIR`` set) the
        observer writes to that directory and nothing is served here.
    :return: a :class:`MetricsService` to add to the process's services, or
        ``None``.
    :raises provisioningserver.config.ConfigError: when metrics are asked
        for and ``prometheus_client`` is not installed.
    """
    env = os.environ if environ is None else environ
    shared = env.get("MAAS_RPC_METRICS_DIR")
    if port is None and not shared:
        return None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        from provisioningserver.config import ConfigError

        raise ConfigError(
            "MAAS_RPC_METRICS_PORT needs prometheus_client: pip install "
            "'maas-rpc[metrics]'"
        ) from None
    observer = PrometheusObserver()
    _setObserver(observer)
    if shared:
        return None
    return MetricsService(port or 0, observer.registry)
