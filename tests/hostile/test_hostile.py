"""Issue 13's table, reproduced against real processes on 127.0.0.1.

Each test is one row: it attacks a real region event-loop (or a real
cluster), reads the victim's RSS and open descriptors from ``/proc`` before,
during and after, asserts the documented bound and the return to baseline,
and checks that a legitimate cluster stayed connected and answered a call
through the region within a second throughout (its probes, see
``ext/hostileext``). The figures measured are printed (run with ``-s``);
the bounds asserted are generous, never tight times.

The region runs with legacy (MAAS) peers allowed (``MAAS_RPC_ALLOW_LEGACY_PEERS=1``)
so that an attacker speaking raw AMP reaches the handshake state a row is
about, under ``ulimit -n 1024``, with ``MAAS_RPC_HANDSHAKE_TIMEOUT=5``,
``MAAS_RPC_HTTP_TIMEOUT=3`` and ``MAAS_RPC_MAX_UNAUTHENTICATED_TOTAL=200``;
rows 1 and 4 also run against a region in the default (secure) mode.

=====  ==========================================  =================================
row    attack                                      bound asserted
=====  ==========================================  =================================
1      a box of endless distinct 3-byte keys,      peak +40 MiB for 20 connections,
       before auth (20 connections) and after      +40 MiB after auth; back within
       auth (8 MB of keys on one connection)       +20 MiB (``MAAS_RPC_MAX_KEYS``)
2      200 pipelined ``Register`` of 1 MB before   peak +40 MiB, back within +20 MiB
       auth, never answering ``Identify``          (one pending ``Register``)
3      80 connections dropped mid-box (900 KB)     back within +30 MiB and baseline
                                                   fds within 5 s, no full GC waited
4      600 idle connections from 6 addresses       region holds at most 200 (+10)
                                                   (``MAAS_RPC_MAX_UNAUTHENTICATED_TOTAL``)
5      1,100 idle HTTP connections from one        at most 64 (+16) descriptors
       address; a header trickling in              (``MAAS_RPC_HTTP_MAX_PER_ADDRESS``);
                                                   discovery answers others; the
                                                   trickle dropped by 3 s (+3)
6      ``POST`` of 200 MB; a 20-digit              413 before the body; at most 16
       ``Content-Length``                          MiB taken; no temp file; +10 MiB
7      a 100 MB discovery body (with and           the cluster: peak +20 MiB, at most
       without a length)                           16 MiB taken per fetch
8      discovery listing 5,000 event-loops         the cluster: +26 fds at most, a
                                                   few log lines (< 20 KB)
9      5,000 addresses for one event-loop          a poll every <= 10 s
10     a discovery body dripping 1 byte/s          each fetch dropped by 3 s (+2);
                                                   reconnects once discovery is back;
                                                   SIGTERM exits within 5 s
11     10 ``Register`` with 27,777 networks,       probes within 1 s throughout
       before auth
12     a 24 KB ``CompressedAmpList`` of 2.4 M      refused; peak +40 MiB; probes
       items                                       within 1 s
13     500 KB idents, control characters in        no log line over 2,000 characters,
       idents, commands, ask tags and discovery    no raw control character, no
       names                                       forged line
14     a reflected challenge                       a declared error (not UNKNOWN or
                                                   UNHANDLED); one warning line, no
                                                   traceback
15     secret 0644 / 0666 / a directory /          one line each and exit; a new data
       ``/dev/zero``; a new data directory         directory is 0700
16     ``tls-init`` over 0644 keys and a           keys 0600, the symlink's target
       planted symlink                             untouched
=====  ==========================================  =================================
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest

from provisioningserver.security import get_or_create_shared_secret

HERE = Path(__file__).resolve().parent


def _load(name: str) -> Any:
    qualified = f"maas_rpc_hostile_{name}_module"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


H = _load("hostile")
ampwire = H.ampwire
waitFor = H.waitFor
MiB = H.MiB
BOUND = H.BOUND

#: The legacy-allowed region's settings (see the module docstring).
LEGACY = {
    "MAAS_RPC_ALLOW_LEGACY_PEERS": "1",
    "MAAS_RPC_HANDSHAKE_TIMEOUT": "5",
    "MAAS_RPC_HTTP_TIMEOUT": "3",
    "MAAS_RPC_MAX_UNAUTHENTICATED_TOTAL": "200",
}

#: The secure (default) region's.
SECURE = {
    "MAAS_RPC_HANDSHAKE_TIMEOUT": "5",
    "MAAS_RPC_MAX_UNAUTHENTICATED_TOTAL": "200",
}


def report(row: int, what: str, **figures: Any) -> None:
    """Print a row's figures."""
    shown = ", ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\nrow {row}: {what}: {shown}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    mesh = H.Mesh(tmp_path_factory.mktemp("legacy"), nofile=1024, **LEGACY)
    try:
        yield mesh
    finally:
        mesh.close()


