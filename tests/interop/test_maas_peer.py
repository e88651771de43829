"""This package against a MAAS peer built from stock Twisted AMP alone.

The peer (``maaspeer.py``) runs in its own process, declares the commands
as MAAS declares them, encodes MAAS's argument types from their documented
recipes and behaves as MAAS's ``RPCProtocol`` does. Each test runs in both
arrangements where it makes sense: the stock peer as a MAAS cluster of this
package's region, and as a MAAS region event-loop of this package's
cluster. What the tests show is listed in ``README.md``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import socket
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from provisioningserver.rpc import exceptions
from provisioningserver.rpc.common import callWithFallback
from provisioningserver.rpc.exceptions import ArgumentTooLarge, NoSuchCluster
from provisioningserver.twisted.protocols import amp


def _load(name: str) -> Any:
    """Import a helper module of this folder (pytest runs in importlib mode),
    as ``conftest.load`` does, so that both share one module."""
    qualified = f"maas_rpc_interop_{name}"
    if qualified not in sys.modules:
        path = Path(__file__).resolve().parent / f"{name}.py"
        spec = importlib.util.spec_from_file_location(qualified, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


h = _load("harness")
BOUND = h.BOUND
pattern = h.pattern
digest = h.digest
MiB = 1024 * 1024

#: Raised by this package when a peer's responder crashed (an UNHANDLED
#: error whose description is "Unknown Error [<ref>]"); ``None`` until the
#: protocol core has it, and then the tests that need it fail.
RemoteResponderFailed: Any = getattr(exceptions, "RemoteResponderFailed", None)

HOST = socket.gethostname()


def maas_json(value: Any) -> bytes:
    """MAAS's StructureAsJSON bytes."""
    return zlib.compress(json.dumps(value).encode("ascii"))


def reference_of(pid: int, command: str) -> str:
    """A regular expression for MAAS's reference of a failed command."""
    return re.escape(f"{HOST}:pid={pid}:cmd={command}:ask=") + r"[0-9a-f]+"


def error_box_after(link: Any, mark: int) -> dict[str, Any]:
    """The first error box the stock peer received after ``mark``."""
    return link.peer.expect(
        lambda e: e.get("event") == "box" and e.get("kind") == "error",
        "an error answer",
        since=mark,
    )


def assert_still_connected(link: Any) -> None:
    """Both sides still talk on the same connection."""
    assert link.call(h.EchoBytes, data=b"still here") == {"data": b"still here"}
    assert link.peer.call("EchoBytes", data={"$hex": "00ff"})["ok"]


# The peer is what it claims to be.


def test_the_peer_imports_stock_twisted_only():
    tree = ast.parse(h.PEER_SCRIPT.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the peer"
            roots.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"twisted"}
    assert roots <= allowed, roots - allowed


def test_handshake_in_legacy_mode(link):
    assert link.peer.ready["foreign"] == [], "the peer loaded this package's code"
    if link.role == "peer-is-cluster":
        # The stock cluster registered with MAAS's optional arguments.
        conn = link.conn
        assert conn.ident == h.CLUSTER_UUID
        assert conn.networks == [
            {"interface": "eth0", "ip": "10.0.0.2", "subnet_mask": "255.255.255.0"}
        ]
        assert conn.url.geturl() == "http://127.0.0.1:5240/MAAS"
        assert conn.ip_addr_json == '{"eth0": ["10.0.0.2/24"]}'
    else:
        register = link.peer.expect(
            lambda e: e.get("event") == "register-received", "Register"
        )
        assert register["uuid"] == h.CLUSTER_UUID
        assert register["url"] == "http://127.0.0.1:5240/MAAS"
        assert link.peer.expect(lambda e: e.get("event") == "registered", "Register")


def test_client_has_maas_certificate_methods(link):
    """MAAS's ``Client`` has ``getHostCertificate``, ``getPeerCertificate``
    and ``isSecure``; a legacy connection has no TLS."""
    results = {}
    for name in ("getHostCertificate", "getPeerCertificate", "isSecure"):
        method = getattr(link.client, name, None)
        assert method is not None, f"Client.{name} is missing"
        value = method()
        results[name] = value.wait(BOUND) if hasattr(value, "wait") else value
    assert results == {
        "getHostCertificate": None,
        "getPeerCertificate": None,
        "isSecure": False,
    }


# Issue 11 item 1: values over 64 KiB.


@pytest.mark.parametrize("size", [0, 1, 65535])
def test_values_that_fit_reach_the_stock_peer_intact(link, size):
    assert link.call(h.EchoBytes, data=pattern(size)) == {"data": pattern(size)}


