"""getRegionClient(timeout=...) waits for a connection, as getClientFor does."""

from __future__ import annotations

from twisted.internet.task import Clock

from provisioningserver.rpc import waitForRegionClient
from provisioningserver.rpc.exceptions import NoConnectionsAvailable


class FakeService:
    def __init__(self) -> None:
        self.clock = Clock()
        self.connections: dict[str, object] = {}

    def getClient(self) -> str:
        return f"client of {sorted(self.connections)[0]}"


def test_waits_until_a_region_connects():
    service = FakeService()
    d = waitForRegionClient(service, 5)
    service.clock.advance(1)
    assert not d.called
    service.connections["eventloop"] = object()
    service.clock.advance(0.05)
    assert d.result == "client of eventloop"
    assert not service.clock.getDelayedCalls()


def test_gives_up_after_the_timeout():
    service = FakeService()
    d = waitForRegionClient(service, 2)
    service.clock.pump([0.05] * 39)
    assert not d.called
    service.clock.pump([0.05] * 2)
    failure = d.result
    d.addErrback(lambda _: None)
    assert failure.check(NoConnectionsAvailable)
    assert "within 2 seconds" in str(failure.value)
    assert not service.clock.getDelayedCalls()


def test_cancelling_stops_the_wait():
    service = FakeService()
    d = waitForRegionClient(service, 5)
    d.cancel()
    d.addErrback(lambda _: None)
    assert not service.clock.getDelayedCalls()


def test_get_region_client_without_a_service_raises():
    import pytest

    from provisioningserver.rpc import getRegionClient

    with pytest.raises(NoConnectionsAvailable):
        getRegionClient(timeout=0)
