"""A faster codec for AMP, producing exactly stock AMP's bytes.

Stock AMP turns each call into a ``Command`` instance, copies its arguments
twice, and looks every argument's converter up again; on the wire side it
parses one length-prefixed string at a time through a state machine. For
commands whose arguments are AMP's plain types, this module precomputes the
converters once per command (:func:`specFor`) and serialises boxes in one
pass (:func:`serializeBox`); :class:`~provisioningserver.rpc.common.RPCProtocol`
uses both on its common path and parses boxes in one loop. Anything else
(other argument types, optional arguments left out, positional arguments)
takes stock AMP's path. The bytes on the wire are the same either way; a
conformance test compares them with stock AMP's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.protocols.amp import _wireNameToPythonIdentifier

from provisioningserver.twisted.protocols import amp

__all__ = ["CommandSpec", "serializeBox", "specFor"]

_pack = struct.Struct(">H").pack

#: Argument types whose conversion does not depend on the protocol, so they
#: can be precompiled. Exact types only: a subclass may override anything.
_PLAIN = frozenset(
    {amp.Unicode, amp.String, amp.Integer, amp.Boolean, amp.Float, amp.Path}
)

_keyPrefixes: dict[bytes, bytes] = {}


def _keyPrefix(key: bytes) -> bytes:
    prefix = _keyPrefixes.get(key)
    if prefix is None:
        if type(key) is not bytes:
            raise TypeError(f"Unicode key not allowed: {key!r}")
        if len(key) > amp.MAX_KEY_LENGTH:
            raise amp.TooLong(True, True, key, None)
        prefix = _pack(len(key)) + key
        if len(_keyPrefixes) < 4096:
            _keyPrefixes[key] = prefix
    return prefix


def serializeBox(box: dict[bytes, bytes]) -> bytes:
    """Serialise a box exactly as :meth:`amp.AmpBox.serialize` does.

    :param box: keys and values, all :class:`bytes`.
    :return: the wire encoding (keys in sorted order, then an empty key).
    :raises TypeError: for a text key or value.
    :raises amp.TooLong: for a key over 255 or a value over 65,535 bytes.
    """
    parts: list[bytes] = []
    append = parts.append
    for key in sorted(box):
        value = box[key]
        if type(value) is not bytes:
            if isinstance(value, str):
                raise TypeError(f"Unicode value for key {key!r} not allowed: {value!r}")
            value = bytes(value)
        if len(value) > amp.MAX_VALUE_LENGTH:
            raise amp.TooLong(False, True, value, key)
        append(_keyPrefix(key))
        append(_pack(len(value)))
        append(value)
    append(b"\x00\x00")
    return b"".join(parts)


#: One argument: (wire name, Python name, to bytes, from bytes, optional).
Field = tuple[bytes, str, Callable[[Any], bytes], Callable[[bytes], Any], bool]


class CommandSpec:
    """A command's precompiled converters.

    :ivar command: the command class.
    :ivar arguments: its arguments, as ``(wire name, Python name, to bytes,
        from bytes, optional)`` tuples.
    :ivar response: its response, in the same form.
    :ivar names: the Python names of its arguments.
    """

    def __init__(self, command: type[amp.Command]) -> None:
        self.command = command
        self.arguments = self._fields(command.arguments)
        self.response = self._fields(command.response)
        self.names = frozenset(name for _, name, _, _, _ in self.arguments)

    @staticmethod
    def _fields(declared: list[tuple[bytes, amp.Argument]]) -> list[Field]:
        return [
            (
                wire,
                _wireNameToPythonIdentifier(wire),
                argument.toString,
                argument.fromString,
                bool(argument.optional),
            )
            for wire, argument in declared
        ]

    @staticmethod
    def _encode(fields: list[Field], values: dict[str, Any]) -> dict[bytes, bytes]:
        box: dict[bytes, bytes] = {}
        for wire, name, toString, _, optional in fields:
            value = values.get(name)
            if value is None:
                if optional:
                    continue
                raise KeyError(name)
            box[wire] = toString(value)
        return box

    @staticmethod
    def _decode(fields: list[Field], box: dict[bytes, bytes]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for wire, name, _, fromString, optional in fields:
            value = box.get(wire)
            if value is None:
                if optional:
                    values[name] = None
                    continue
                raise KeyError(wire)
            values[name] = fromString(value)
        return values

    def encodeArguments(self, values: dict[str, Any]) -> dict[bytes, bytes] | None:
        """Encode call arguments, or say that stock AMP must.

        :param values: the keyword arguments of a call.
        :return: the box's argument keys, or ``None`` when the values need
            stock AMP's handling (an unknown name, a missing argument), so
            that it raises its own error.
        """
        if not self.names.issuperset(values):
            return None
        try:
            return self._encode(self.arguments, values)
        except KeyError:
            return None

    def decodeArguments(self, box: dict[bytes, bytes]) -> dict[str, Any]:
        """Decode a received call's arguments.

        :param box: the received box.
        :return: the keyword arguments for the responder.
        :raises KeyError: when a required argument is missing.
        :raises ValueError: when a value does not parse.
        """
        return self._decode(self.arguments, box)

    def encodeResponse(self, values: dict[str, Any]) -> dict[bytes, bytes]:
        """Encode a responder's answer.

        :param values: the dict the responder returned.
        :return: the answer box's keys.
        :raises KeyError: when a response value is missing.
        """
        return self._encode(self.response, values)

    def decodeResponse(self, box: dict[bytes, bytes]) -> dict[str, Any]:
        """Decode a received answer.

        :param box: the answer box.
        :return: the response dict.
        :raises KeyError: when a response value is missing.
        :raises ValueError: when a value does not parse.
        """
        return self._decode(self.response, box)


_specs: dict[type, CommandSpec | None] = {}


def specFor(command: type[amp.Command]) -> CommandSpec | None:
    """Return a command's precompiled spec, or ``None`` when stock AMP must
    handle it.

    :param command: a command class.
    :return: its :class:`CommandSpec`, built once; ``None`` for commands with
        argument or response types other than AMP's plain ones, or with a
        special ``commandType``/``responseType`` (``StartTLS``).
    """
    try:
        return _specs[command]
    except KeyError:
        pass
    spec: CommandSpec | None = None
    plain = all(
        type(argument) in _PLAIN for _, argument in command.arguments + command.response
    )
    ordinary = (
        command.commandType is amp.Box
        and command.responseType is amp.Box
        and command.requiresAnswer
    )
    if plain and ordinary:
        spec = CommandSpec(command)
    _specs[command] = spec
    return spec
