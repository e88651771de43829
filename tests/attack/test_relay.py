"""The cross-role relay of issue 12, against real processes.

A real region event-loop (``python -m maasserver.cli eventloop``) and a real
victim cluster (``python -m provisioningserver.cli cluster``) share a
secret; the attacker (``attacker/``, its own process, stock Twisted AMP and
TLS, no secret) sits between them. The harness puts it on the path: the
victim's discovery document (signed by the harness, as an on-path attacker
would have it served) names the attacker's address for the region's
event-loop. For the victim's connection the attacker opens its own
connection to the region, posing as a cluster, and relays the region's
``Identify`` and challenge to the victim and the victim's challenge to the
region, and the answers back (``attacker/relay.py``); it tries commands of
its own on both sides.

Each case shows that neither side accepts the attacker (the region never
registers it under the victim's UUID, the victim never enters rotation with
it), that none of the attacker's commands reached a responder (the
``attackext`` responders log every run), and that both sides log a clear
line. Then the victim is pointed at the region itself, and connects and
answers: the secret, the processes and the harness were sound, and only the
attacker was refused.

The cases: the relay over the secure channel (both sides by default); the
attacker claiming to be a legacy (MAAS) peer to both, refused by default;
the same accepted as legacy by the side lied to when it allows legacy peers
(``MAAS_RPC_ALLOW_LEGACY_PEERS=1``), which then still refuses the relayed
maas-rpc challenge; and the downgrade, with legacy peers allowed on both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

ALLOW = {"MAAS_RPC_ALLOW_LEGACY_PEERS": "1"}


@dataclass(frozen=True)
class Case:
    """One relay: how the attacker poses to each side, which side allows
    legacy peers, and the lines each side must log (``{attacker}`` is the
    attacker's address as that side sees it, ``{uuid}`` the victim's UUID,
    ``{eventloop}`` the region event-loop's name)."""

    toCluster: str
    toRegion: str
    regionSettings: dict[str, str] = field(default_factory=dict)
    clusterSettings: dict[str, str] = field(default_factory=dict)
    regionLines: tuple[str, ...] = ()
    clusterLines: tuple[str, ...] = ()
    #: Whether the attacker got to relay both challenges and both answers.
    relayed: bool = True


LEGACY_MODE = (
    "Peer at {attacker} does not offer the secure channel; using the legacy "
    "MAAS handshake (MAAS_RPC_ALLOW_LEGACY_PEERS is set)"
)
REFUSED_CHALLENGE = (
    "Refused to answer a challenge from {attacker}: refusing to answer, over a "
    "legacy connection, a challenge issued by a maas-rpc process"
)

CASES = {
    "secure-relay": Case(
        "secure",
        "secure",
        regionLines=(
            "Authentication of cluster at {attacker} failed: cluster {uuid} gave "
            "a wrong digest: it does not know the shared secret; dropping the "
            "connection.",
        ),
        clusterLines=(
            "Handshake with region at {attacker} failed: region event-loop "
            "{eventloop} gave a wrong digest: it does not know the shared "
            "secret; dropping the connection.",
        ),
    ),
    "legacy-refused-by-default": Case(
        "legacy",
        "legacy",
        regionLines=(
            "Refused peer at {attacker}: it does not offer the secure channel (a "
            "MAAS peer, or someone pretending to be one) and legacy peers are not "
            "allowed (MAAS_RPC_ALLOW_LEGACY_PEERS).",
        ),
        clusterLines=(
            "Handshake with region at {attacker} failed: the region event-loop "
            "does not offer the secure channel (a MAAS region, or someone "
            "pretending to be one); set MAAS_RPC_ALLOW_LEGACY_PEERS=1 to allow "
            "legacy peers; dropping the connection.",
        ),
        relayed=False,
    ),
    "legacy-to-region-allowed-there": Case(
        "secure",
        "legacy",
        regionSettings=ALLOW,
        regionLines=(LEGACY_MODE, REFUSED_CHALLENGE),
        clusterLines=(
            "Handshake with region at {attacker} failed: refusing to answer, over "
            "a legacy connection, a challenge issued by a maas-rpc process",
        ),
    ),
    "legacy-to-cluster-allowed-there": Case(
        "legacy",
        "secure",
        clusterSettings=ALLOW,
        regionLines=(
            "Authentication of cluster at {attacker} failed: refusing to answer, "
            "over a legacy connection, a challenge issued by a maas-rpc process",
        ),
        clusterLines=(LEGACY_MODE, REFUSED_CHALLENGE),
    ),
    "downgrade-legacy-allowed-on-both": Case(
        "legacy",
        "legacy",
        regionSettings=ALLOW,
        clusterSettings=ALLOW,
        regionLines=(LEGACY_MODE, REFUSED_CHALLENGE),
        clusterLines=(LEGACY_MODE, REFUSED_CHALLENGE),
    ),
}

#: The attacker's own commands, by the side it sent them to.
OWN_COMMANDS = {"cluster": ("EatCheez",), "region": ("Tally", "Ping", "Register")}


@pytest.mark.parametrize("name", list(CASES))
def test_relay_is_refused_by_both_sides(name: str, harness: Any, processes: Any):
    case = CASES[name]
    settings = {"MAAS_RPC_HANDSHAKE_TIMEOUT": "10"}
    with harness.Bench(processes, **settings, **case.regionSettings) as bench:
        eventloop, discovery = bench.eventloop, bench.discovery
        # The victim polls a discovery document that advertises nothing yet.
        victimUUID, victim, victimDir = bench.victim(**settings, **case.clusterSettings)
        attacker = harness.Attacker(
            processes,
            [
                "relay",
                "--region",
                f"127.0.0.1:{bench.port}",
                "--to-cluster",
                case.toCluster,
                "--to-region",
                case.toRegion,
            ],
            secrets=harness.secretsOf(bench.region, victimDir),
        )
        attackerPort = attacker.port()
        started = time.monotonic()
        # On the path: the victim is told the event-loop is at the attacker's.
        discovery.point(bench.name, "127.0.0.1", attackerPort)
        attacker.waitEvent("pair-done", number=1)
        attacked = time.monotonic() - started
        regionLog, victimLog = eventloop.log(), victim.log()
        local = attacker.waitEvent("region-connected", number=1)["local"]

        # The attacker never had the secret, and never tried to read it.
        assert attacker.openedSecrets() == []

        # What the attacker managed to relay (else this tested nothing).
        if case.relayed:
            relayed = {
                (e["source"], e["command"])
                for e in attacker.events("relay-response", number=1)
            }
            assert ("cluster", "Authenticate") in relayed, relayed
            assert ("region", "Authenticate") in relayed, relayed
        tls = {e["side"]: e for e in attacker.events("tls", number=1)}
        if len(tls) == 2:
            # Two TLS connections, two different exported keys: what one
            # side proves over its connection cannot verify on the other.
            assert tls["cluster"]["binding"] != tls["region"]["binding"]

        # Neither side accepted it: no registration, no rotation.
        assert "registered" not in regionLog, regionLog
        assert "Connected to region event-loop" not in victimLog, victimLog

        # None of its commands reached a responder.
        for side, commands in OWN_COMMANDS.items():
            for command in commands:
                for outcome in attacker.outcomes(command, side):
                    assert "answer" not in outcome, outcome
        assert harness.ran(victim, "EatCheez") == []
        assert harness.ran(eventloop, "Tally") == []
        assert harness.ran(eventloop, "Ping") == []

        # Both sides said why, naming the attacker's address.
        found = []
        for process, log, expected, address in (
            (eventloop, regionLog, case.regionLines, f"127.0.0.1:{local}"),
            (victim, victimLog, case.clusterLines, f"127.0.0.1:{attackerPort}"),
        ):
            for template in expected:
                text = template.format(
                    attacker=address, uuid=victimUUID, eventloop=bench.name
                )
                matching = [line for line in log.splitlines() if text in line]
                assert matching, f"{process!r} did not log {text!r}:\n{log}"
                found.extend(matching)
        if not case.regionSettings:
            assert "using the legacy MAAS handshake" not in regionLog
        if not case.clusterSettings:
            assert "using the legacy MAAS handshake" not in victimLog

        # The control: pointed at the region itself, the victim connects (over
        # the secure channel, whatever legacy setting) and answers calls.
        discovery.point(bench.name, "127.0.0.1", bench.port)
        bench.waitRegistered(victimUUID)
        result, took = bench.call(victimUUID, name="Brie", origin="legit")
        assert result.get("answer", {}).get("rating") is not None, result
        assert len(harness.ran(victim, "EatCheez")) == 1
        print(
            f"\n{name}: attack over in {attacked:.3f} s; lines logged:\n  "
            + "\n  ".join(line[line.find(" ") + 1 :] for line in found)
            + f"\n  control call answered in {took:.3f} s"
        )
