"""The authentication handshake's building blocks, used by both sides.

Each side proves it knows the shared secret by answering the other's
:class:`~provisioningserver.rpc.common.Authenticate` challenge (wire facts
in the architecture documentation):

* the region, once the channel is up, calls the cluster's ``Identify`` then
  ``Authenticate``, and checks the digest;
* the cluster, once the channel is up, calls the region's ``Authenticate``,
  checks it, then calls ``Register`` with its UUID.

A connection that does not finish within the handshake timeout is dropped.

The digest depends on the connection's mode (see
:mod:`provisioningserver.rpc.channel`): over the secure channel (or mutual
TLS) it is bound to the TLS connection, the answering side's role and the
announced capabilities (:func:`~provisioningserver.rpc.channel.boundDigest`);
with a legacy (MAAS) peer it is MAAS's ``HMAC-SHA256(secret, message ‖
salt)``.

Challenges and legacy peers
---------------------------

A challenge is an 8-byte random nonce followed by the first 8 bytes of
``HMAC-SHA256(secret, role ‖ nonce)``, where ``role`` names the side that
issued it (:data:`REGION` or :data:`CLUSTER`); to a MAAS peer it is 16
random-looking bytes, as MAAS's own. In legacy mode a maas-rpc side refuses
to answer a challenge that carries either role's tag: a maas-rpc process
issued it, and two maas-rpc processes never talk in legacy mode unless
someone on the path made them (a downgrade), or relays a challenge from
another connection. The refusal is the declared error
:class:`~provisioningserver.rpc.exceptions.ChallengeRefused`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from provisioningserver.rpc.channel import LEGACY, boundDigest
from provisioningserver.rpc.exceptions import AuthenticationFailed, ChallengeRefused
from provisioningserver.rpc.framing import peerAddress
from provisioningserver.security import calculate_digest, digests_match
from provisioningserver.utils.text import printable

__all__ = [
    "CHALLENGE_BYTES",
    "CLUSTER",
    "REGION",
    "SALT_BYTES",
    "ChannelProof",
    "HandshakeDeadline",
    "ReflectedChallenge",
    "answerChallenge",
    "challengePeer",
    "handshakeCall",
    "isOwnChallenge",
    "makeChallenge",
]

#: The length of the ``message`` a challenger sends.
CHALLENGE_BYTES = 16

#: The length of the ``salt`` an answer carries.
SALT_BYTES = 16

#: The role tag of region processes.
REGION = b"maas-rpc:region"

#: The role tag of cluster processes.
CLUSTER = b"maas-rpc:cluster"

_NONCE_BYTES = 8

#: The name this package used before it refused relays as well; the same
#: class as :class:`~provisioningserver.rpc.exceptions.ChallengeRefused`.
ReflectedChallenge = ChallengeRefused


@dataclass(frozen=True)
class ChannelProof:
    """What a digest is bound to on one connection.

    :ivar mode: ``"secure"``, ``"mtls"`` or ``"legacy"``.
    :ivar binding: the TLS connection's exported keying material (empty in
        legacy mode).
    :ivar transcript: the hash of the capabilities both sides announced
        (empty in legacy mode).
    """

    mode: str
    binding: bytes = b""
    transcript: bytes = b""


#: The proof of a connection with a legacy peer: MAAS's digest.
LEGACY_PROOF = ChannelProof(LEGACY)


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


def digestFor(
    secret: bytes, answerer: bytes, proof: ChannelProof, message: bytes, salt: bytes
) -> bytes:
    """Compute the digest that answers ``message`` on a connection.

    :param secret: the raw shared secret.
    :param answerer: the answering side's role.
    :param proof: what the connection binds digests to.
    :param message: the challenge.
    :param salt: the answerer's salt.
    :return: 32 bytes.
    """
    if proof.mode == LEGACY:
        return calculate_digest(secret, message, salt)
    return boundDigest(secret, answerer, proof.binding, proof.transcript, message, salt)


def answerChallenge(
    secret: bytes,
    message: bytes,
    role: bytes | None = None,
    proof: ChannelProof = LEGACY_PROOF,
) -> dict[str, bytes]:
    """Answer an ``Authenticate`` challenge.

    :param secret: the raw shared secret.
    :param message: the challenge received.
    :param role: the answering side's role; ``None`` answers any challenge
        with MAAS's digest, as MAAS does (for tests and tools).
    :param proof: what this connection binds digests to (legacy: MAAS's
        digest).
    :return: the ``Authenticate`` response: ``digest`` and a fresh ``salt``.
    :raises ChallengeRefused: for a challenge that is not 16 bytes, or, in
        legacy mode, one issued by a maas-rpc process.
    """
    if role is not None:
        if len(message) != CHALLENGE_BYTES:
            raise ChallengeRefused(
                f"refusing a challenge of {len(message)} bytes; challenges are "
                f"{CHALLENGE_BYTES} bytes"
            )
        if proof.mode == LEGACY and (
            isOwnChallenge(secret, REGION, message)
            or isOwnChallenge(secret, CLUSTER, message)
        ):
            raise ChallengeRefused(
                "refusing to answer, over a legacy connection, a challenge "
                "issued by a maas-rpc process: a relay, reflection or downgrade "
                "attempt"
            )
    salt = os.urandom(SALT_BYTES)
    answerer = role if role is not None else b""
    return {"digest": digestFor(secret, answerer, proof, message, salt), "salt": salt}


async def _challenge(
    conn: Any, secret: bytes, role: bytes, peerRole: bytes, proof: ChannelProof
) -> bool:
    from provisioningserver.rpc.common import Authenticate

    message = makeChallenge(secret, role)
    response = await handshakeCall(conn, Authenticate, message=message)
    salt = response["salt"]
    if len(salt) != SALT_BYTES:
        return False
    expected = digestFor(secret, peerRole, proof, message, salt)
    return digests_match(expected, response["digest"])


async def handshakeCall(conn: Any, command: Any, **arguments: Any) -> Any:
    """Call a handshake command; an answer that does not parse is the peer's
    failure to authenticate, said in one line, not a crash of this side.

    :param conn: the connection.
    :param command: the command.
    :param arguments: its arguments.
    :return: the answer.
    :raises AuthenticationFailed: when the answer is malformed.
    """
    try:
        return await conn.callRemote(command, **arguments)
    except (KeyError, ValueError, TypeError) as error:
        raise AuthenticationFailed(
            f"the peer's answer to {command.__name__} is malformed "
            f"({printable(str(error), 80)})"
        ) from None


def challengePeer(
    conn: Any,
    secret: bytes,
    role: bytes,
    proof: ChannelProof = LEGACY_PROOF,
) -> Deferred[bool]:
    """Challenge the peer with a fresh message and check its answer.

    :param conn: the connection (an AMP protocol).
    :param secret: the raw shared secret.
    :param role: this side's role (:data:`REGION` or :data:`CLUSTER`),
        tagged into the challenge; the peer answers as the other role.
    :param proof: what this connection binds digests to.
    :return: a Deferred firing ``True`` when the peer's digest is right,
        ``False`` when it is wrong; it fails when the call itself fails.
    """
    peerRole = CLUSTER if role == REGION else REGION
    return Deferred.fromCoroutine(_challenge(conn, secret, role, peerRole, proof))


class HandshakeDeadline:
    """Drops a connection whose handshake does not finish in time.

    :param proto: the protocol whose connection to drop.
    :param timeout: seconds allowed.
    :param clock: the clock to measure with.
    :param what: describes the handshake for the log line.
    """

    def __init__(self, proto: Any, timeout: float, clock: Any, what: str) -> None:
        self._proto: Any = proto
        self._timeout = timeout
        self._what = what
        self._call = clock.callLater(timeout, self._expired)

    def _expired(self) -> None:
        proto, self._proto = self._proto, None
        proto.peerWarn(
            "deadline",
            "{what} with {peer} did not complete within {timeout} seconds; "
            "dropping the connection.",
            what=self._what,
            peer=peerAddress(proto),
            timeout=self._timeout,
        )
        proto.abort()

    @property
    def expired(self) -> bool:
        """Whether the deadline passed."""
        return bool(self._call.called)

    def done(self) -> None:
        """The handshake finished (or the connection ended): stop the timer."""
        if self._call.active():
            self._call.cancel()
        self._proto = None
