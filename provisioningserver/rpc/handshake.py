"""The authentication handshake's building blocks, used by both sides.

Each side proves it knows the shared secret by answering the other's
:class:`~provisioningserver.rpc.common.Authenticate` challenge (wire facts in
the architecture documentation):

* the region, on accepting a connection, calls the cluster's ``Identify``
  then ``Authenticate``, and checks the digest;
* the cluster, on connecting, calls the region's ``Authenticate``, checks
  it, then calls ``Register`` with its UUID.

A connection that does not finish within the handshake timeout is dropped.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from provisioningserver.rpc.common import Authenticate, peerAddress
from provisioningserver.security import calculate_digest, digests_match

__all__ = [
    "CHALLENGE_BYTES",
    "SALT_BYTES",
    "HandshakeDeadline",
    "answerChallenge",
    "challengePeer",
]

log = Logger()

#: The length of the ``message`` a challenger sends.
CHALLENGE_BYTES = 16

#: The length of the ``salt`` an answer carries.
SALT_BYTES = 16


def answerChallenge(secret: bytes, message: bytes) -> dict[str, bytes]:
    """Answer an ``Authenticate`` challenge.

    :param secret: the raw shared secret.
    :param message: the challenge received.
    :return: the ``Authenticate`` response: ``digest`` and a fresh ``salt``.
    """
    salt = os.urandom(SALT_BYTES)
    return {"digest": calculate_digest(secret, message, salt), "salt": salt}


async def _challenge(conn: Any, secret: bytes) -> bool:
    message = os.urandom(CHALLENGE_BYTES)
    response = await conn.callRemote(Authenticate, message=message)
    salt = response["salt"]
    if len(salt) != SALT_BYTES:
        return False
    expected = calculate_digest(secret, message, salt)
    return digests_match(expected, response["digest"])


def challengePeer(conn: Any, secret: bytes) -> Deferred[bool]:
    """Challenge the peer with a fresh random message and check its answer.

    :param conn: the connection (an AMP protocol).
    :param secret: the raw shared secret.
    :return: a Deferred firing ``True`` when the peer's digest is right,
        ``False`` when it is wrong; it fails when the call itself fails.
    """
    return Deferred.fromCoroutine(_challenge(conn, secret))


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
        transport = self._proto.transport
        if transport is not None:
            transport.abortConnection()

    @property
    def expired(self) -> bool:
        """Whether the deadline passed."""
        return self._call.called

    def done(self) -> None:
        """The handshake finished (or the connection ended): stop the timer."""
        if self._call.active():
            self._call.cancel()
