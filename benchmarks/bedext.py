"""The region side of the test bed's call stream: :class:`BedRegion`.

Region hosts of the bed run ``maas-rpc region`` with
``MAAS_RPC_REGION_PROTOCOL=benchmarks.bedext:BedRegion``, the documented way
to add responders. Clusters call :class:`BedNote` with a token of their own
for each call; the event-loop that answers appends the token to
``notes-<pid>.log`` in its data directory (one ``write`` per call, so a token
answered just before the process is killed is on disk), and answers its own
name. The bed reads every host's notes afterwards: a token found twice was
answered twice.
"""

from __future__ import annotations

import os

from benchmarks.bednote import BedNote
from maasserver.rpc.regionservice import RegionServer

__all__ = ["BedNote", "BedRegion", "notesPath"]


def notesPath() -> str:
    """Where this process notes the tokens it answered."""
    directory = os.environ.get("MAAS_RPC_DATA_DIR", ".")
    return os.path.join(directory, f"notes-{os.getpid()}.log")


_fd: int | None = None


def _note(token: str) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(notesPath(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, token.encode("ascii", "replace") + b"\n")


class BedRegion(RegionServer):
    """A region connection that also answers :class:`BedNote`."""

    @BedNote.responder
    def note(self, token: str) -> dict[str, str]:
        """Note ``token``; answer this event-loop's name.

        :param token: the caller's token for this call.
        :return: ``{"eventloop": <name>}``.
        """
        _note(token)
        return {"eventloop": self.service.eventloop}
