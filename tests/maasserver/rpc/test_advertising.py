"""RegionAdvertisingService under an injected clock, and the discovery
endpoint over a real socket."""

from __future__ import annotations

import json

import crochet
import pytest
import treq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from maasserver.rpc.regionservice import (
    RegionAdvertisingService,
    RegionService,
    listAddresses,
)
from maasserver.rpc.stores import MemoryAdvertisementStore
from maasserver.web import WebService, makeSite
from provisioningserver.rpc.discovery import readDiscovery, signEventloops

successResultOf = SynchronousTestCase().successResultOf

SECRET = bytes(range(16))


class ListeningRPC(RegionService):
    """A RegionService that pretends to listen on a port."""

    def __init__(self, port: int | None) -> None:
        super().__init__(SECRET, "host:pid=7", interface="127.0.0.1")
        self.port = port

    def getPort(self):
        return self.port


def test_advertises_at_start_refreshes_and_withdraws_at_stop():
    clock = Clock()
    store = MemoryAdvertisementStore(clock)
    service = RegionAdvertisingService(
        store, ListeningRPC(5251), interval=60, expiry=300, clock=clock
    )
    service.startService()
    assert service.advertising.isSet
    assert successResultOf(store.eventloops()) == {"host:pid=7": [("127.0.0.1", 5251)]}
    # Another event-loop advertised once and then died.
    store.advertise("host:pid=99", [("127.0.0.1", 5252)])
    for _ in range(6):
        clock.advance(60)
    # Refreshed every minute, so ours survives; the dead one is collected
    # once it is older than 5 minutes.
    assert set(successResultOf(store.eventloops())) == {"host:pid=7"}
    successResultOf(service.stopService())
    assert successResultOf(store.eventloops()) == {}
    assert clock.getDelayedCalls() == []


def test_nothing_is_advertised_before_the_rpc_port_is_known():
    clock = Clock()
    store = MemoryAdvertisementStore(clock)
    rpc = ListeningRPC(None)
    service = RegionAdvertisingService(store, rpc, interval=60, clock=clock)
    service.startService()
    assert not service.advertising.isSet
    assert successResultOf(store.eventloops()) == {}
    rpc.port = 5250
    clock.advance(60)
    assert service.advertising.isSet
    successResultOf(service.stopService())


def test_list_addresses():
    assert listAddresses("127.0.0.1") == ["127.0.0.1"]
    every = listAddresses("")
    assert "127.0.0.1" in every
    assert not [a for a in every if a.startswith("169.254.") or ":" in a]


@crochet.wait_for(timeout=10)
def _serve_and_get(paths, advertised):
    from twisted.internet import reactor

    clock = Clock()
    store = MemoryAdvertisementStore(clock)
    advertising = RegionAdvertisingService(
        store, ListeningRPC(5250), interval=60, clock=clock
    )
    if advertised:
        advertising.startService()
    web = WebService(makeSite(advertising), 0, "127.0.0.1", reactor=reactor)
    web.startService()
    port = web.getPort()

    async def get_all():
        results = {}
        try:
            for path in paths:
                response = await treq.get(
                    f"http://127.0.0.1:{port}{path}", persistent=False
                )
                body = await treq.content(response)
                results[path] = (response.code, body)
        finally:
            await web.stopService()
            if advertising.running:
                await advertising.stopService()
        return results

    return defer.Deferred.fromCoroutine(get_all())


def test_discovery_says_ask_later_before_advertising(reactor_thread):
    results = _serve_and_get(["/MAAS/rpc/"], advertised=False)
    code, body = results["/MAAS/rpc/"]
    assert code == 200
    assert json.loads(body) == {
        "eventloops": None,
        "mac": signEventloops(SECRET, None),
    }
    assert readDiscovery(body, SECRET).eventloops is None


@pytest.mark.parametrize("path", ["/MAAS/rpc/", "/MAAS/rpc"])
def test_discovery_lists_event_loops(reactor_thread, path):
    results = _serve_and_get([path, "/MAAS/rpc/other", "/MAAS/"], advertised=True)
    code, body = results[path]
    assert code == 200
    eventloops = {"host:pid=7": [["127.0.0.1", 5250]]}
    assert json.loads(body) == {
        "eventloops": eventloops,
        "mac": signEventloops(SECRET, eventloops),
    }
    discovery = readDiscovery(body, SECRET)
    assert discovery.signed
    assert discovery.eventloops == {"host:pid=7": [("127.0.0.1", 5250)]}
    # Nothing else is served.
    assert results["/MAAS/rpc/other"][0] == 404
    assert results["/MAAS/"][0] == 404


def test_stopping_releases_a_store_that_keeps_a_connection():
    clock = Clock()

    class ClosingStore(MemoryAdvertisementStore):
        closed = 0

        def close(self):
            ClosingStore.closed += 1
            return defer.succeed(None)

    store = ClosingStore(clock)
    service = RegionAdvertisingService(store, ListeningRPC(5250), clock=clock)
    service.startService()
    successResultOf(service.stopService())
    assert ClosingStore.closed == 1
    assert successResultOf(store.eventloops()) == {}
