"""Hostileext's cluster side: :class:`ProbeCluster`. It loads no region
code."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from hostileext import Probe
from provisioningserver.rpc.clusterservice import ClusterClient

__all__ = ["ProbeCluster"]


class ProbeCluster(ClusterClient):
    """A cluster connection that probes the region while it is connected
    (see :mod:`hostileext`)."""

    _probing: LoopingCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.ready.get().addCallbacks(self._startProbing, lambda _: None)

    def _startProbing(self, _: Any) -> None:
        if not self.isConnected():
            return
        interval = float(os.environ.get("HOSTILEEXT_PROBE_INTERVAL") or 0.2)
        self._probing = LoopingCall(self._probe)
        self._probing.clock = self.service.clock
        self._probing.start(interval)

    def _probe(self) -> None:
        path = os.environ.get("HOSTILEEXT_PROBE_FILE")
        if not path:
            return
        start = time.monotonic()

        def record(result: Any) -> None:
            ok = not isinstance(result, Failure)
            line = {
                "start": start,
                "seconds": time.monotonic() - start,
                "ok": ok,
                "eventloop": self.eventloop,
            }
            if not ok:
                line["error"] = result.getErrorMessage()[:200]
            with open(path, "a") as stream:
                stream.write(json.dumps(line) + "\n")

        d = self.callRemote(Probe).addTimeout(5, self.service.clock)
        d.addBoth(record)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._probing is not None and self._probing.running:
            self._probing.stop()
        self._probing = None
        super().connectionLost(reason)
