"""Every private name of Twisted that this package touches, in one place.

This package specialises AMP through its public seams where they exist
(``IBoxReceiver``, ``IResponderLocator``, ``dispatchCommand``,
``locateResponder``, ``Command``'s classmethods, ``sendBox``). A few things
have no public seam; for those it uses the names below, and
:func:`missingNames` (run by the test suite against every supported Twisted
release) says, by name, which of them a Twisted release lacks.

Private names used, and why:

``twisted.protocols.amp._wireNameToPythonIdentifier``
    How AMP turns a wire name into a keyword argument name; the precompiled
    converters (:mod:`provisioningserver.rpc.codec`) must name arguments
    exactly as stock AMP does.
``BoxDispatcher._commandReceived``, ``_answerReceived``, ``_errorReceived``
    Overridden: the common path for commands and answers (see
    :mod:`provisioningserver.rpc.dispatch` and
    :mod:`provisioningserver.rpc.calling`).
``BoxDispatcher._sendBoxCommand``, ``_nextTag``, ``_counter``
    Sending a call: overridden so that a call can be cancelled (its entry
    released) and a late answer recognised.
``BoxDispatcher._outstandingRequests``, ``_failAllReason``
    The calls awaiting an answer, and why none can be sent any more.
``BoxDispatcher._safeEmit``
    Called to send a reply, as stock AMP's ``_commandReceived`` does, so a
    subclass that overrides it is still honoured.
``CommandLocator._commandDispatch``, ``_wrapWithSerialization``
    The responders a protocol class declares (read once per class to build
    the common path's table); a class that overrides
    ``_wrapWithSerialization`` takes stock AMP's path.
``AmpBox._sendTo``
    How a reply box sends itself (a ``QuitBox`` then closes the connection,
    a switch box switches protocols): called as stock AMP calls it.
``BinaryBoxProtocol._locked``, ``_startingTLSBuffer``, ``_justStartedTLS``
    State of a protocol switch and of ``StartTLS``: while set, sending takes
    stock AMP's path.
``BinaryBoxProtocol._switchTo`` (reads ``recvd``)
    On a protocol switch, stock AMP hands the bytes not parsed yet, which it
    reads from ``recvd``, to the new protocol; the one-pass parser keeps
    ``recvd`` right for it (:mod:`provisioningserver.rpc.framing`).
``Command.allErrors``, ``fatalErrors``, ``reverseErrors``
    The error tables AMP's command metaclass builds (read, never written).
"""

from __future__ import annotations

from twisted.protocols import amp as _amp

__all__ = ["PRIVATE_NAMES", "missingNames", "wireNameToPythonIdentifier"]

#: ``(object, attribute)`` pairs: every private name listed above.
PRIVATE_NAMES: tuple[tuple[object, str], ...] = (
    (_amp, "_wireNameToPythonIdentifier"),
    (_amp.BoxDispatcher, "_commandReceived"),
    (_amp.BoxDispatcher, "_answerReceived"),
    (_amp.BoxDispatcher, "_errorReceived"),
    (_amp.BoxDispatcher, "_sendBoxCommand"),
    (_amp.BoxDispatcher, "_nextTag"),
    (_amp.BoxDispatcher, "_outstandingRequests"),
    (_amp.BoxDispatcher, "_failAllReason"),
    (_amp.BoxDispatcher, "_counter"),
    (_amp.BoxDispatcher, "_safeEmit"),
    (_amp.CommandLocator, "_wrapWithSerialization"),
    (_amp.AMP, "_commandDispatch"),
    (_amp.AmpBox, "_sendTo"),
    (_amp.BinaryBoxProtocol, "_locked"),
    (_amp.BinaryBoxProtocol, "_startingTLSBuffer"),
    (_amp.BinaryBoxProtocol, "_justStartedTLS"),
    (_amp.BinaryBoxProtocol, "_switchTo"),
    (_amp.Command, "allErrors"),
    (_amp.Command, "fatalErrors"),
    (_amp.Command, "reverseErrors"),
)


def _describe(owner: object) -> str:
    return getattr(owner, "__qualname__", getattr(owner, "__name__", repr(owner)))


def missingNames() -> list[str]:
    """Return the private names this Twisted release lacks.

    :return: ``"module.Class.name"`` for each missing name; empty when all
        are present.
    """
    return [
        f"twisted.protocols.amp.{_describe(owner)}.{name}"
        if owner is not _amp
        else f"twisted.protocols.amp.{name}"
        for owner, name in PRIVATE_NAMES
        if not hasattr(owner, name)
    ]


def wireNameToPythonIdentifier(key: bytes) -> str:
    """Turn a wire argument name into the keyword stock AMP passes.

    :param key: the wire name, e.g. ``b"foo-bar"``.
    :return: the identifier, e.g. ``"foo_bar"``.
    """
    return _amp._wireNameToPythonIdentifier(key)
