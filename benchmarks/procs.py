"""Starting, talking to and stopping the processes a benchmark run needs.

Every process is started through a :class:`Processes` registry and stopped by
it (``close``), whatever happens: workers are asked to stop by closing their
standard input, then terminated, then killed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "Processes",
    "Worker",
    "childEnv",
    "discover",
    "freePort",
    "processCpu",
]

#: The source tree holding ``benchmarks``, ``provisioningserver`` and
#: ``maasserver``.
ROOT = Path(__file__).resolve().parent.parent


def childEnv(**settings: str) -> dict[str, str]:
    """This process's environment without ``MAAS_*`` settings, finding this
    source tree first, with ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MAAS_RPC_", "MAAS_URL"))
    }
    path = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def freePort() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def discover(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET a region's discovery document; ``None`` when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def processCpu(pid: int) -> float:
    """CPU seconds process ``pid`` has used so far (user + system, all its
    threads), from ``/proc/<pid>/stat``.

    :raises OSError: when the process is gone.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The fields after the command name (which may hold spaces), from the
    # third on: utime and stime are the 14th and 15th.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class WorkerError(RuntimeError):
    """A worker failed a command, died, or did not answer in time."""


class Worker:
    """A :mod:`benchmarks.worker` process, driven by JSON lines.

    :param role: ``raw``, ``cluster`` or ``region`` (for
        :mod:`benchmarks.grpcbench`: ``sync`` or ``aio``).
    :param name: a label for messages and the log file.
    :param logDir: where its standard error goes (``<name>.log``).
    :param module: the module to run.
    """

    def __init__(
        self, role: str, name: str, logDir: Path, module: str = "benchmarks.worker"
    ) -> None:
        self._spawn([sys.executable, "-m", module, role], name, logDir, childEnv())

    def _spawn(
        self, argv: list[str], name: str, logDir: Path, env: dict[str, str]
    ) -> None:
        """Start ``argv``: JSON lines on its standard input and output, its
        standard error in ``<logDir>/<name>.log``."""
        self.name = name
        self.logPath = logDir / f"{name}.log"
        self._log = self.logPath.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._buffer = b""
        self._next = 0
        self.pid = self.popen.pid

    def send(self, cmd: str, **args: Any) -> int:
        """Send a command without waiting; :meth:`receive` its answer."""
        self._next += 1
        message = {"id": self._next, "cmd": cmd, **args}
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(message).encode() + b"\n")
        self.popen.stdin.flush()
        return self._next

    def receive(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the next answer.

        :raises WorkerError: when the command failed, the worker died, or no
            answer came within ``timeout`` seconds.
        """
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"{self.name}: no answer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise WorkerError(
                        f"{self.name} exited ({self.popen.poll()}); see {self.logPath}"
                    )
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise WorkerError(f"{self.name}: {answer.get('error')}")
        return answer

    def request(self, cmd: str, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        self.send(cmd, **args)
        return self.receive(timeout)

    def stop(self) -> None:
        """Close its standard input (it stops itself), then make sure."""
        if self.popen.poll() is None and self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    def wait(self, timeout: float = 15.0) -> None:
        _reap(self.popen, timeout)
        self._log.close()


def _reap(popen: subprocess.Popen[Any], timeout: float) -> None:
    try:
        popen.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        popen.terminate()
    try:
        popen.wait(5)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


class Processes:
    """Every process a run starts, so that all are stopped at the end."""

    def __init__(self, logDir: Path) -> None:
        self.logDir = logDir
        self.workers: list[Worker] = []
        self.others: list[tuple[subprocess.Popen[Any], Any]] = []
        self.pids: set[int] = set()

    def worker(self, role: str, name: str, module: str = "benchmarks.worker") -> Worker:
        """Start a worker and check that it answers."""
        worker = Worker(role, name, self.logDir, module)
        self.workers.append(worker)
        worker.request("ping", timeout=60)
        return worker

    def command(self, argv: list[str], env: dict[str, str], name: str) -> Any:
        """Start a command (its output goes to ``<name>.log``)."""
        log = (self.logDir / f"{name}.log").open("wb")
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.others.append((popen, log))
        return popen

    def adopt(self, pid: int) -> None:
        """Make sure ``pid`` (a grandchild, e.g. a region's event-loop) is
        gone at the end."""
        self.pids.add(pid)

    def stopWorkers(self, workers: list[Worker]) -> None:
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.wait()
            if worker in self.workers:
                self.workers.remove(worker)

    def close(self) -> None:
        """Stop everything that was started."""
        self.stopWorkers(list(self.workers))
        for popen, _ in self.others:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for popen, log in self.others:
            _reap(popen, 20)
            log.close()
        self.others.clear()
        for pid in self.pids:
            _killStray(pid)
        self.pids.clear()


def _killStray(pid: int) -> None:
    """Kill ``pid`` if it is still one of our event-loop processes (its
    parent should have stopped it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # Gone, as it should be.
    if b"maasserver.cli" not in cmdline:
        return  # The pid was reused by something else.
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
