"""Tests for :mod:`maasserver.rpc`: ``getClientFor`` and ``getAllClients``
in the reactor thread and from other threads."""

from __future__ import annotations

import crochet
import pytest
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred

from maasserver import eventloop
from maasserver.rpc import getAllClients, getClientFor
from provisioningserver.rpc.exceptions import NoConnectionsAvailable
from provisioningserver.utils.twisted import isInReactorThread

UUID = "9a1d0e7c-0000-4000-8000-000000000001"


class FakeRPCService(Service):
    """Stands in for the ``rpc`` service (a RegionService).

    :ivar asked: the ``(uuid, timeout)`` pairs ``getClientFor`` was asked
        for, with whether it was asked in the reactor thread.
    """

    name = "rpc"

    def __init__(self, clients=(), answer=None):
        self.clients = list(clients)
        self.answer = answer
        self.asked = []

    def getClientFor(self, uuid, timeout=30):
        self.asked.append((uuid, timeout, isInReactorThread()))
        if self.answer is not None:
            return self.answer
        if self.clients:
            return defer.succeed(self.clients[0])
        return defer.fail(NoConnectionsAvailable("none", uuid=uuid))

    def getAllClients(self):
        self.asked.append(("all", None, isInReactorThread()))
        return list(self.clients)


@pytest.fixture
def rpc(reactor_thread):
    """Put a :class:`FakeRPCService` into the event-loop's services.

    :return: a function ``install(service, running=True)``.
    """
    assert "rpc" not in {s.name for s in eventloop.services}
    installed = []

    def install(service, running=True):
        service.running = running
        eventloop.services.addService(service)
        installed.append(service)
        return service

    yield install
    for service in installed:
        eventloop.services.removeService(service)


@crochet.wait_for(timeout=10)
def in_reactor(func, *args, **kwargs):
    """Call ``func`` in the reactor thread.

    :return: ``[outcome]``, where outcome is its result or, if it raised,
        ``("raised", exception)``: the list keeps crochet from waiting on a
        Deferred.
    """
    try:
        return [func(*args, **kwargs)]
    except Exception as e:  # noqa: BLE001 - handed back to the test
        return [("raised", e)]


def _failure_of(d):
    failures = []
    d.addErrback(failures.append)
    assert failures, f"{d!r} has not failed"
    return failures[0]


@pytest.mark.parametrize("state", ["no service", "not running"])
def test_getClientFor_in_reactor_without_event_loop_returns_failed_deferred(rpc, state):
    """BUG: it raised NoConnectionsAvailable synchronously in the reactor,
    though MAAS (and the docstring) promise a Deferred there."""
    if state == "not running":
        rpc(FakeRPCService(clients=["client"]), running=False)
    (d,) = in_reactor(getClientFor, UUID)
    assert isinstance(d, Deferred), d
    failure = _failure_of(d)
    assert failure.check(NoConnectionsAvailable)
    assert failure.value.uuid == UUID


@pytest.mark.parametrize("state", ["no service", "not running"])
def test_getClientFor_from_thread_without_event_loop_raises(rpc, state):
    if state == "not running":
        rpc(FakeRPCService(clients=["client"]), running=False)
    with pytest.raises(NoConnectionsAvailable) as raised:
        getClientFor(UUID)
    assert raised.value.uuid == UUID


def test_getClientFor_in_reactor_returns_the_services_deferred(rpc):
    answer = Deferred()
    service = rpc(FakeRPCService(answer=answer))
    (d,) = in_reactor(getClientFor, UUID, timeout=5)
    assert d is answer
    assert service.asked == [(UUID, 5, True)]
    in_reactor(answer.callback, "client")


def test_getClientFor_in_reactor_no_connection_fails_the_deferred(rpc):
    rpc(FakeRPCService())
    (d,) = in_reactor(getClientFor, UUID)
    assert _failure_of(d).check(NoConnectionsAvailable)


def test_getClientFor_in_reactor_service_raising_fails_the_deferred(rpc):
    service = rpc(FakeRPCService())

    def broken(uuid, timeout=30):
        raise NoConnectionsAvailable("broken", uuid=uuid)

    service.getClientFor = broken
    (d,) = in_reactor(getClientFor, UUID)
    assert _failure_of(d).check(NoConnectionsAvailable)


def test_getClientFor_from_thread_blocks_and_returns_the_client(rpc):
    service = rpc(FakeRPCService(clients=["client"]))
    assert getClientFor(UUID, timeout=3) == "client"
    assert service.asked == [(UUID, 3, True)]  # Asked in the reactor.


def test_getClientFor_from_thread_waits_for_a_later_answer(rpc, reactor_thread):
    answer = Deferred()
    rpc(FakeRPCService(answer=answer))
    reactor_thread.callFromThread(reactor_thread.callLater, 0, answer.callback, "c")
    assert getClientFor(UUID, timeout=30) == "c"


def test_getClientFor_from_thread_raises_no_connections(rpc):
    rpc(FakeRPCService())
    with pytest.raises(NoConnectionsAvailable):
        getClientFor(UUID)


@pytest.mark.parametrize("state", ["no service", "not running"])
def test_getAllClients_without_event_loop_is_empty(rpc, state):
    if state == "not running":
        rpc(FakeRPCService(clients=["client"]), running=False)
    assert in_reactor(getAllClients) == [[]]
    assert getAllClients() == []


def test_getAllClients_in_reactor_and_from_thread(rpc):
    service = rpc(FakeRPCService(clients=["a", "b"]))
    assert in_reactor(getAllClients) == [["a", "b"]]
    assert getAllClients() == ["a", "b"]
    assert [in_reactor for _, _, in_reactor in service.asked] == [True, True]
