"""Exceptions of the RPC layer, including those that cross the wire.

A command lists in its ``errors`` the exceptions its responder may raise;
each travels under a wire code (usually the class name) and is raised again,
as the same class, in the caller. The classes live here so both sides import
one definition.
"""

from __future__ import annotations

import re

from twisted.internet.defer import TimeoutError as _DeferTimeoutError
from twisted.protocols import amp as _amp

__all__ = [
    "ArgumentTooLarge",
    "AuthenticationFailed",
    "ChallengeRefused",
    "LegacyPeerRefused",
    "RemoteResponderFailed",
    "ShuttingDown",
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


class NotAuthenticated(_amp.AmpError):
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


class ArgumentTooLarge(_amp.TooLong, ValueError):
    """An argument or answer value is too large to send to this peer.

    Raised before anything is sent. A value over AMP's limit of 65,535 bytes
    can be sent only to a peer that reassembles chunked values (another
    maas-rpc peer); a MAAS or stock AMP peer would silently keep the first
    65,535 bytes, so it is refused instead. It is an :class:`amp.TooLong`
    (what stock AMP raises for such a value) and a :class:`ValueError`.

    :param command: the command's wire name (``b"answer"`` for an answer).
    :param key: the argument's wire name.
    :param size: the value's size in bytes.
    :param limit: the largest size this peer can receive.
    :param chunked: whether the peer reassembles chunked values (so the
        limit is this side's ``MAAS_RPC_MAX_VALUE``, not AMP's).

    :ivar command: the command's wire name.
    :ivar key: the argument's wire name.
    :ivar size: the value's size in bytes.
    :ivar limit: the largest size allowed.
    """

    def __init__(
        self, command: bytes, key: bytes, size: int, limit: int, chunked: bool = True
    ) -> None:
        Exception.__init__(
            self,
            f"argument {key.decode('ascii', 'replace')!r} of "
            f"{command.decode('ascii', 'replace')} is {size} bytes once "
            f"encoded; the limit is {limit} bytes"
            + (
                ""
                if chunked
                else " because the peer does not reassemble chunked values "
                "(a MAAS or stock AMP peer)"
            ),
        )
        self.isKey = False
        self.isLocal = True
        self.value = b""
        self.keyName = key
        self.command = command
        self.key = key
        self.size = size
        self.limit = limit

    __str__ = Exception.__str__
    __repr__ = Exception.__repr__


class RemoteResponderFailed(_amp.UnhandledCommand):
    """The peer's responder failed with an error its command does not declare.

    The peer answered ``UNHANDLED`` with the description ``Unknown Error
    [<ref>]``, as MAAS does; the reference names the peer's log entry. It is
    an :class:`amp.UnhandledCommand`, as a MAAS caller sees it, so code that
    catches that still works; but unlike a plain ``UnhandledCommand`` (the
    peer does not know the command), it must not be taken as a sign of an
    older peer.

    :param code: the error code (``b"UNHANDLED"``).
    :param description: the error description.

    :ivar errorCode: the error code (``b"UNHANDLED"``).
    :ivar description: the error description.
    :ivar reference: the reference between the brackets, or ``None``.
    """

    _pattern = re.compile(r"^Unknown Error(?: \[(.*)\])?$", re.DOTALL)

    def __init__(self, code: bytes = b"UNHANDLED", description: str = "") -> None:
        super().__init__(code, description)
        self.errorCode = code
        self.description = description
        match = self._pattern.match(description)
        self.reference = match.group(1) if match else None

    @classmethod
    def matches(cls, description: str) -> bool:
        """Tell whether an ``UNHANDLED`` description reports a failed
        responder (rather than an unknown command).

        :param description: the error description.
        :return: ``True`` for ``Unknown Error`` and ``Unknown Error [...]``.
        """
        return description.startswith("Unknown Error")

    def __str__(self) -> str:
        return f"the peer's responder failed: {self.description}"


class ShuttingDown(_amp.AmpError):
    """The peer refused a command because it is shutting down (wire code
    ``SHUTTING_DOWN``); try another connection."""


class ChallengeRefused(AuthenticationFailed):
    """A peer refused to answer an ``Authenticate`` challenge: a challenge
    issued by a process of its own role (a reflection), or, with a legacy
    (MAAS) peer, one issued by a maas-rpc process (a relay or a downgrade).

    Declared by :class:`~provisioningserver.rpc.common.Authenticate` (wire
    code ``ChallengeRefused``).
    """


class LegacyPeerRefused(AuthenticationFailed):
    """The peer does not offer maas-rpc's secure channel (a MAAS peer, or
    someone pretending to be one), and legacy peers are not allowed
    (``MAAS_RPC_ALLOW_LEGACY_PEERS``)."""
