"""Optional mutual TLS, across real sockets on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import crochet
import pytest
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from maasserver.rpc.regionservice import RegionService
from provisioningserver.config import ConfigError
from provisioningserver.rpc.cluster import EatCheez
from provisioningserver.rpc.clusterservice import ClusterClientService
from provisioningserver.rpc.discovery import makeDiscoveryDocument
from provisioningserver.rpc.tls import (
    CLUSTER_ROLE,
    REGION_ROLE,
    TLSConfig,
    certificateRole,
    makeTestPKI,
)

SECRET = bytes(range(16))
UUID = "a7e1c0de-5eed-4b0b-9a11-7e57ab1e0001"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return makeTestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return makeTestPKI(tmp_path_factory.mktemp("other-pki"))


def tls(pki, role_name):
    stem = "region" if role_name == REGION_ROLE else "cluster"
    return TLSConfig.load(pki["ca"], pki[stem], pki[f"{stem}-key"], role_name)


class LogWatch:
    """Fires when a log line containing ``needle`` is emitted."""

    def __init__(self, needle: str) -> None:
        self.needle = needle
        self.seen: defer.Deferred = defer.Deferred()
        self.lines: list[str] = []

    def __call__(self, event: dict) -> None:
        text = formatEvent(event)
        if self.needle in text:
            self.lines.append(text)
            if not self.seen.called:
                from twisted.internet import reactor

                reactor.callFromThread(self.seen.callback, text)

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)


@crochet.wait_for(timeout=30)
def run_mesh(region_tls, cluster_tls, outcome):
    """Start a region and a cluster service with the given TLS material,
    wait for ``outcome(region, cluster)``, stop both."""
    from twisted.internet import reactor

    region = RegionService(
        SECRET, "tls:pid=1", ports=[0], interface="127.0.0.1", tls=region_tls
    )
    region.startService()
    answer = makeDiscoveryDocument(
        SECRET, {"tls:pid=1": [("127.0.0.1", region.getPort())]}
    )
    cluster = ClusterClientService(
        "http://127.0.0.1:1/MAAS",
        SECRET,
        UUID,
        reactor=reactor,
        fetch=lambda url: defer.succeed(answer),
        intervals=(0.2, 0.2, 5),
        tls=cluster_tls,
    )
    cluster.startService()

    async def go():
        try:
            return await outcome(region, cluster)
        finally:
            await cluster.stopService()
            await region.stopService()

    return defer.Deferred.fromCoroutine(go())


def test_pki_roles(pki):
    assert certificateRole(tls(pki, REGION_ROLE).certificate) == REGION_ROLE
    assert certificateRole(tls(pki, CLUSTER_ROLE).certificate) == CLUSTER_ROLE
    assert oct(Path(pki["region-key"]).stat().st_mode & 0o777) == "0o600"


def test_a_certificate_of_the_wrong_role_is_refused_at_configuration(pki):
    with pytest.raises(ConfigError, match="carries the role"):
        TLSConfig.load(pki["ca"], pki["region"], pki["region-key"], CLUSTER_ROLE)


def test_partial_tls_configuration_is_refused(pki):
    with pytest.raises(ConfigError, match="MAAS_RPC_TLS_KEY"):
        TLSConfig.from_env(
            {
                "MAAS_RPC_TLS_CA": str(pki["ca"]),
                "MAAS_RPC_TLS_CERT": str(pki["region"]),
            },
            REGION_ROLE,
        )
    assert TLSConfig.from_env({}, REGION_ROLE) is None


def test_mutual_tls_then_the_hmac_handshake(reactor_thread, pki):
    async def outcome(region, cluster):
        client = await region.getClientFor(UUID, timeout=10)
        answer = await client(EatCheez, name="Brie", origin="France")
        conn = client.connection
        return (
            answer,
            certificateRole(conn.getPeerCertificate()),
            conn.mode,
            list(cluster.connections.values())[0].mode,
        )

    answer, peer_role, region_tls, cluster_tls = run_mesh(
        tls(pki, REGION_ROLE), tls(pki, CLUSTER_ROLE), outcome
    )
    assert answer == {"rating": 8}
    assert peer_role == CLUSTER_ROLE
    assert region_tls == cluster_tls == "mtls"


def _refused(watch: LogWatch):
    async def outcome(region, cluster):
        text = await watch.seen
        assert region.connections == {}
        assert cluster.connections == {}
        return text

    return outcome


def test_a_cluster_from_another_ca_is_dropped(reactor_thread, pki, other_pki):
    with LogWatch("TLS with") as watch:
        text = run_mesh(
            tls(pki, REGION_ROLE), tls(other_pki, CLUSTER_ROLE), _refused(watch)
        )
    assert "failed" in text


def test_a_region_certificate_cannot_pose_as_a_cluster(reactor_thread, pki):
    region_material = tls(pki, REGION_ROLE)
    # A cluster that presents a region's certificate (signed by the right CA).
    impostor = TLSConfig(
        authority=region_material.authority,
        certificate=region_material.certificate,
        role=CLUSTER_ROLE,
    )
    with LogWatch("presented a certificate for") as watch:
        text = run_mesh(region_material, impostor, _refused(watch))
    assert repr(REGION_ROLE) in text


def test_a_region_with_mutual_tls_refuses_a_cluster_without(reactor_thread, pki):
    with LogWatch("does not use mutual TLS, which this region requires") as watch:
        run_mesh(tls(pki, REGION_ROLE), None, _refused(watch))


def test_a_cluster_with_mutual_tls_refuses_a_region_without(reactor_thread, pki):
    with LogWatch("requires mutual TLS (MAAS_RPC_TLS_*) but the region") as watch:
        run_mesh(None, tls(pki, CLUSTER_ROLE), _refused(watch))
