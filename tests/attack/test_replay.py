"""Replaying a recorded connection, against real processes.

A real cluster talks to a real region event-loop through the proxy, which
records every byte of that connection: the secure channel's negotiation,
TLS, the handshake, and calls both ways (``EatCheez`` to the cluster,
``AskRegion`` whose responder sends ``Tally`` to the region). The proxy then
cuts it. The attacker, given only the recording (no secret), plays it again
on new connections:

* the cluster's side, to the region: the ``SecureChannel`` offer is
  accepted (it carries nothing secret), but the region's TLS answer is
  fresh, so the replayed TLS handshake cannot complete;
* the region's side, to another victim cluster (pointed at the attacker):
  the victim's TLS handshake is fresh, and the recorded server's cannot
  complete it.

Nothing is registered, nothing of the recording runs again, and each side
logs the failed TLS with the attacker's address.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def chunksFor(recording: list[tuple[str, bytes]], to: str) -> list[list[Any]]:
    """The chunks written to side ``to``, each with how many bytes the other
    side had sent before it: what the replayer waits for to keep turns."""
    chunks, other = [], 0
    for side, data in recording:
        if side == to:
            chunks.append([other, data.hex()])
        else:
            other += len(data)
    return chunks


def commonPrefix(a: bytes, b: bytes) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_a_replayed_connection_is_refused_both_ways(
    harness: Any, processes: Any, reactor_thread: Any, tmp_path: Path
):
    tamper = harness.tamper
    with harness.Bench(processes) as bench:
        proxy = tamper.TamperProxy(("127.0.0.1", bench.port))
        other = harness.SignedDiscovery(bench.region.secret)
        try:
            bench.discovery.point(bench.name, "127.0.0.1", proxy.start())
            victimUUID, victim, victimDir = bench.victim()
            bench.waitRegistered(victimUUID)
            # A whole successful connection: calls both ways, then cut.
            for origin in ("recorded-1", "recorded-2"):
                result, _ = bench.call(victimUUID, name="Brie", origin=origin)
                assert "answer" in result, result
            result, _ = bench.call(victimUUID, "AskRegion", origin="recorded-3")
            assert "answer" in result, result
            [pair] = proxy.openPairNumbers()
            proxy.cut()
            bench.waitRegistered(victimUUID, 2)
            recording = proxy.recorded[pair]
            runs = {
                "EatCheez": len(harness.ran(victim, "EatCheez")),
                "Tally": len(harness.ran(bench.eventloop, "Tally")),
            }
            assert runs == {"EatCheez": 2, "Tally": 1}

            # The cluster's side, replayed to the region.
            toRegion = tmp_path / "to-region.json"
            toRegion.write_text(json.dumps(chunksFor(recording, tamper.UPSTREAM)))
            attacker = harness.Attacker(
                processes,
                [
                    "replay",
                    "--recording",
                    str(toRegion),
                    "--region",
                    f"127.0.0.1:{bench.port}",
                ],
                secrets=harness.secretsOf(bench.region, victimDir),
            )
            attacker.waitEvent("finished")
            local = attacker.waitEvent("replay-connected")["local"]
            end = attacker.waitEvent("replay-end")
            recordedAnswer = b"".join(
                data for to, data in recording if to == tamper.DOWNSTREAM
            )
            received = bytes.fromhex(end["head"])
            same = commonPrefix(recordedAnswer, received)
            # The region answered the replayed offer as it had (the
            # SecureChannel answer is plaintext), then TLS differed.
            assert 0 < same < len(received), (same, len(received))
            regionSaid = harness.lines(bench.eventloop, f"TLS with 127.0.0.1:{local}")
            assert regionSaid and " failed: " in regionSaid[0], bench.eventloop.log()
            assert len(bench.registrations(victimUUID)) == 2
            assert f":{local} registered" not in bench.eventloop.log()

            # The region's side, replayed to another victim.
            toCluster = tmp_path / "to-cluster.json"
            toCluster.write_text(json.dumps(chunksFor(recording, tamper.DOWNSTREAM)))
            other.point(bench.name, "127.0.0.1", 1)
            secondUUID, second, secondDir = bench.victim(discovery=other)
            replayer = harness.Attacker(
                processes,
                ["replay", "--recording", str(toCluster)],
                secrets=harness.secretsOf(bench.region, victimDir, secondDir),
            )
            other.point(bench.name, "127.0.0.1", replayer.port())
            replayed = replayer.waitEvent("replay-end")
            harness.waitFor(
                lambda: harness.lines(second, "TLS with 127.0.0.1:"),
                "the second victim to log its failed TLS",
                check=harness.alive(second),
            )
            clusterSaid = harness.lines(second, f"TLS with 127.0.0.1:{replayer.port()}")
            assert clusterSaid and " failed: " in clusterSaid[0], second.log()
            assert "Connected to region event-loop" not in second.log()

            # Nothing of the recording ran again, anywhere.
            assert harness.ran(second, "EatCheez") == []
            assert harness.ran(second, "AskRegion") == []
            assert len(harness.ran(victim, "EatCheez")) == 2
            assert len(harness.ran(bench.eventloop, "Tally")) == 1
            assert attacker.openedSecrets() == replayer.openedSecrets() == []
            print(
                f"\nrecorded {len(recording)} chunks; to the region: "
                f"{end['steps']}/{end['of']} chunks played, its answer matched the "
                f"recording for {same} bytes (the plaintext SecureChannel answer) "
                f"then differed; it said: {regionSaid[0].split(': ', 1)[1]}\n"
                f"to a victim: {replayed['steps']}/{replayed['of']} chunks played; "
                f"it said: {clusterSaid[0].split(': ', 1)[1]}"
            )
        finally:
            other.close()
            proxy.stop()