@pytest.mark.parametrize("size", [65536, 4 * MiB], ids=["65536", "4MiB"])
def test_oversized_value_to_the_stock_peer_is_refused_before_sending(link, size):
    mark = link.peer.mark()
    try:
        answer = link.call(h.EchoBytes, data=pattern(size))
    except ArgumentTooLarge as error:
        refused = error
    else:
        got = len(answer["data"])
        pytest.fail(
            f"sent {size} bytes to a stock MAAS peer and no error was raised: "
            f"the peer echoed {got} bytes"
            + (" (silently truncated)" if got != size else "")
        )
    assert (refused.command, refused.key, refused.size) == (b"EchoBytes", b"data", size)
    assert refused.limit == 65535
    assert "'data'" in str(refused) and str(size) in str(refused)
    # Nothing went out: the next EchoBytes is the first the peer sees.
    link.call(h.EchoBytes, data=b"marker")
    link.peer.expect(
        lambda e: e.get("command") == "EchoBytes" and e["keys"].get("data") == 6,
        "the marker",
        since=mark,
    )
    sent = link.peer.since(mark, event="box", kind="command", command="EchoBytes")
    assert [(set(box["keys"]), box["keys"]["data"]) for box in sent] == [
        ({"_ask", "_command", "data"}, 6)
    ], "the oversized value, or part of it, reached the peer"


@pytest.mark.parametrize(
    "size", [65535, 65536, 4 * MiB], ids=["65535", "65536", "4MiB"]
)
def test_oversized_answer_to_the_stock_caller_is_an_error(link, size):
    mark = link.peer.mark()
    reply = link.peer.call("MakeBytes", size=size)
    if size <= 65535:
        assert reply == {
            "id": reply["id"],
            "ok": True,
            "answer": {"data": {"$bytes": size, "sha256": digest(pattern(size))}},
        }
        return
    assert not reply["ok"], (
        f"the stock caller got an answer of {reply['answer']['data']['$bytes']} "
        f"bytes where {size} were made (silently truncated)"
    )
    box = error_box_after(link, mark)
    assert box["code"] == "UNHANDLED"
    assert re.fullmatch(
        r"Unknown Error \[" + reference_of(os.getpid(), "MakeBytes") + r"\]",
        box["description"],
    ), box["description"]
    assert reply["type"] == "UnhandledCommand"
    assert_still_connected(link)


def names(count: int) -> list[dict[str, str]]:
    """List items that barely compress (65 bytes each once compressed)."""
    return [{"name": digest(b"%d" % i)} for i in range(count)]


def test_compressed_list_that_fits_both_ways(link):
    items = names(800)
    assert len(h.CompressedAmpList(h.NAMES).toStringProto(items, None)) < 65535
    assert link.call(h.EchoList, items=items) == {"items": items}
    reply = link.peer.call("EchoList", items=items)
    assert reply["ok"] and reply["answer"] == {"items": items}


def test_compressed_list_over_64k_to_the_stock_peer_is_refused(link):
    items = names(3000)
    size = len(h.CompressedAmpList(h.NAMES).toStringProto(items, None))
    assert size > 65535
    try:
        answer = link.call(h.EchoList, items=items)
    except ArgumentTooLarge as error:
        assert (error.key, error.size) == (b"items", size)
    except amp.UnhandledCommand as error:
        pytest.fail(f"sent, and the stock peer could not read it: {error}")
    else:
        pytest.fail(f"sent, and {len(answer['items'])} of {len(items)} items came back")


def test_compressed_list_in_maas_2024_chunks_is_received(link):
    """MAAS from 2024-07 to 2026-07 sent a compressed list over 65,535 bytes
    as ``items``, ``items.2``, ...: this package reassembles it."""
    items = names(5000)
    mark = link.peer.mark()
    reply = link.peer.call("SumList2024", items=items)
    sent = link.peer.expect(lambda e: e.get("event") == "sent-chunks", "chunks", mark)
    assert sent["keys"] == ["items", "items.2", "items.3"], sent
    assert reply["ok"], reply
    assert reply["answer"] == {"count": 5000, "sha256": h.listDigest(items)}


# Issue 11 item 2: StructureAsJSON is MAAS's zlib-compressed JSON.

JSON_VALUES = [
    None,
    0,
    -(2**70),
    1.5,
    "",
    "caf\u00e9 \u65e5\u672c \U0001f600",
    [True, False, None, "x"],
    {"b": 1, "a": [1, 2, {"\u00fc": None}]},
    {"long": "x" * 60_000},  # Its JSON text nearly fills an AMP value.
    [digest(b"%d" % i) for i in range(800)],  # 57 KB of JSON, 30 KB zlib.
]


