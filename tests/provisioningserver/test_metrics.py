"""Metrics: counted without locks, added up across processes, shown in
Prometheus's text format."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import generate_latest  # noqa: E402
from zope.interface.verify import verifyObject  # noqa: E402

from provisioningserver import metrics  # noqa: E402
from provisioningserver.rpc.interfaces import IRPCObserver  # noqa: E402


def counted() -> metrics.PrometheusObserver:
    observer = metrics.PrometheusObserver()
    observer.callCompleted("EatCheez", "out", None, 0.002)
    observer.callCompleted("EatCheez", "out", "NoSuchCheese", 0.3)
    observer.callCompleted("Ping", "in", None, 100.0)
    observer.connectionChanged("region", "authenticated", 1)
    observer.connectionChanged("region", "authenticated", 1)
    observer.connectionChanged("region", "authenticated", -1)
    observer.handshakeFailed("region", "wrong-secret")
    observer.reconnected("cluster")
    return observer


def test_it_is_an_rpc_observer():
    assert verifyObject(IRPCObserver, metrics.PrometheusObserver())


def test_exposition():
    text = generate_latest(metrics.registryFor(counted().snapshot)).decode()
    assert 'maas_rpc_calls_total{command="EatCheez",direction="out"} 2.0' in text
    assert (
        'maas_rpc_call_errors_total{code="NoSuchCheese",command="EatCheez",'
        'direction="out"} 1.0' in text
    )
    assert (
        'maas_rpc_call_duration_seconds_bucket{command="EatCheez",'
        'direction="out",le="0.0025"} 1.0' in text
    )
    assert (
        'maas_rpc_call_duration_seconds_bucket{command="Ping",direction="in",'
        'le="+Inf"} 1.0' in text
    )
    assert 'maas_rpc_connections{side="region",state="authenticated"} 1.0' in text
    assert (
        'maas_rpc_handshake_failures_total{reason="wrong-secret",side="region"} 1.0'
        in text
    )
    assert 'maas_rpc_reconnects_total{side="cluster"} 1.0' in text


def test_snapshots_of_several_processes_add_up():
    one, two = counted().snapshot(), counted().snapshot()
    total = metrics.addSnapshots([one, two])
    text = generate_latest(metrics.registryFor(lambda: total)).decode()
    assert 'maas_rpc_calls_total{command="EatCheez",direction="out"} 4.0' in text
    assert 'maas_rpc_connections{side="region",state="authenticated"} 2.0' in text
    empty = metrics.addSnapshots([])
    assert generate_latest(metrics.registryFor(lambda: empty))


def test_no_port_no_observer():
    assert metrics.setUp(None, {}) is None
