"""Precompiled argument converters for the common path.

Stock AMP turns each call into a ``Command`` instance, copies its arguments
twice and looks every argument's converter up again, on both sides. For a
command that uses none of AMP's hooks, the same conversions can be prepared
once: :func:`specFor` returns a :class:`CommandSpec` that encodes and decodes
exactly as stock AMP would (it calls the very same ``toString`` /
``fromString`` methods, in the declared order, and raises the same
exceptions), or ``None`` when the command must take stock AMP's path.

A command takes stock AMP's path when it

* has an argument or response of any type but AMP's plain ones (``String``,
  ``Unicode``, ``Integer``, ``Float``, ``Boolean``, ``Path``; exact types, as
  a subclass may override anything);
* overrides one of ``Command``'s classmethods (``makeArguments``,
  ``parseArguments``, ``makeResponse``, ``parseResponse``), its constructor
  or ``_doCommand``;
* uses a special ``commandType`` or ``responseType`` (``StartTLS``,
  ``ProtocolSwitchCommand``), or does not require an answer.

The decision is made once per command class and remembered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provisioningserver.rpc.framing import keyPrefix, serializeLayout
from provisioningserver.rpc.twistedprivate import wireNameToPythonIdentifier
from provisioningserver.twisted.protocols import amp

__all__ = ["CommandSpec", "specFor"]

#: Argument types whose conversion does not depend on the protocol, so they
#: can be precompiled. Exact types only: a subclass may override anything.
_PLAIN = frozenset(
    {amp.Unicode, amp.String, amp.Integer, amp.Boolean, amp.Float, amp.Path}
)

#: Command classmethods (and methods) whose override sends a command to
#: stock AMP's path.
_HOOKS = ("makeArguments", "parseArguments", "makeResponse", "parseResponse")

#: One argument: (wire name, Python name, to bytes, from bytes, optional).
Field = tuple[bytes, str, Callable[[Any], bytes], Callable[[bytes], Any], bool]


class CommandSpec:
    """A command's precompiled converters.

    :param command: the command class (see :func:`specFor` for which
        qualify).

    :ivar command: the command class.
    :ivar name: its wire name.
    :ivar arguments: its arguments, as ``(wire name, Python name, to bytes,
        from bytes, optional)`` tuples, in declared order.
    :ivar response: its response, in the same form.
    :ivar names: the Python names of its arguments.
    :ivar allErrors: the command's declared errors (class → wire code).
    :ivar fatalErrors: those of them that close the connection.
    :ivar reverseErrors: wire code → class.
    """

    __slots__ = (
        "command",
        "name",
        "arguments",
        "response",
        "names",
        "allErrors",
        "fatalErrors",
        "reverseErrors",
        "_callLayout",
    )

    def __init__(self, command: type[amp.Command]) -> None:
        self.command = command
        self.name = command.commandName
        self.arguments = self._fields(command.arguments)
        self.response = self._fields(command.response)
        self.names = frozenset(name for _, name, _, _, _ in self.arguments)
        self.allErrors: dict[type, bytes] = command.allErrors  # type: ignore[attr-defined]
        self.fatalErrors = command.fatalErrors
        self.reverseErrors: dict[bytes, type] = command.reverseErrors  # type: ignore[attr-defined]
        # A call box's keys in the order AMP serialises them (sorted), with
        # their length-prefixed wire form: the arguments, _ask and _command.
        keys = sorted({wire for wire, *_ in self.arguments} | {amp.ASK, amp.COMMAND})
        # A key too long means stock AMP's TooLong, on the general path.
        self._callLayout: list[tuple[bytes, bytes]] | None = (
            None
            if any(len(key) > amp.MAX_KEY_LENGTH for key in keys)
            else [(key, keyPrefix(key)) for key in keys]
        )

    @staticmethod
    def _fields(declared: list[tuple[bytes, amp.Argument]]) -> list[Field]:
        return [
            (
                wire,
                wireNameToPythonIdentifier(wire),
                argument.toString,
                argument.fromString,
                bool(argument.optional),
            )
            for wire, argument in declared
        ]

    def encodeArguments(self, values: dict[str, Any]) -> dict[bytes, bytes] | None:
        """Encode call arguments as stock AMP would, or say that stock AMP
        must (so that it raises its own error).

        :param values: the keyword arguments of a call.
        :return: the box's argument keys, or ``None`` for an unknown name or
            a missing (or ``None``) required argument.
        :raises Exception: whatever an argument's ``toString`` raises, as
            stock AMP would.
        """
        if not self.names.issuperset(values):
            return None
        box: dict[bytes, bytes] = {}
        get = values.get
        for wire, name, toString, _, optional in self.arguments:
            value = get(name)
            if value is None:
                if optional:
                    continue
                return None
            box[wire] = toString(value)
        return box

    def frameCall(self, args: dict[bytes, bytes]) -> bytes | None:
        """Serialise a call box (its arguments, ``_ask`` and ``_command``)
        exactly as :meth:`amp.AmpBox.serialize` would, without sorting.

        :param args: the box, as :meth:`encodeArguments` made it plus the
            ``_ask`` and ``_command`` keys.
        :return: the bytes, or ``None`` when a key or a value is longer than
            AMP allows or a value is not :class:`bytes` (the caller then
            takes the path that raises stock AMP's error, or splits the
            value).
        """
        layout = self._callLayout
        if layout is None:
            return None
        return serializeLayout(layout, args)

    def decodeArguments(self, box: dict[bytes, bytes]) -> dict[str, Any]:
        """Decode a received call's arguments.

        :param box: the received box.
        :return: the keyword arguments for the responder (``None`` for an
            optional argument left out).
        :raises KeyError: when a required argument is missing.
        :raises Exception: whatever an argument's ``fromString`` raises.
        """
        return _decode(self.arguments, box)

    def encodeResponse(self, values: dict[str, Any]) -> amp.AmpBox:
        """Encode a responder's answer as stock AMP's ``makeResponse`` would.

        :param values: what the responder returned.
        :return: the answer box (without its ``_answer`` tag).
        :raises Exception: when a value is missing or does not convert.
        """
        if type(values) is not dict:
            # Stock AMP's makeResponse copies what the responder returned:
            # anything without a copy() (None, say) is refused there.
            values = values.copy()
        box = amp.AmpBox()
        for wire, name, toString, _, optional in self.response:
            if optional:
                value = values.get(name)
                if value is None:
                    continue
            else:
                value = values[name]
            box[wire] = toString(value)
        return box

    def decodeResponse(self, box: dict[bytes, bytes]) -> dict[str, Any]:
        """Decode a received answer as stock AMP's ``parseResponse`` would.

        :param box: the answer box.
        :return: the response dict.
        :raises KeyError: when a required value is missing.
        :raises Exception: whatever a value's ``fromString`` raises.
        """
        return _decode(self.response, box)


def _decode(fields: list[Field], box: dict[bytes, bytes]) -> dict[str, Any]:
    """Decode a box's fields as stock AMP's ``_stringsToObjects`` would."""
    values: dict[str, Any] = {}
    get = box.get
    for wire, name, _, fromString, optional in fields:
        value = get(wire)
        if value is None:
            if optional:
                values[name] = None
                continue
            raise KeyError(wire)
        values[name] = fromString(value)
    return values


_specs: dict[type, CommandSpec | None] = {}


def _overrides(command: type[amp.Command]) -> bool:
    for hook in _HOOKS:
        mine = getattr(command, hook).__func__
        if mine is not getattr(amp.Command, hook).__func__:
            return True
    return (
        command.__init__ is not amp.Command.__init__
        or command._doCommand is not amp.Command._doCommand
    )


def specFor(command: type[amp.Command]) -> CommandSpec | None:
    """Return a command's precompiled spec, or ``None`` when stock AMP must
    handle it (see the module's documentation).

    :param command: a command class.
    :return: its :class:`CommandSpec`, built once, or ``None``.
    """
    try:
        return _specs[command]
    except KeyError:
        pass
    except TypeError:
        return None  # Not a class at all: stock AMP raises its own error.
    spec: CommandSpec | None = None
    try:
        eligible = (
            isinstance(command, type)
            and issubclass(command, amp.Command)
            and command.commandType is amp.Box
            and command.responseType is amp.Box
            and bool(command.requiresAnswer)
            and all(
                type(argument) in _PLAIN
                for _, argument in (*command.arguments, *command.response)
            )
            and not _overrides(command)
        )
    except (AttributeError, TypeError, ValueError):
        eligible = False
    if eligible:
        spec = CommandSpec(command)
    _specs[command] = spec
    return spec