def json_id(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) < 24 else f"{type(value).__name__}-{len(text)}"


@pytest.mark.parametrize("value", JSON_VALUES, ids=json_id)
def test_structure_as_json_bytes_sent_are_maas_bytes(link, value):
    raw = link.call(h.ShowJSON, value=value)["raw"]
    assert raw == maas_json(value)


@pytest.mark.parametrize("value", JSON_VALUES, ids=json_id)
def test_structure_as_json_bytes_answered_are_maas_bytes(link, value):
    reply = link.peer.call("MakeJSON", text=json.dumps(value))
    assert reply["ok"], reply
    expected = maas_json(value)
    assert reply["answer"]["value"] == {
        "$bytes": len(expected),
        "sha256": digest(expected),
    }


@pytest.mark.parametrize("value", JSON_VALUES, ids=json_id)
def test_structure_as_json_from_the_stock_peer(link, value):
    reply = link.peer.call("EchoJSON", value={"$json": value})
    assert reply["ok"], reply
    assert link.conn.received[-1] == value  # This package decoded MAAS's bytes.
    assert reply["answer"] == {"value": value}  # The peer decoded this package's.


@pytest.mark.parametrize("value", JSON_VALUES, ids=json_id)
def test_structure_as_json_to_the_stock_peer(link, value):
    assert link.call(h.EchoJSON, value=value) == {"value": value}


# Issue 11 item 3: error codes.


def test_crashed_responder_here_answers_unhandled_unknown_error(link):
    mark = link.peer.mark()
    reply = link.peer.call("Crash")
    box = error_box_after(link, mark)
    assert (box["code"], reply["type"]) == ("UNHANDLED", "UnhandledCommand"), box
    assert re.fullmatch(
        r"Unknown Error \[" + reference_of(os.getpid(), "Crash") + r"\]",
        box["description"],
    ), box["description"]
    assert_still_connected(link)


def test_unparseable_argument_here_answers_unhandled_unknown_error(link):
    """A value that does not decode (here plain JSON where MAAS sends zlib)
    fails like a crashed responder, as in MAAS."""
    mark = link.peer.mark()
    link.peer.call("EchoJSONRaw", value={"$hex": b'{"plain": "json"}'.hex()})
    box = error_box_after(link, mark)
    assert box["code"] == "UNHANDLED", box
    assert box["description"].startswith("Unknown Error ["), box
    assert_still_connected(link)


def test_crashed_stock_responder_raises_remote_responder_failed(link):
    with pytest.raises(amp.UnhandledCommand) as info:
        link.call(h.Crash)
    error = info.value
    assert RemoteResponderFailed is not None, (
        f"exceptions.RemoteResponderFailed does not exist; got {error!r}"
    )
    assert isinstance(error, RemoteResponderFailed), repr(error)
    assert re.fullmatch(reference_of(link.peer.pid, "Crash"), error.reference)
    assert error.description == f"Unknown Error [{error.reference}]"
    assert_still_connected(link)


def test_command_the_stock_peer_lacks_raises_plain_unhandled(link):
    with pytest.raises(amp.UnhandledCommand) as info:
        link.call(h.MissingCommand, data=b"x")
    assert RemoteResponderFailed is None or not isinstance(
        info.value, RemoteResponderFailed
    )
    assert "Unhandled Command" in str(info.value)
    assert_still_connected(link)


def test_call_with_fallback_raises_when_the_newer_command_crashed(link):
    result = callWithFallback(
        link.client,
        (h.CrashingCommand, {"data": b"new"}),
        (h.EchoBytes, {"data": b"old"}),
        _timeout=BOUND,
    )
    try:
        command, answer = result.wait(BOUND)
    except amp.UnhandledCommand as error:
        assert RemoteResponderFailed is not None
        assert isinstance(error, RemoteResponderFailed), repr(error)
    else:
        pytest.fail(
            f"fell back to {command.__name__} (answer {answer}) although the "
            "peer has CrashingCommand and it crashed"
        )


def test_call_with_fallback_falls_back_when_the_peer_lacks_the_command(link):
    result = callWithFallback(
        link.client,
        (h.MissingCommand, {"data": b"new"}),
        (h.EchoBytes, {"data": b"old"}),
        _timeout=BOUND,
    )
    command, answer = result.wait(BOUND)
    assert (command, answer) == (h.EchoBytes, {"data": b"old"})


def test_declared_error_from_the_stock_peer(link):
    with pytest.raises(NoSuchCluster) as info:
        link.call(h.FindCluster, uuid=h.CLUSTER_UUID)
    assert str(info.value) == f"The cluster with UUID {h.CLUSTER_UUID} is unknown here."


