"""sd_notify, written by hand, and maas-rpc region's notification pipe."""

from __future__ import annotations

import os
import socket

from provisioningserver import systemd


def test_notify_sends_a_datagram_to_notify_socket(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        name = f"maas-rpc-test-{os.getpid()}-{os.urandom(4).hex()}"
        server.bind("\0" + name)
        assert systemd.notify(
            "READY=1", "STATUS=up", environ={"NOTIFY_SOCKET": "@" + name}
        )
        assert server.recv(1024) == b"READY=1\nSTATUS=up"


def test_notify_writes_lines_to_the_supervisors_pipe():
    read, write = os.pipe()
    try:
        assert systemd.notify(
            "ERROR=no\nport", environ={"MAAS_RPC_NOTIFY_FD": str(write)}
        )
        assert os.read(read, 100) == b"ERROR=no port\n"
    finally:
        os.close(read)
        os.close(write)


def test_notify_without_a_supervisor_does_nothing():
    assert not systemd.notify("READY=1", environ={})
