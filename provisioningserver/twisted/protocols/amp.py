"""Twisted's AMP, under the import path MAAS uses.

MAAS once carried a patched copy of :mod:`twisted.protocols.amp` at
``provisioningserver.twisted.protocols.amp``. This project depends on
upstream Twisted instead: this module re-exports every public name of
:mod:`twisted.protocols.amp`, so ``amp.Command``, ``amp.Unicode``,
``amp.AMP``, ``amp.UNHANDLED_ERROR_CODE`` and the rest are the very same
objects as Twisted's. Code written against MAAS's path therefore reads the
same here::

    from provisioningserver.twisted.protocols import amp

    class EatCheez(amp.Command):
        arguments = [(b"name", amp.Unicode())]
"""

from twisted.protocols import amp as _amp
from twisted.protocols.amp import *  # noqa: F403
from twisted.protocols.amp import (  # noqa: F401  (explicit for type checkers)
    ANSWER,
    ASK,
    COMMAND,
    ERROR,
    ERROR_CODE,
    ERROR_DESCRIPTION,
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    PROTOCOL_ERRORS,
    UNHANDLED_ERROR_CODE,
    UNKNOWN_ERROR_CODE,
    AmpBox,
    AmpList,
    Argument,
    Boolean,
    Box,
    BoxDispatcher,
    Command,
    CommandLocator,
    DateTime,
    Decimal,
    Float,
    Integer,
    ListOf,
    RemoteAmpError,
    StartTLS,
    String,
    TooLong,
    UnhandledCommand,
    Unicode,
    UnknownRemoteError,
)

__all__ = list(_amp.__all__)