def test_declared_error_to_the_stock_peer(link):
    mark = link.peer.mark()
    reply = link.peer.call("FindCluster", uuid=h.CLUSTER_UUID)
    box = error_box_after(link, mark)
    assert box["code"] == "NoSuchCluster"
    assert box["description"] == str(NoSuchCluster.from_uuid(h.CLUSTER_UUID))
    assert (reply["type"], reply["description"]) == (
        "NoSuchCluster",
        box["description"],
    )


# The cluster's keepalive against a stock region.


def test_keepalive_drops_a_region_whose_ping_crashes(peers, tmp_path):
    link = peers.add(h.peerIsRegion(tmp_path, "--ping", "crash", keepaliveInterval=0.3))
    mark = link.peer.mark()
    outcome = link.peer.expect(
        lambda e: (
            e.get("event") == "connection-lost"
            or len(link.peer.since(mark, event="box", command="Ping")) >= 3
        ),
        "the connection dropped, or three pings",
        since=mark,
    )
    assert outcome.get("event") == "connection-lost", (
        "3 pings answered UNHANDLED / Unknown Error and the cluster kept the "
        "connection: a crashed Ping counted as alive"
    )
    # Dropped after the first crashed ping (later ones are a new connection).
    before = link.peer.events[mark : link.peer.events.index(outcome)]
    pings = [e for e in before if e.get("command") == "Ping"]
    assert len(pings) == 1, pings


def test_keepalive_keeps_a_region_without_ping(peers, tmp_path):
    link = peers.add(
        h.peerIsRegion(tmp_path, "--ping", "absent", keepaliveInterval=0.3)
    )
    mark = link.peer.mark()
    link.peer.expect(
        lambda e: (
            len(link.peer.since(mark, event="box", command="Ping")) >= 3
            or e.get("event") == "connection-lost"
        ),
        "three pings",
        since=mark,
    )
    assert link.peer.since(mark, event="connection-lost") == []
    errors = link.peer.since(mark, event="box", kind="error")
    assert errors == [], "the peer received error answers"
    assert link.healthy()


def test_keepalive_keeps_a_region_whose_ping_answers(peers, tmp_path):
    link = peers.add(h.peerIsRegion(tmp_path, keepaliveInterval=0.3))
    mark = link.peer.mark()
    link.peer.expect(
        lambda e: (
            len(link.peer.since(mark, event="box", command="Ping")) >= 3
            or e.get("event") == "connection-lost"
        ),
        "three pings",
        since=mark,
    )
    assert link.peer.since(mark, event="connection-lost") == []
    assert link.healthy()


# Commands sent to the region before the handshake is complete.


class Stopper:
    """Stops a service of this package when the test ends."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def close(self) -> None:
        h.inReactor(self.service.stopService)


def start_early_cluster(peers: Any, tmp_path: Any, *args: str) -> Any:
    service, port = h.startRegionService(tmp_path)
    peers.add(Stopper(service))
    peer = peers.add(
        h.StockPeer(
            tmp_path,
            "--role",
            "cluster",
            "--uuid",
            h.CLUSTER_UUID,
            "--connect",
            f"127.0.0.1:{port}",
            *args,
        )
    )
    return service, peer


def test_unknown_command_during_the_handshake_is_unhandled(peers, tmp_path):
    service, peer = start_early_cluster(peers, tmp_path, "--early", "Bogus,Crash")
    bogus = peer.expect(lambda e: e.get("command") == "Bogus" and "ok" in e, "Bogus")
    crash = peer.expect(lambda e: e.get("command") == "Crash" and "ok" in e, "Crash")
    peer.expect(lambda e: e.get("event") == "registered", "registration")
    first, second = peer.since(0, event="box", kind="error")[:2]
    assert (first["code"], first["description"]) == (
        "UNHANDLED",
        "Unhandled Command: b'Bogus'",
    ), first
    assert (bogus["ok"], bogus["type"]) == (False, "UnhandledCommand")
    # A command the region knows is refused until the handshake completes.
    assert second["code"] == "NOT_AUTHENTICATED", second
    assert crash["ok"] is False


def test_hang_up_after_a_refused_command_is_not_blamed_on_the_secret(
    peers, tmp_path, logged
):
    service, peer = start_early_cluster(
        peers, tmp_path, "--early", "Crash", "--hangup-early"
    )
    peer.expect(lambda e: e.get("event") == "connection-lost", "the hang-up")
    h.waitFor(
        lambda: h.inReactor(lambda: not service.live),
        "the region to see the hang-up",
        timeout=BOUND,
    )
    blamed = logged.lines("shared secret")
    assert blamed == [], blamed
