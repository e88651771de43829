"""A spoofed discovery document, against a real cluster (issue 12: "a
spoofed discovery document, valid JSON, wrong MAC, is ignored").

A victim cluster is connected to the real region event-loop. Then its
discovery document is replaced by a spoofer's: valid JSON that names an
event-loop at the attacker's address instead of the real one, with a MAC
made under another key, or with none. The victim ignores it, says so once
naming the URL, never connects to the attacker, and keeps answering calls
on its connection. With
legacy peers allowed an unsigned document is accepted, as the design says
(a MAAS region does not sign); a wrong MAC never is.

It needs the discovery MAC (``provisioningserver.rpc.discovery``, the
hostile-io stream's); it is skipped where that is not there yet.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("provisioningserver.rpc.discovery") is None,
    reason="the discovery MAC (provisioningserver.rpc.discovery) is not here yet",
)

POLL = {
    "MAAS_RPC_POLL_DISCONNECTED": "0.3",
    "MAAS_RPC_POLL_PARTIAL": "0.3",
    "MAAS_RPC_POLL_CONNECTED": "0.3",
}


@pytest.mark.parametrize(
    "spoof, allowLegacy, ignored",
    [
        ("wrong-mac", False, True),
        ("unsigned", False, True),
        ("wrong-mac", True, True),
        ("unsigned", True, False),
    ],
    ids=[
        "wrong-mac",
        "unsigned",
        "wrong-mac-legacy-allowed",
        "unsigned-legacy-allowed",
    ],
)
def test_a_spoofed_discovery_document_is_ignored(
    spoof: str, allowLegacy: bool, ignored: bool, harness: Any, processes: Any
):
    settings = dict(POLL)
    if allowLegacy:
        settings["MAAS_RPC_ALLOW_LEGACY_PEERS"] = "1"
    with harness.Bench(processes) as bench:
        discovery = bench.discovery
        discovery.point(bench.name, "127.0.0.1", bench.port)
        victimUUID, victim, victimDir = bench.victim(**settings)
        bench.waitRegistered(victimUUID)
        # A listener that counts connections and turns every one away.
        attacker = harness.Attacker(
            processes,
            ["relay", "--region", f"127.0.0.1:{bench.port}", "--victims", "0"],
            secrets=harness.secretsOf(bench.region, victimDir),
        )
        port = attacker.port()
        before = len(victim.log().splitlines())
        polled = discovery.requests
        discovery.spoof = spoof
        # A new event-loop (and the real one gone): a victim that believed
        # it would connect to the attacker and drop the region.
        discovery.point("spoofed:pid=1", "127.0.0.1", port)
        if ignored:
            # Several polls of the spoofed document later...
            harness.waitFor(
                lambda: discovery.requests >= polled + 5,
                "the victim to poll the spoofed document five times",
                check=harness.alive(victim),
            )
            new = victim.log().splitlines()[before:]
            said = [line for line in new if "Ignoring the discovery document" in line]
            assert said and discovery.maasURL.split("/MAAS")[0] in said[0], new
            assert len(said) == 1, said  # Once, not once a poll.
            assert attacker.events("victim-turned-away") == []
            result, _ = bench.call(victimUUID, name="Brie", origin="legit")
            assert "answer" in result, result
            print(f"\n{spoof}: {said[0].split(': ', 1)[1]}")
        else:
            # Accepted: the victim goes where it was told (and the secure
            # channel is then what stands between it and the attacker).
            attacker.waitEvent("victim-turned-away")
