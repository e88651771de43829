"""What a region event-loop answers on its control socket.

``status``
    This event-loop's name, RPC port, and every cluster connection (in
    rotation or still in the handshake) with its peer, mode, counters and
    since when (:func:`statusOf`).
``call``
    Call a command on some or all of the clusters connected to this
    event-loop (:func:`callClusters`): arguments arrive as text and are
    parsed by the command's declared argument types
    (:func:`parseArguments`); answers and errors go back as JSON
    (:func:`toJSON`). Calls to several clusters fan out with
    :func:`~maasserver.utils.asynchronous.gather`.

The command is found by name among the :class:`amp.Command` classes this
process has imported (the built-in ones, and those of the extension named by
``MAAS_RPC_REGION_PROTOCOL``), or given as ``module:Command``
(:func:`findCommand`). See :mod:`provisioningserver.control` for the
channel itself.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import importlib
import json
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import ParseResult

from twisted.internet import threads
from twisted.python.failure import Failure

from provisioningserver import settings
from provisioningserver.control import describeConnection
from provisioningserver.twisted.protocols import amp

__all__ = [
    "ArgumentError",
    "callClusters",
    "errorOf",
    "findCommand",
    "parseArguments",
    "regionHandlers",
    "statusOf",
    "toJSON",
]


class ArgumentError(ValueError):
    """A ``call``'s command or arguments do not fit the declaration."""


