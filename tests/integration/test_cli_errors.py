"""An event-loop that cannot get an RPC port stops with one clear error,
and no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def test_exhausted_port_range_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "MAAS_RPC_DATA_DIR": str(tmp_path),
            "MAAS_RPC_PORTS": str(port),
            "MAAS_RPC_BIND": "127.0.0.1",
            "MAAS_RPC_HTTP_PORT": "0",
        }
        done = subprocess.run(
            [sys.executable, "-m", "maasserver.cli", "eventloop"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    print(done.stderr)
    assert done.returncode == 1
    errors = [
        line
        for line in done.stderr.splitlines()
        if "maas-rpc eventloop: error:" in line
    ]
    assert len(errors) == 1
    assert f"{port}" in errors[0] and "no free RPC port" in errors[0]
    assert "Traceback" not in done.stderr