@pytest.fixture(scope="module")
def secureMesh(tmp_path_factory: pytest.TempPathFactory):
    mesh = H.Mesh(tmp_path_factory.mktemp("secure"), **SECURE)
    try:
        yield mesh
    finally:
        mesh.close()


def pace(seconds: float) -> None:
    """Let an attack run for ``seconds`` (the attacker's pace: nothing is
    waited for)."""
    threading.Event().wait(seconds)


def settle(meter: Any, baseline: Any, *, rss: int, seconds: float = 5.0) -> Any:
    """Wait until the descriptors are back to the baseline (+2) and RSS
    within ``rss`` bytes of it; return the last reading either way."""
    readings = []

    def settled() -> bool:
        readings.append(meter.now())
        last = readings[-1]
        return last.fds <= baseline.fds + 2 and last.rss <= baseline.rss + rss

    try:
        waitFor(settled, "the process to return to its baseline", timeout=seconds)
    except AssertionError:
        pass
    return readings[-1]


def keysBox(count: int) -> bytes:
    """Pairs of distinct 3-byte keys with empty values, not ended."""
    return b"".join(
        b"\x00\x03" + struct.pack(">I", n)[1:] + b"\x00\x00" for n in range(1, count)
    )


# Row 1.

KEYS = keysBox(180_000)  # 1.26 MB: more than the 1 MiB box cap.


@pytest.mark.parametrize("which", ["mesh", "secureMesh"])
def test_row01_a_box_of_endless_keys_before_authentication(request, which):
    mesh = request.getfixturevalue(which)
    baseline = mesh.ready()
    start = time.monotonic()
    socks = [H.connectFrom(f"127.0.1.{n + 1}", mesh.rpcPort) for n in range(20)]
    with mesh.meter.sampling() as sampler:
        sent = H.blast(
            socks, lambda off: KEYS[off : off + 65536], limit=len(KEYS), seconds=10
        )
        for sock in socks:
            H.reset(sock)
        after = settle(mesh.meter, baseline, rss=20 * MiB)
    probes = mesh.probes.window(start, time.monotonic())
    report(
        1,
        f"20 connections x {len(KEYS)} bytes of keys before auth ({which})",
        baseline=baseline,
        peak=sampler.peak,
        after=after,
        taken=f"{sum(s.sent for s in sent) / MiB:.1f} MiB",
        closedByRegion=sum(s.closed for s in sent),
        probes=probes,
    )
    assert sampler.peak.rss - baseline.rss <= 40 * MiB
    assert after.rss - baseline.rss <= 20 * MiB
    assert after.fds <= baseline.fds + 2
    probes.check()


def test_row01_endless_keys_after_authentication(mesh):
    baseline = mesh.ready()
    start = time.monotonic()
    peer = H.rawCluster(mesh.rpcPort, mesh.secret, source="127.0.1.30")
    box = b"\x00\x08_command\x00\x04Ping\x00\x04_ask\x00\x011" + keysBox(1_200_000)
    with mesh.meter.sampling() as sampler:
        [sent] = H.blast(
            [peer.sock],
            lambda off: box[off : off + 65536],
            limit=len(box),
            seconds=15,
        )
        H.reset(peer.sock)
        after = settle(mesh.meter, baseline, rss=20 * MiB)
    probes = mesh.probes.window(start, time.monotonic())
    report(
        1,
        f"{len(box) / MiB:.1f} MB of keys in one box after auth",
        baseline=baseline,
        peak=sampler.peak,
        after=after,
        taken=f"{sent.sent / MiB:.1f} MiB",
        closedByRegion=sent.closed,
        probes=probes,
    )
    assert sampler.peak.rss - baseline.rss <= 40 * MiB
    assert after.rss - baseline.rss <= 20 * MiB
    probes.check()


# Row 2.