def _commandClasses() -> list[Any]:
    seen: set[type] = set()
    stack = list(amp.Command.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
    return list(seen)


def findCommand(name: str) -> Any:
    """Find a command by its name (wire or class name), or ``module:Command``.

    :param name: e.g. ``EatCheez`` or ``cheeseboard:AskRegion``.
    :return: the :class:`amp.Command` subclass.
    :raises ArgumentError: when none, or several different ones, match.
    """
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as error:
            raise ArgumentError(f"cannot import {name}: {error}") from None
        if not (isinstance(cls, type) and issubclass(cls, amp.Command)):
            raise ArgumentError(f"{name} is not an amp.Command")
        return cls
    import provisioningserver.rpc.cluster  # noqa: F401 - declares EatCheez & co

    wanted = name.encode("utf-8")
    found = {
        cls
        for cls in _commandClasses()
        if cls.commandName == wanted or cls.__name__ == name
    }
    if not found:
        raise ArgumentError(
            f"no command {name!r} is declared in this event-loop "
            "(name an extension's as module:Command)"
        )
    if len(found) > 1:
        names = ", ".join(sorted(f"{c.__module__}:{c.__name__}" for c in found))
        raise ArgumentError(f"{name!r} is ambiguous: {names}")
    return found.pop()


def _jsonList(value: Any) -> list[Any]:
    items = json.loads(value) if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError("is not a JSON list")
    return items


def _parseValue(argType: Any, value: Any, where: str) -> Any:
    """Turn text (or decoded JSON) into what ``argType`` sends."""
    try:
        if isinstance(argType, amp.Unicode):
            return value if isinstance(value, str) else json.dumps(value)
        if isinstance(argType, amp.String) or type(argType).__name__ == "Bytes":
            if isinstance(value, str) and value.startswith("base64:"):
                return base64.b64decode(value[7:], validate=True)
            return value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if isinstance(argType, amp.Boolean):
            if isinstance(value, bool):
                return value
            try:
                return settings.boolean(str(value))
            except settings.InvalidValue:
                raise ValueError("is not true or false") from None
        if isinstance(argType, amp.Integer):
            return int(value)
        if isinstance(argType, amp.Float):
            return float(value)
        if isinstance(argType, amp.Decimal):
            return decimal.Decimal(str(value))
        if isinstance(argType, amp.DateTime):
            moment = datetime.datetime.fromisoformat(str(value))
            if moment.tzinfo is None:
                raise ValueError("needs a time zone, e.g. 2026-01-01T00:00:00+00:00")
            return moment
        if isinstance(argType, amp.AmpList):
            return [
                parseArguments(argType.subargs, item, f"{where}[{n}]")
                for n, item in enumerate(_jsonList(value))
            ]
        if isinstance(argType, amp.ListOf):
            return [
                _parseValue(argType.elementType, item, f"{where}[{n}]")
                for n, item in enumerate(_jsonList(value))
            ]
        if type(argType).__name__ == "ParsedURL":
            return str(value)
        # StructureAsJSON and types of one's own: JSON when it parses.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value
    except ArgumentError:
        raise
    except (ValueError, TypeError, decimal.InvalidOperation) as error:
        raise ArgumentError(f"{where}={value!r}: {error}") from None


def parseArguments(
    declared: list[tuple[bytes, Any]], given: Mapping[str, Any], where: str = ""
) -> dict[str, Any]:
    """Parse ``name=value`` arguments by their declared types.

    Text becomes what each type sends: ``Unicode`` as is, ``String`` as
    UTF-8 (or ``base64:...``), ``Integer``, ``Float``, ``Decimal``,
    ``Boolean`` (true/false, 1/0), ``DateTime`` (ISO 8601 with a zone);
    ``ListOf`` and ``AmpList`` take JSON lists; other types take JSON when
    the text parses as JSON, else the text.

    :param declared: the command's ``arguments``.
    :param given: argument name → text (or decoded JSON).
    :param where: a prefix for error messages.
    :return: keyword arguments for the call.
    :raises ArgumentError: for an unknown or missing argument, or a value
        its type refuses.
    """
    names = {key.decode("ascii"): argType for key, argType in declared}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ArgumentError(
            f"unknown argument {where}{unknown[0]}; the command takes "
            f"{', '.join(names) or 'none'}"
        )
    parsed = {}
    for name, argType in names.items():
        if name in given:
            parsed[name] = _parseValue(argType, given[name], f"{where}{name}")
        elif not getattr(argType, "optional", False):
            raise ArgumentError(f"missing argument {where}{name}")
    return parsed


def toJSON(value: Any) -> Any:
    """Make an answer JSON-able.

    :param value: a decoded answer (dicts, lists, bytes, dates, ...).
    :return: the same with bytes as text (UTF-8) or ``base64:...``, dates in
        ISO 8601, decimals and URLs as text.
    """
    if isinstance(value, dict):
        return {
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): toJSON(
                v
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [toJSON(v) for v in value]
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode("ascii")
        return (
            text
            if text.isprintable()
            else "base64:" + base64.b64encode(value).decode("ascii")
        )
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, ParseResult):
        return value.geturl()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def errorOf(failure: Failure, command: type) -> dict[str, str]:
    """The error of a failed call, with its wire code.

    :param failure: the failure.
    :param command: the command called (its ``errors`` give the codes).
    :return: ``{"code": ..., "description": ...}``.
    """
    from provisioningserver.rpc.exceptions import CallTimedOut, NoConnectionsAvailable

    error = failure.value
    for cls, code in {
        **getattr(command, "errors", {}),
        **getattr(command, "fatalErrors", {}),
    }.items():
        if isinstance(error, cls):
            return {"code": code.decode("ascii", "replace"), "description": str(error)}
    if isinstance(error, amp.UnhandledCommand):
        return {"code": "UNHANDLED", "description": str(error)}
    if isinstance(error, amp.RemoteAmpError):
        return {
            "code": error.errorCode.decode("ascii", "replace"),
            "description": str(getattr(error, "description", error)),
        }
    if isinstance(error, CallTimedOut):
        return {"code": "TIMEOUT", "description": str(error) or "no answer in time"}
    if isinstance(error, NoConnectionsAvailable):
        return {"code": "NO_CONNECTION", "description": str(error)}
    name = getattr(type(error), "__name__", "Error")
    code = {"NotAuthenticated": "NOT_AUTHENTICATED", "ShuttingDown": "SHUTTING_DOWN"}
    return {"code": code.get(name, name), "description": str(error)}


def statusOf(service: Any) -> dict[str, Any]:
    """This event-loop's status.

    :param service: its :class:`~maasserver.rpc.regionservice.RegionService`.
    :return: ``{"eventloop", "pid", "port", "connections": [...]}``; each
        connection as :func:`~provisioningserver.control.describeConnection`
        with ``cluster`` (the UUID, or ``None`` before it is known) and
        ``state`` (``authenticated`` once in rotation, else ``handshake``).
    """
    import os

    inRotation = {conn for conns in service.connections.values() for conn in conns}
    connections = [
        describeConnection(
            conn,
            cluster=getattr(conn, "ident", None),
            state="authenticated" if conn in inRotation else "handshake",
        )
        for conn in list(service.live)
    ]
    connections.sort(key=lambda c: (str(c["cluster"]), str(c["peer"])))
    return {
        "eventloop": service.eventloop,
        "pid": os.getpid(),
        "port": service.getPort(),
        "connections": connections,
    }


def callClusters(service: Any, request: Mapping[str, Any]) -> Any:
    """Answer a ``call`` request.

    :param service: the :class:`~maasserver.rpc.regionservice.RegionService`.
    :param request: ``command`` (a name), ``arguments`` (name → text),
        ``clusters`` (UUIDs; all connected when missing or ``null``) and
        ``timeout`` (seconds, default 30).
    :return: a Deferred of ``{"eventloop", "command", "results": [...]}``,
        one result per cluster: ``{"cluster", "answer"}`` or ``{"cluster",
        "error": {"code", "description"}}`` (code ``TIMEOUT`` for one that did
        not answer in time), or ``{"error": ...}`` for a bad request.
    """
    from maasserver.utils.asynchronous import gather
    from provisioningserver.rpc.common import Client

    try:
        command = findCommand(str(request.get("command", "")))
        arguments = request.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise ArgumentError("arguments must be a map")
        kwargs = parseArguments(command.arguments, arguments)
        timeout = float(request.get("timeout") or 30.0)
    except (ArgumentError, ValueError) as error:
        return {"error": str(error)}
    wanted = request.get("clusters")
    connected = dict(service.connections)
    uuids = sorted(connected) if wanted is None else [str(u) for u in wanted]
    results: list[dict[str, Any]] = []
    calls = []
    for uuid in uuids:
        conns = connected.get(uuid)
        if not conns:
            results.append(
                {
                    "cluster": uuid,
                    "error": {
                        "code": "NO_CONNECTION",
                        "description": f"cluster {uuid} is not connected to "
                        f"{service.eventloop}",
                    },
                }
            )
            continue
        client = Client(next(iter(conns)))
        calls.append(partial(_callOne, client, uuid, command, kwargs, timeout))

    def fanOut() -> list[dict[str, Any]]:
        answers = gather(calls, timeout=timeout + 1.0)
        done = list(answers)
        for call in answers.timedOut:
            done.append(
                {
                    "cluster": call.args[1],
                    "error": {
                        "code": "TIMEOUT",
                        "description": f"no answer within {timeout} s",
                    },
                }
            )
        return done

    def finish(done: list[dict[str, Any]]) -> dict[str, Any]:
        results.extend(done)
        results.sort(key=lambda r: r["cluster"])
        return {
            "eventloop": service.eventloop,
            "command": command.__name__,
            "results": results,
        }

    if not calls:
        return finish([])
    return threads.deferToThread(fanOut).addCallback(finish)


def _callOne(
    client: Any, uuid: str, command: type, kwargs: dict[str, Any], timeout: float
) -> Any:
    d = client(command, _timeout=timeout, **kwargs)

    def answered(answer: Any) -> dict[str, Any]:
        return {"cluster": uuid, "answer": toJSON(answer)}

    def failed(failure: Failure) -> dict[str, Any]:
        return {"cluster": uuid, "error": errorOf(failure, command)}

    return d.addCallbacks(answered, failed)


def regionHandlers(service: Any) -> dict[str, Any]:
    """The control handlers of a region event-loop.

    :param service: its :class:`~maasserver.rpc.regionservice.RegionService`.
    :return: op → handler, for
        :class:`~provisioningserver.control.ControlService`.
    """
    from provisioningserver import metrics

    return {
        "status": lambda request: statusOf(service),
        "call": partial(callClusters, service),
        "metrics": metrics.snapshot,
    }
