"""Exceptions of the RPC layer, including those that cross the wire.

A command lists in its ``errors`` the exceptions its responder may raise;
each travels under a wire code (usually the class name) and is raised again,
as the same class, in the caller. The classes live here so both sides import
one definition.
"""

from __future__ import annotations

from twisted.internet.defer import TimeoutError as _DeferTimeoutError

__all__ = [
    "ArgumentTooLarge",
    "AuthenticationFailed",
    "CallTimedOut",
    "CannotRegisterCluster",
    "NoConnectionsAvailable",
    "NoSuchCheese",
    "NoSuchCluster",
    "NotAuthenticated",
    "RegistrationFailed",
]


class NoConnectionsAvailable(Exception):
    """There is no connection to the peer a call was meant for.

    :param message: what went wrong.
    :param uuid: the cluster's UUID, when the call was for one cluster.
    :ivar uuid: the cluster's UUID, or ``None``.
    """

    def __init__(self, message: str = "", uuid: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.uuid = uuid


class NoSuchCluster(Exception):
    """The region knows no cluster with the given UUID.

    As in MAAS, the one argument is the message, so that the exception a
    caller rebuilds from the wire (``NoSuchCluster(description)``) says what
    the responder's said. Build one for a UUID with :meth:`from_uuid`.

    :param message: what went wrong.
    :param uuid: the UUID asked for, when known.
    :ivar uuid: the UUID asked for, or ``None`` (always ``None`` in a caller
        that received it from the wire: only the message travels).
    """

    def __init__(self, message: str = "", uuid: str | None = None) -> None:
        super().__init__(message)
        self.uuid = uuid

    @classmethod
    def from_uuid(cls, uuid: str) -> NoSuchCluster:
        """Make the error for a UUID no cluster has (MAAS's constructor).

        :param uuid: the UUID asked for.
        :return: the exception, saying that no cluster with that UUID was
            found.
        """
        return cls(f"No cluster with UUID {uuid} was found.", uuid=uuid)


class AuthenticationFailed(Exception):
    """The peer did not prove that it knows the shared secret."""


class NotAuthenticated(Exception):
    """The peer refused a command because this side has not completed the
    handshake (wire code ``NOT_AUTHENTICATED``)."""


class RegistrationFailed(Exception):
    """The region refused to register this cluster."""


class CannotRegisterCluster(Exception):
    """Sent by the region when it will not register a cluster.

    For example, the UUID in ``Register`` is not the one the cluster gave
    when it was identified. The one argument is the message (as in MAAS);
    :meth:`from_uuid` builds one that names the cluster.

    :param message: why the region refused.
    :param uuid: the cluster's UUID, when known.
    :ivar uuid: the cluster's UUID, or ``None`` (always ``None`` in a caller
        that received it from the wire: only the message travels).
    """

    def __init__(self, message: str = "", uuid: str | None = None) -> None:
        super().__init__(message)
        self.uuid = uuid

    @classmethod
    def from_uuid(cls, uuid: str, message: str) -> CannotRegisterCluster:
        """Make the refusal for a cluster (MAAS's constructor).

        :param uuid: the cluster's UUID.
        :param message: why it was refused.
        :return: the exception, naming the cluster on its first line and
            giving ``message`` on the next.
        """
        return cls(f"Cluster {uuid} was not registered:\n{message}", uuid=uuid)


class NoSuchCheese(Exception):
    """Sent by a cluster asked to rate a cheese it will not rate.

    Declared by :class:`provisioningserver.rpc.cluster.EatCheez`.
    """


class CallTimedOut(_DeferTimeoutError):
    """A call's deadline passed before the peer answered.

    The request was abandoned locally; a late answer is dropped. It is a
    :class:`twisted.internet.defer.TimeoutError`, so code catching that
    catches this too.
    """


class ArgumentTooLarge(ValueError):
    """An argument or answer value does not fit in an AMP value.

    Raised before anything is sent.

    :ivar command: the command's wire name.
    :ivar key: the argument's wire name.
    :ivar size: the value's size in bytes.
    :ivar limit: the largest size allowed.
    """

    def __init__(self, command: bytes, key: bytes, size: int, limit: int) -> None:
        self.command = command
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(
            f"argument {key.decode('ascii', 'replace')!r} of "
            f"{command.decode('ascii', 'replace')} is {size} bytes once "
            f"encoded; the limit is {limit} bytes"
        )