def test_row02_pipelined_registers_before_authentication(mesh):
    baseline = mesh.ready()
    # A 1 MB uuid, in the chunks of the wire (under the 1 MiB box cap).
    chunks = [b"u" * 65535] * 15
    body = ampwire.encode_pairs(
        [(b"_command", b"Register"), (b"uuid", chunks[0])]
        + [(b"uuid.%d" % n, chunk) for n, chunk in enumerate(chunks[1:], 2)],
        end=False,
    )
    boxes: dict[int, bytes] = {}

    def box(n: int) -> bytes:
        if n not in boxes:
            boxes.clear()
            tag = b"%06d" % n
            boxes[n] = body + ampwire.encode_pairs([(b"_ask", tag)])
        return boxes[n]

    size = len(box(0))

    def payload(offset: int) -> bytes:
        n, at = divmod(offset, size)
        return box(n)[at : at + 65536]

    start = time.monotonic()
    sock = H.connectFrom("127.0.2.1", mesh.rpcPort)  # Never answers Identify.
    with mesh.meter.sampling() as sampler:
        [sent] = H.blast([sock], payload, limit=200 * size, seconds=10)
        H.reset(sock)
        after = settle(mesh.meter, baseline, rss=20 * MiB)
    probes = mesh.probes.window(start, time.monotonic())
    report(
        2,
        "200 pipelined Register of 1 MB before auth",
        baseline=baseline,
        peak=sampler.peak,
        after=after,
        taken=f"{sent.sent / MiB:.1f} MiB",
        closedByRegion=sent.closed,
        probes=probes,
    )
    assert sampler.peak.rss - baseline.rss <= 40 * MiB
    assert after.rss - baseline.rss <= 20 * MiB
    probes.check()


# Row 3.


def test_row03_connections_dropped_mid_box_are_freed_at_once(mesh):
    baseline = mesh.ready()
    partial = KEYS[: 7 * 128_000]  # 896 KB of a box of keys, never ended.
    start = time.monotonic()
    with mesh.meter.sampling() as sampler:
        for batch in range(4):
            socks = [
                H.connectFrom(f"127.0.3.{batch * 20 + n + 1}", mesh.rpcPort)
                for n in range(20)
            ]
            H.blast(
                socks,
                lambda off: partial[off : off + 65536],
                limit=len(partial),
                seconds=5,
            )
            for sock in socks:
                H.reset(sock)
        dropped = time.monotonic()
        after = settle(mesh.meter, baseline, rss=30 * MiB, seconds=5)
        freedIn = time.monotonic() - dropped
    probes = mesh.probes.window(start, time.monotonic())
    report(
        3,
        f"80 connections dropped after {len(partial)} bytes of a box of keys",
        baseline=baseline,
        peak=sampler.peak,
        after=after,
        settledIn=f"{freedIn:.2f} s",
        probes=probes,
    )
    assert after.rss - baseline.rss <= 30 * MiB
    assert after.fds <= baseline.fds + 2
    probes.check()


# Row 4.


