"""The authentication handshake's building blocks, used by both sides.

Each side proves it knows the shared secret by answering the other's
:class:`~provisioningserver.rpc.common.Authenticate` challenge (wire facts in
the architecture documentation):

* the region, on accepting a connection, calls the cluster's ``Identify``
  then ``Authenticate``, and checks the digest;
* the cluster, on connecting, calls the region's ``Authenticate``, checks
  it, then calls ``Register`` with its UUID.

A connection that does not finish within the handshake timeout is dropped.

Reflection and relay
--------------------

A peer without the secret might try to authenticate by sending a challenge
it received back to the process that issued it (reflection), or on to
another process that shares the secret (relay), and replaying the answer. To
stop both while keeping the 16-byte wire format, a challenge is an 8-byte
random nonce followed by the first 8 bytes of ``HMAC-SHA256(secret, role ‖
nonce)``, where ``role`` names the side that issued it (:data:`REGION` or
:data:`CLUSTER`). A side refuses to answer a challenge that carries its own
role's tag, so a region process never answers a challenge issued by any
region process, nor a cluster one issued by any cluster. A MAAS peer's
challenge (16 random bytes) carries no valid tag and is answered as before.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from provisioningserver.rpc.common import Authenticate, peerAddress
from provisioningserver.rpc.exceptions import AuthenticationFailed
from provisioningserver.security import calculate_digest, digests_match

__all__ = [
    "CHALLENGE_BYTES",
    "CLUSTER",
    "REGION",
    "SALT_BYTES",
    "HandshakeDeadline",
    "ReflectedChallenge",
    "answerChallenge",
    "challengePeer",
    "isOwnChallenge",
    "makeChallenge",
]

log = Logger()

#: The length of the ``message`` a challenger sends.
CHALLENGE_BYTES = 16

#: The length of the ``salt`` an answer carries.
SALT_BYTES = 16


#: The role tag of challenges issued by region processes.
REGION = b"maas-rpc:region"

#: The role tag of challenges issued by cluster processes.
CLUSTER = b"maas-rpc:cluster"

_NONCE_BYTES = 8


class ReflectedChallenge(AuthenticationFailed):
    """A peer sent a challenge issued by a process of this side's role: a
    reflection or relay attempt."""


def _tag(secret: bytes, role: bytes, nonce: bytes) -> bytes:
    digest = hmac.new(secret, role + nonce, hashlib.sha256).digest()
    return digest[: CHALLENGE_BYTES - _NONCE_BYTES]


def makeChallenge(secret: bytes, role: bytes) -> bytes:
    """Make a fresh challenge that records which side issued it.

    :param secret: the raw shared secret.
    :param role: :data:`REGION` or :data:`CLUSTER`, the issuing side.
    :return: 16 bytes: a random nonce and its role tag.
    """
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + _tag(secret, role, nonce)


def isOwnChallenge(secret: bytes, role: bytes, message: bytes) -> bool:
    """Tell whether ``message`` is a challenge issued by a process of
    ``role``.

    :param secret: the raw shared secret.
    :param role: the role to check for.
    :param message: a received challenge.
    :return: ``True`` when it carries ``role``'s tag.
    """
    if len(message) != CHALLENGE_BYTES:
        return False
    nonce, tag = message[:_NONCE_BYTES], message[_NONCE_BYTES:]
    return hmac.compare_digest(_tag(secret, role, nonce), tag)


def answerChallenge(
    secret: bytes, message: bytes, role: bytes | None = None
) -> dict[str, bytes]:
    """Answer an ``Authenticate`` challenge.

    :param secret: the raw shared secret.
    :param message: the challenge received.
    :param role: the answering side's role; a challenge issued by that role
        is refused. ``None`` answers anything (as MAAS does).
    :return: the ``Authenticate`` response: ``digest`` and a fresh ``salt``.
    :raises ReflectedChallenge: when ``message`` was issued by a process of
        ``role``.
    """
    if role is not None and isOwnChallenge(secret, role, message):
        raise ReflectedChallenge(
            f"refusing to answer a challenge issued by a {role.decode()} "
            "process: a reflection or relay attempt"
        )
    salt = os.urandom(SALT_BYTES)
    return {"digest": calculate_digest(secret, message, salt), "salt": salt}


async def _challenge(conn: Any, secret: bytes, role: bytes) -> bool:
    message = makeChallenge(secret, role)
    response = await conn.callRemote(Authenticate, message=message)
    salt = response["salt"]
    if len(salt) != SALT_BYTES:
        return False
    expected = calculate_digest(secret, message, salt)
    return digests_match(expected, response["digest"])


def challengePeer(conn: Any, secret: bytes, role: bytes) -> Deferred[bool]:
    """Challenge the peer with a fresh message and check its answer.

    :param conn: the connection (an AMP protocol).
    :param secret: the raw shared secret.
    :param role: this side's role (:data:`REGION` or :data:`CLUSTER`), tagged
        into the challenge.
    :return: a Deferred firing ``True`` when the peer's digest is right,
        ``False`` when it is wrong; it fails when the call itself fails.
    """
    return Deferred.fromCoroutine(_challenge(conn, secret, role))


class HandshakeDeadline:
    """Drops a connection whose handshake does not finish in time.

    :param proto: the protocol whose connection to drop.
    :param timeout: seconds allowed.
    :param clock: the clock to measure with.
    :param what: describes the handshake for the log line.
    """

    def __init__(self, proto: Any, timeout: float, clock: Any, what: str) -> None:
        self._proto = proto
        self._timeout = timeout
        self._what = what
        self._call = clock.callLater(timeout, self._expired)

    def _expired(self) -> None:
        log.warn(
            "{what} with {peer} did not complete within {timeout} seconds; "
            "dropping the connection.",
            what=self._what,
            peer=peerAddress(self._proto),
            timeout=self._timeout,
        )
        self._proto.abort()

    @property
    def expired(self) -> bool:
        """Whether the deadline passed."""
        return self._call.called

    def done(self) -> None:
        """The handshake finished (or the connection ended): stop the timer."""
        if self._call.active():
            self._call.cancel()