def openIdle(port: int, addresses: list[str], each: int) -> list[socket.socket]:
    """Open ``each`` connections from every address, without blocking on
    any (a connection the server never accepts just stays pending)."""
    socks = []
    for address in addresses:
        for _ in range(each):
            sock = socket.socket()
            sock.bind((address, 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
    return socks


@pytest.mark.parametrize("which", ["mesh", "secureMesh"])
def test_row04_idle_connections_from_several_addresses(request, which):
    mesh = request.getfixturevalue(which)
    baseline = mesh.ready()
    start = time.monotonic()
    addresses = [f"127.0.4.{n + 1}" for n in range(6)]
    with mesh.meter.sampling() as sampler:
        socks = openIdle(mesh.rpcPort, addresses, 100)
        try:
            # Admitted connections are held until the handshake timeout
            # (5 s); those beyond the listen backlog come in as the kernel
            # retries them (after 1 s, then 3 s).
            pace(4.5)
        finally:
            for sock in socks:
                H.reset(sock)
        after = settle(mesh.meter, baseline, rss=20 * MiB)
    probes = mesh.probes.window(start, time.monotonic())
    held = sampler.peak.fds - baseline.fds
    report(
        4,
        f"600 idle connections from 6 addresses ({which})",
        baseline=baseline,
        peak=sampler.peak,
        heldAtMost=held,
        after=after,
        probes=probes,
    )
    assert held <= 200 + 10
    assert after.fds <= baseline.fds + 2
    probes.check()


# Row 5.


def discoveryAnswers(mesh: Any) -> bool:
    with urllib.request.urlopen(f"{mesh.maasURL}/rpc/", timeout=5) as answer:
        return answer.status == 200 and b"eventloops" in answer.read()


def test_row05_idle_http_connections_and_a_trickle(mesh):
    baseline = mesh.ready()
    start = time.monotonic()
    with mesh.meter.sampling() as sampler:
        socks = openIdle(mesh.httpPort, ["127.0.5.1"], 1100)
        try:
            pace(1.5)
            during = mesh.meter.now()
            # Others are still served (from 127.0.0.1), and so is discovery.
            assert discoveryAnswers(mesh)
        finally:
            for sock in socks:
                sock.close()
        # A header trickling in, a byte every half second.
        trickle = H.connectFrom("127.0.5.2", mesh.httpPort)
        began = time.monotonic()
        dropped = None
        for byte in b"GET /MAAS/rpc/ HTTP/1.1\r\nX-Slow: " + b"a" * 40:
            try:
                trickle.send(bytes([byte]))
            except OSError:
                dropped = time.monotonic() - began
                break
            if H.isClosedByPeer(trickle):
                dropped = time.monotonic() - began
                break
            pace(0.5)
            if time.monotonic() - began > 12:
                break
        trickle.close()
        after = settle(mesh.meter, baseline, rss=20 * MiB)
    probes = mesh.probes.window(start, time.monotonic())
    report(
        5,
        "1,100 idle HTTP connections from one address under ulimit -n 1024",
        baseline=baseline,
        peak=sampler.peak,
        heldAfter1_5s=during.fds - baseline.fds,
        trickleDroppedAfter=f"{dropped:.1f} s" if dropped else "never (12 s)",
        after=after,
        probes=probes,
    )
    assert during.fds - baseline.fds <= 64 + 16
    assert dropped is not None and dropped <= 3 + 3
    assert after.fds <= baseline.fds + 2
    probes.check()


# Row 6.


def test_row06_a_request_body_is_refused_before_it_is_read(mesh):
    baseline = mesh.ready()
    openBefore = set(mesh.meter.fdTargets())
    start = time.monotonic()
    with mesh.meter.sampling() as sampler:
        sock = H.connectFrom("127.0.6.1", mesh.httpPort)
        sock.sendall(
            b"POST /MAAS/rpc/ HTTP/1.1\r\nHost: region\r\n"
            b"Content-Length: 209715200\r\n\r\n"
        )
        sock.settimeout(5)
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = b"(nothing within 5 s)"
        [sent] = H.blast([sock], b"\0" * 65536, limit=200 * MiB, seconds=10)
        tempFiles = [
            t
            for t in set(mesh.meter.fdTargets()) - openBefore
            if not t.startswith(("socket:", "pipe:", "anon_inode:"))
        ]
        sock.close()
        huge = H.connectFrom("127.0.6.2", mesh.httpPort)
        huge.sendall(
            b"POST /MAAS/rpc/ HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"
        )
        huge.settimeout(5)
        try:
            hugeAnswer = huge.recv(4096)
        except TimeoutError:
            hugeAnswer = b"(nothing within 5 s)"
        huge.close()
        after = settle(mesh.meter, baseline, rss=10 * MiB)
    probes = mesh.probes.window(start, time.monotonic())
    report(
        6,
        "POST of 200 MB",
        answer=answer.split(b"\r\n", 1)[0],
        taken=f"{sent.sent / MiB:.1f} MiB",
        tempFiles=tempFiles,
        hugeLength=hugeAnswer.split(b"\r\n", 1)[0],
        baseline=baseline,
        peak=sampler.peak,
        after=after,
        probes=probes,
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert hugeAnswer.startswith(b"HTTP/1.1 413")
    assert sent.sent <= 16 * MiB
    assert not tempFiles
    assert sampler.peak.rss - baseline.rss <= 10 * MiB
    probes.check()


# Rows 7 to 10, and 13's discovery part: a cluster whose discovery answers
# as an attacker does.


class Victim:
    """A cluster (probing the region) whose ``MAAS_URL`` is a
    :class:`HostileDiscovery` that first serves the real region's document."""

    def __init__(self, mesh: Any, workdir: Path) -> None:
        self.mesh = mesh
        self.workdir = workdir
        self.generation = 0
        self.start()

    def start(self) -> None:
        self.generation += 1
        self.meshGeneration = self.mesh.generation
        self.processes = H.harness.Processes(self.workdir)
        self.discovery = H.HostileDiscovery(
            self.mesh.secret, {self.mesh.name: [["127.0.0.1", self.mesh.rpcPort]]}
        )
        try:
            self.uuid, self.process, self.probes = H.startProbeCluster(
                self.processes,
                self.discovery.maasURL,
                self.mesh.region.secretPath,
                MAAS_RPC_DISCOVERY_TIMEOUT="3",
                MAAS_RPC_POLL_DISCONNECTED="1",
                MAAS_RPC_POLL_PARTIAL="1",
                MAAS_RPC_POLL_CONNECTED="1",
            )
            self.meter = H.Meter(self.process.pid)
            started = time.monotonic()
            waitFor(
                lambda: self.probes.healthy(started),
                "the victim cluster to connect and answer a probe",
                check=H.harness.alive(self.process),
            )
        except BaseException:
            self.close()
            raise

    def ready(self) -> Any:
        self.mesh.ready()
        self.discovery.mode = "good"
        since = time.monotonic()
        if self.meshGeneration != self.mesh.generation or not self.process.alive:
            self.close()
            self.start()
        else:
            try:
                waitFor(lambda: self.probes.healthy(since), "", timeout=10)
            except AssertionError:
                self.close()
                self.start()
        # A poll or two with a good document, then the baseline.
        requests = len(self.discovery.requests)
        waitFor(lambda: len(self.discovery.requests) >= requests + 1, "a poll")
        return self.meter.now()

    def log(self) -> str:
        return self.process.log()

    def close(self) -> None:
        self.processes.stopAll()
        self.discovery.close()

    def describe(self) -> str:
        return self.processes.describe() + "\n" + self.mesh.describe()


@pytest.fixture(scope="module")
def victim(mesh: Any, tmp_path_factory: pytest.TempPathFactory):
    victim = Victim(mesh, tmp_path_factory.mktemp("victim"))
    try:
        yield victim
    finally:
        victim.close()


def test_row07_a_huge_discovery_body(victim):
    baseline = victim.ready()
    offset = len(victim.log())
    start = time.monotonic()
    with victim.meter.sampling() as sampler:
        victim.discovery.mode = "huge"
        waitFor(lambda: len(victim.discovery.since(start)) >= 3, "three fetches")
        endless = time.monotonic()
        victim.discovery.mode = "endless"
        waitFor(lambda: len(victim.discovery.since(endless)) >= 2, "two fetches")
        victim.discovery.mode = "good"
    fetches = [r for r in victim.discovery.since(start) if r["mode"] != "good"]
    waitFor(lambda: all("end" in r for r in fetches), "the fetches to end")
    probes = victim.probes.window(start, time.monotonic())
    lines = [
        line
        for line in victim.log()[offset:].splitlines()
        if "MAAS_RPC_DISCOVERY_MAX_BYTES" in line
    ]
    report(
        7,
        "a 100 MB discovery body",
        fetches=len(fetches),
        takenPerFetch=[f"{r['sent'] / MiB:.1f} MiB" for r in fetches],
        baseline=baseline,
        peak=sampler.peak,
        logLines=len(lines),
        probes=probes,
    )
    assert all(r["sent"] <= 16 * MiB for r in fetches)
    assert sampler.peak.rss - baseline.rss <= 20 * MiB
    assert 1 <= len(lines) <= 2
    probes.check()


def test_row08_discovery_listing_5000_eventloops(victim):
    mesh = victim.mesh
    ports = H.closedPorts(20)
    loops = {mesh.name: [["127.0.0.1", mesh.rpcPort]]}
    for n in range(4999):
        loops[f"fake:pid={n}"] = [["127.0.0.1", ports[n % len(ports)]]]
    victim.discovery.document = H.signedBody(mesh.secret, loops)
    baseline = victim.ready()
    offset = len(victim.log())
    start = time.monotonic()
    with victim.meter.sampling() as sampler:
        victim.discovery.mode = "document"
        waitFor(lambda: len(victim.discovery.since(start)) >= 4, "four polls")
        victim.discovery.mode = "good"
    probes = victim.probes.window(start, time.monotonic())
    added = victim.log()[offset:]
    warnings = [line for line in added.splitlines() if "warn" in line.lower()]
    report(
        8,
        "discovery listing 5,000 event-loops",
        polls=len(victim.discovery.since(start)),
        baseline=baseline,
        peak=sampler.peak,
        warningLines=len(warnings),
        logBytes=len(added),
        probes=probes,
    )
    assert sampler.peak.fds - baseline.fds <= 16 + 10
    assert len(warnings) <= 6
    assert len(added) <= 20_000
    probes.check()


def test_row09_discovery_listing_5000_addresses_for_one_eventloop(victim):
    mesh = victim.mesh
    ports = H.closedPorts(50)
    loops = {
        mesh.name: [["127.0.0.1", mesh.rpcPort]],
        "ghost:pid=1": [["127.0.0.1", ports[n % 50]] for n in range(5000)],
    }
    victim.discovery.document = H.signedBody(mesh.secret, loops)
    baseline = victim.ready()
    start = time.monotonic()
    with victim.meter.sampling() as sampler:
        victim.discovery.mode = "document"
        try:
            waitFor(lambda: len(victim.discovery.since(start)) >= 4, "", timeout=20)
        except AssertionError:
            pass
        victim.discovery.mode = "good"
    polls = [r["start"] for r in victim.discovery.since(start)]
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    probes = victim.probes.window(start, time.monotonic())
    report(
        9,
        "5,000 addresses for one event-loop",
        polls=len(polls),
        maxGap=f"{max(gaps):.2f} s" if gaps else "-",
        baseline=baseline,
        peak=sampler.peak,
        probes=probes,
    )
    assert len(polls) >= 4
    assert max(gaps) <= 10
    assert sampler.peak.fds - baseline.fds <= 16 + 10
    probes.check()


def test_row10_a_dripping_discovery_body(mesh, tmp_path):
    mesh.ready()
    processes = H.harness.Processes(tmp_path)
    discovery = H.HostileDiscovery(
        mesh.secret, {mesh.name: [["127.0.0.1", mesh.rpcPort]]}
    )
    try:
        discovery.mode = "drip"
        start = time.monotonic()
        _, cluster, probes = H.startProbeCluster(
            processes,
            discovery.maasURL,
            mesh.region.secretPath,
            MAAS_RPC_DISCOVERY_TIMEOUT="3",
            MAAS_RPC_POLL_DISCONNECTED="1",
            MAAS_RPC_POLL_PARTIAL="1",
            MAAS_RPC_POLL_CONNECTED="1",
        )
        waitFor(
            lambda: len([r for r in discovery.requests if "end" in r]) >= 2,
            "two dripping fetches to be abandoned",
            check=H.harness.alive(cluster),
        )
        held = [r["end"] - r["start"] for r in discovery.requests if "end" in r]
        complaints = [
            line for line in cluster.log().splitlines() if "no complete answer" in line
        ]
        # Discovery answers again: the cluster connects.
        discovery.mode = "good"
        back = time.monotonic()
        waitFor(
            lambda: probes.healthy(back),
            "the cluster to connect once discovery answers",
            timeout=20,
            check=H.harness.alive(cluster),
        )
        connectedIn = time.monotonic() - back
        # Dripping again; SIGTERM mid-fetch.
        discovery.mode = "drip"
        dripping = time.monotonic()
        waitFor(lambda: discovery.since(dripping), "a dripping fetch", timeout=BOUND)
        stopping = time.monotonic()
        cluster.popen.send_signal(signal.SIGTERM)
        try:
            cluster.popen.wait(15)
        except subprocess.TimeoutExpired:
            pass
        stoppedIn = time.monotonic() - stopping
        report(
            10,
            "a discovery body dripping 1 byte/s",
            fetchesHeld=[f"{s:.1f} s" for s in held],
            complaints=len(complaints),
            connectedAfterDiscoveryBack=f"{connectedIn:.1f} s",
            sigtermExitIn=f"{stoppedIn:.2f} s",
            since=f"{time.monotonic() - start:.1f} s",
        )
        assert all(s <= 3 + 2 for s in held)
        assert len(complaints) == 1
        assert stoppedIn <= 5
        assert cluster.popen.returncode is not None
    finally:
        processes.stopAll()
        discovery.close()


# Row 11.


def networks(count: int) -> bytes:
    """An ``AmpList`` of ``count`` tiny entries (37 bytes each)."""
    entry = ampwire.encode_box({b"interface": b"e", b"ip": b"", b"subnet_mask": b""})
    return entry * count


def chunked(key: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    parts = [value[n : n + 65535] for n in range(0, len(value), 65535)] or [b""]
    return [(key, parts[0])] + [
        (b"%s.%d" % (key, n), part) for n, part in enumerate(parts[1:], 2)
    ]


def test_row11_registers_with_huge_networks_before_authentication(mesh):
    mesh.ready()
    value = networks(27_777)
    assert len(value) < MiB - 1000  # Under the box cap before authentication.
    boxes = b"".join(
        ampwire.encode_pairs(
            [(b"_command", b"Register"), (b"_ask", b"%d" % n), (b"uuid", b"x")]
            + chunked(b"networks", value)
        )
        for n in range(10)
    )
    start = time.monotonic()
    cpu = mesh.meter.cpu()
    sock = H.connectFrom("127.0.11.1", mesh.rpcPort)
    [sent] = H.blast(
        [sock], lambda off: boxes[off : off + 65536], limit=len(boxes), seconds=10
    )
    # Keep watching for a while: the cost, if any, comes as the boxes parse.
    pace(max(0.0, 4 - (time.monotonic() - start)))
    H.reset(sock)
    used = mesh.meter.cpu() - cpu
    probes = mesh.probes.window(start, time.monotonic())
    report(
        11,
        f"10 Register with 27,777 networks ({len(value) / MiB:.2f} MB each)",
        taken=f"{sent.sent / MiB:.1f} MiB",
        closedByRegion=sent.closed,
        regionCPU=f"{used:.2f} s",
        probes=probes,
    )
    # Parsing all ten costs seconds of CPU; refusing them before parsing,
    # next to nothing (the probes themselves cost some).
    assert used <= 1.5
    probes.check()


# Row 12.


def test_row12_a_compressed_list_of_millions_of_items(mesh):
    baseline = mesh.ready()
    bomb = zlib.compress(b"\x00\x00" * 2_400_000, 9)
    start = time.monotonic()
    peer = H.rawCluster(mesh.rpcPort, mesh.secret, source="127.0.12.1")
    with mesh.meter.sampling() as sampler:
        try:
            peer.sock.settimeout(10)
            answer = peer.call(b"Ingest", items=bomb)
            outcome = f"answered {answer}"
        except ampwire.RemoteError as error:
            outcome = f"refused: {error}"
        except (TimeoutError, OSError, ampwire.PeerClosed) as error:
            outcome = f"no answer: {error!r}"
        finally:
            peer.close()
        after = settle(mesh.meter, baseline, rss=20 * MiB)
    probes = mesh.probes.window(start, time.monotonic())
    report(
        12,
        f"a {len(bomb)}-byte CompressedAmpList of 2.4 M items",
        outcome=outcome[:200],
        baseline=baseline,
        peak=sampler.peak,
        after=after,
        probes=probes,
    )
    assert outcome.startswith("refused")
    assert sampler.peak.rss - baseline.rss <= 40 * MiB
    probes.check()


# Row 13.


def checkLog(text: str) -> tuple[int, list[str]]:
    """The longest line, and the problems found, in log text."""
    problems = []
    lines = text.splitlines()
    longest = max((len(line) for line in lines), default=0)
    if longest > 2000:
        problems.append(f"a line of {longest} characters")
    if "\x1b" in text:
        problems.append("a raw ESC character")
    if any(line.startswith("FORGED") for line in lines):
        problems.append("a forged line")
    return longest, problems


def test_row13_peer_text_in_region_logs(mesh):
    mesh.ready()
    offset = len(mesh.log())
    evil = "\x1b[2J\nFORGED-IDENT " + "i" * 500_000
    peer = ampwire.Peer(
        H.connectFrom("127.0.13.1", mesh.rpcPort),
        {b"Identify": lambda box: dict(chunked(b"ident", evil.encode()))},
        timeout=10,
    )
    try:
        try:
            peer.post(b"Authenticate", message=os.urandom(16))  # A MAAS cluster's.
            peer.serve_until(
                lambda: any(b[b"_command"] == b"Identify" for b in peer.received)
            )
            peer.send(
                {
                    b"_command": b"Evil\n\x1b[2JFORGED-CMD",
                    b"_ask": b"\x1b[2J\nFORGED-ASK",
                }
            )
            peer.send({b"_command": b"Identify\nFORGED-CMD2", b"_ask": b"1"})
        except (ampwire.PeerClosed, OSError):
            pass
        # What the region logs about it comes within the handshake timeout.
        waitFor(
            lambda: H.isClosedByPeer(peer.sock), "the region to drop it", timeout=10
        )
    finally:
        peer.close()
    longest, problems = checkLog(mesh.logSince(offset))
    report(13, "500 KB ident and control characters (region)", longestLine=longest)
    assert not problems, problems


def test_row13_peer_text_in_cluster_logs(mesh, tmp_path):
    mesh.ready()
    [port] = H.closedPorts(1)
    loops = {
        mesh.name: [["127.0.0.1", mesh.rpcPort]],
        "\x1b[2J\nFORGED " + "n" * 200_000: [["127.0.0.1", port]],
    }
    processes = H.harness.Processes(tmp_path)
    discovery = H.HostileDiscovery(mesh.secret, None)
    try:
        discovery.document = H.signedBody(mesh.secret, loops)
        discovery.mode = "document"
        _, cluster, probes = H.startProbeCluster(
            processes,
            discovery.maasURL,
            mesh.region.secretPath,
            MAAS_RPC_POLL_PARTIAL="1",
        )
        start = time.monotonic()
        waitFor(
            lambda: len(discovery.since(start)) >= 3,
            "three polls",
            check=H.harness.alive(cluster),
        )
        text = cluster.log()
    finally:
        processes.stopAll()
        discovery.close()
    longest, problems = checkLog(text)
    report(13, "a 200,000-character event-loop name (cluster)", longestLine=longest)
    assert "Could not connect" in text
    assert not problems, problems


# Row 14.


def test_row14_a_reflected_challenge(mesh):
    mesh.ready()
    offset = len(mesh.log())
    ident = "attacker"
    peer = ampwire.Peer(
        H.connectFrom("127.0.14.1", mesh.rpcPort),
        {b"Identify": lambda box: {b"ident": ident}},
        timeout=10,
    )
    try:
        peer.post(b"Authenticate", message=os.urandom(16))  # A MAAS cluster's.
        peer.serve_until(
            lambda: any(b[b"_command"] == b"Authenticate" for b in peer.received)
        )
        challenge = peer.received[-1][b"message"]
        try:
            answer = peer.call(b"Authenticate", message=challenge)
            code = b"(answered: " + repr(answer).encode() + b")"
        except ampwire.RemoteError as error:
            code = error.code
        except ampwire.PeerClosed:
            code = b"(closed)"
    finally:
        peer.close()
    waitFor(lambda: "127.0.14.1" in mesh.logSince(offset), "the region to log it")
    text = mesh.logSince(offset)
    about = [line for line in text.splitlines() if "127.0.14.1" in line]
    report(14, "a reflected challenge", answered=code, lines=about)
    assert code not in (b"UNKNOWN", b"UNHANDLED") and not code.startswith(b"(")
    assert "Traceback" not in text
    assert not [line for line in about if "critical" in line.lower()]
    assert len([line for line in about if "reflection" in line.lower()]) == 1


# Row 15.


def runCluster(secretFile: Path, dataDir: Path) -> subprocess.CompletedProcess:
    env = H.harness.childEnv(
        MAAS_URL="http://127.0.0.1:1/MAAS",
        MAAS_RPC_DATA_DIR=str(dataDir),
        MAAS_RPC_SECRET_FILE=str(secretFile),
    )
    return subprocess.run(
        [sys.executable, "-m", "provisioningserver.cli", "cluster"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", ["0644", "0666", "directory", "/dev/zero"])
def test_row15_an_unusable_secret_stops_a_cluster_with_one_line(tmp_path, case):
    secret = tmp_path / "secret"
    if case == "directory":
        secret.mkdir()
    elif case == "/dev/zero":
        secret = Path("/dev/zero")
    else:
        get_or_create_shared_secret(secret)
        secret.chmod(int(case, 8))
    result = runCluster(secret, tmp_path / "data")
    output = (result.stdout + result.stderr).strip()
    report(15, f"a cluster with a secret that is {case}", said=output)
    assert result.returncode != 0
    assert "Traceback" not in output and "MemoryError" not in output
    assert len(output.splitlines()) == 1
    if case in ("0644", "0666"):
        assert f"chmod 600 {secret}" in output


def test_row15_a_region_creates_its_data_directory_private(tmp_path):
    data = tmp_path / "new" / "region"
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    reserved.close()
    env = H.harness.childEnv(
        MAAS_RPC_DATA_DIR=str(data),
        MAAS_RPC_HTTP_PORT=str(port),
        MAAS_RPC_PORTS="0",
        MAAS_RPC_BIND="127.0.0.1",
    )
    processes = H.harness.Processes(tmp_path)
    try:
        loop = processes.start(
            "eventloop", [sys.executable, "-m", "maasserver.cli", "eventloop"], env
        )
        waitFor(
            lambda: (data / "secret").exists(),
            "the event-loop to create its secret",
            check=H.harness.alive(loop),
        )
        mode = stat.S_IMODE(data.stat().st_mode)
        secretMode = stat.S_IMODE((data / "secret").stat().st_mode)
    finally:
        processes.stopAll()
    # The region refuses a secret others may read, in one line.
    (data / "secret").chmod(0o644)
    insecure = subprocess.run(
        [sys.executable, "-m", "maasserver.cli", "eventloop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (insecure.stdout + insecure.stderr).strip()
    report(
        15,
        "a region's new data directory",
        mode=f"{mode:04o}",
        secret=f"{secretMode:04o}",
        insecureSecret=said,
    )
    assert mode == 0o700
    assert secretMode == 0o600
    assert insecure.returncode != 0
    assert len(said.splitlines()) == 1 and "chmod 600" in said


# Row 16.


def test_row16_tls_init_over_open_keys_and_a_planted_symlink(tmp_path):
    out = tmp_path / "pki"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("ca-key", "cluster-key"):
        (out / f"{name}.pem").write_text("old\n")
        (out / f"{name}.pem").chmod(0o644)
    (out / "region-key.pem").symlink_to(victim)
    result = subprocess.run(
        [sys.executable, "-m", "maasserver.cli", "tls-init", str(out)],
        env=H.harness.childEnv(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    modes = {
        path.name: f"{stat.S_IMODE(path.lstat().st_mode):04o}"
        for path in sorted(out.iterdir())
    }
    report(16, "tls-init over 0644 keys and a symlink", modes=modes)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    assert not (out / "region-key.pem").is_symlink()
    for name in ("ca-key", "region-key", "cluster-key"):
        assert modes[f"{name}.pem"] == "0600"
    assert not os.path.exists(out / ".region-key.pem")
