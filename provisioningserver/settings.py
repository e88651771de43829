"""Every ``MAAS_RPC_*`` setting, in one table.

:data:`SETTINGS` is the single source of truth for the environment
variables that region and cluster processes read: their names, how their
values are parsed and checked, their defaults, which processes read them,
what they mean and what happens when one trips. The command line's flags
(:func:`addArguments`, :func:`optParameters`) and the settings list in the
documentation (the ``maas-rpc-settings`` directive of ``doc/_ext``) are
generated from it, so neither can drift from the other.

Roles say which processes read a setting:

``region``
    a region event-loop (``maas-rpc eventloop``, ``twistd maas-regiond``,
    and each worker of ``maas-rpc region``);
``cluster``
    a cluster process (``maas-rpc cluster``, ``twistd maas-clusterd``);
``supervisor``
    ``maas-rpc region`` itself, which starts the workers;
``internal``
    set by ``maas-rpc region`` for its workers; never set by hand;
``development``
    read by the test suite, the benchmarks or the docs build only.

Values are checked before anything starts: a malformed one stops the
process with one line naming the variable (or the flag) and what is wrong
(:class:`~provisioningserver.config.ConfigError`). A ``MAAS_RPC_*``
variable that is not in the table draws a warning that names the closest
known one (:func:`unknownVariables`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import math
import os
import uuid as uuid_module
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

__all__ = [
    "ROLES",
    "SETTINGS",
    "InvalidValue",
    "Setting",
    "addArguments",
    "address",
    "boolean",
    "checkEnvironment",
    "environment",
    "classSpec",
    "clusterUUID",
    "databaseURL",
    "helpText",
    "logLevel",
    "number",
    "optParameters",
    "optionOverrides",
    "readFields",
    "readInto",
    "overrides",
    "ports",
    "seconds",
    "setting",
    "settingsFor",
    "text",
    "unknownVariables",
    "url",
    "warnUnknown",
    "wholeNumber",
]

_T = TypeVar("_T")

#: Every role a setting may have (see the module's docstring).
ROLES = ("region", "cluster", "supervisor", "internal", "development")

#: Prefixes of the variables this table owns.
PREFIXES = ("MAAS_RPC_",)


class InvalidValue(ValueError):
    """A value a parser refuses; the message says why, without the name."""


# Parsers: text in, value out, or InvalidValue with the reason.


def number(text: str) -> float:
    """Parse a finite number.

    :param text: the value.
    :return: the number.
    :raises InvalidValue: when it is not a finite number.
    """
    try:
        value = float(text)
    except ValueError:
        raise InvalidValue("is not a number") from None
    if not math.isfinite(value):
        raise InvalidValue("is not a finite number")
    return value


def seconds(text: str) -> float:
    """Parse a positive number of seconds.

    :param text: the value.
    :return: the seconds.
    :raises InvalidValue: when it is not a positive finite number.
    """
    value = number(text)
    if value <= 0:
        raise InvalidValue("must be greater than zero")
    return value


def wholeNumber(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """Make a parser of whole numbers in a range.

    :param minimum: the smallest allowed value.
    :param maximum: the largest allowed value, or ``None``.
    :return: the parser.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise InvalidValue("is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise InvalidValue(f"is out of range ({bound})")
        return value

    return parse


def boolean(text: str) -> bool:
    """Parse ``0``/``1`` (also ``no``/``yes``, ``false``/``true``, ``off``/``on``).

    :param text: the value.
    :return: the truth value.
    :raises InvalidValue: for anything else.
    """
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise InvalidValue("is not 0 or 1")


def ports(text: str) -> range:
    """Parse ``N``, ``N-M``, or ``0`` for any free port.

    :param text: the value.
    :return: the ports to try, in order.
    :raises InvalidValue: when malformed or outside 0..65535.
    """
    spec = text.strip()
    try:
        if "-" in spec:
            first_text, last_text = spec.split("-", 1)
            first, last = int(first_text), int(last_text)
        else:
            first = last = int(spec)
    except ValueError:
        raise InvalidValue("is not a port, a range N-M, or 0") from None
    if not (0 <= first <= 65535 and 0 <= last <= 65535):
        raise InvalidValue("ports must be within 0..65535")
    if last < first:
        raise InvalidValue("the range is empty")
    if first == 0 and last != 0:
        raise InvalidValue("0 means any port and takes no range")
    return range(first, last + 1)


def address(text: str) -> str:
    """Parse an IP address.

    :param text: the value.
    :return: the address as given.
    :raises InvalidValue: when it is not an IPv4 or IPv6 address.
    """
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidValue("is not an IP address") from None
    return text.strip()


def url(text: str) -> str:
    """Parse an ``http://`` or ``https://`` URL with a host.

    :param text: the value.
    :return: the URL without a trailing slash.
    :raises InvalidValue: when it is not such a URL.
    """
    value = text.strip()
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidValue("is not an http:// or https:// URL")
    try:
        parsed.port  # noqa: B018 - validates the port
    except ValueError:
        raise InvalidValue("has a malformed port") from None
    return value.rstrip("/")


def databaseURL(text: str) -> str:
    """Parse a PostgreSQL URL.

    :param text: the value.
    :return: the URL.
    :raises InvalidValue: when it does not start with ``postgresql://`` or
        ``postgres://``.
    """
    value = text.strip()
    if not value.startswith(("postgresql://", "postgres://")):
        raise InvalidValue("must start with postgresql:// or postgres://")
    return value


def clusterUUID(text: str) -> str:
    """Parse a UUID.

    :param text: the value.
    :return: its canonical form.
    :raises InvalidValue: when it is not a UUID.
    """
    try:
        return str(uuid_module.UUID(text.strip()))
    except ValueError:
        raise InvalidValue("is not a UUID") from None


def classSpec(text: str) -> str:
    """Parse ``package.module:ClassName`` (imported later, where used).

    :param text: the value.
    :return: the value, stripped.
    :raises InvalidValue: when it is not of that form.
    """
    module, _, name = text.strip().partition(":")
    if not module or not name:
        raise InvalidValue("is not of the form module:Class")
    return text.strip()


def text(value: str) -> str:
    """Accept any text (a path, a file name).

    :param value: the value.
    :return: the value, stripped.
    :raises InvalidValue: when it is empty after stripping.
    """
    if not value.strip():
        raise InvalidValue("is empty")
    return value.strip()


def logLevel(value: str) -> str:
    """Parse a log level name.

    :param value: ``debug``, ``info``, ``warn`` or ``error``.
    :return: the name, lower case.
    :raises InvalidValue: for another name.
    """
    name = value.strip().lower()
    if name == "warning":
        name = "warn"
    if name not in ("debug", "info", "warn", "error"):
        raise InvalidValue("is not one of debug, info, warn, error")
    return name


@dataclass(frozen=True)
class Setting:
    """One ``MAAS_RPC_*`` environment variable.

    :ivar name: the variable.
    :ivar parse: text to value; raises :class:`InvalidValue`.
    :ivar kind: what the value is, for people (``seconds``, ``path``, ...).
    :ivar default: the default as documented (text); ``""`` for unset.
    :ivar roles: the processes that read it (see :data:`ROLES`).
    :ivar help: what it means, one or two sentences, for users.
    :ivar trips: what happens when it trips (a limit reached, a timeout
        expired), or ``""``.
    :ivar flag: its command-line flag, without the dashes; derived from
        the name when ``None``; ``""`` for no flag.
    """

    name: str
    parse: Callable[[str], Any]
    kind: str
    default: str
    roles: frozenset[str]
    help: str
    trips: str = ""
    flag: str | None = None

    @property
    def option(self) -> str:
        """The flag's name without dashes (``""`` when it has none)."""
        if self.flag is not None:
            return self.flag
        if self.roles <= {"internal", "development"}:
            return ""
        stem = self.name.removeprefix("MAAS_RPC_").removeprefix("MAAS_")
        return stem.lower().replace("_", "-")

    def value(self, environ: Mapping[str, str], default: Any = None) -> Any:
        """Read and parse this setting from an environment.

        :param environ: the environment.
        :param default: the value when it is unset or empty.
        :return: the parsed value, or ``default``.
        :raises provisioningserver.config.ConfigError: when the value is
            malformed; the message names the variable.
        """
        raw = environ.get(self.name, "")
        if not raw.strip():
            return default
        try:
            return self.parse(raw)
        except InvalidValue as error:
            from provisioningserver.config import ConfigError

            raise ConfigError(self.describe(raw, str(error))) from None

    def describe(self, raw: str, reason: str, flag: bool = False) -> str:
        """Say what is wrong with a value, naming the variable (or flag).

        :param raw: the value.
        :param reason: why it is refused.
        :param flag: whether the value came from the command-line flag.
        :return: e.g. ``MAAS_RPC_WORKERS='two' is not a whole number``, or
            ``--workers='two' (MAAS_RPC_WORKERS) is not a whole number``.
        """
        name = f"--{self.option}" if flag and self.option else self.name
        value = "" if self.kind == "database URL" else f"={raw.strip()!r}"
        # A database URL may hold a password: it is not repeated.
        if name != self.name:
            return f"{name}{value} ({self.name}) {reason}"
        return f"{name}{value} {reason}"


def _s(
    name: str,
    parse: Callable[[str], Any],
    kind: str,
    default: str,
    roles: str,
    help: str,  # noqa: A002 - the column's name
    trips: str = "",
    flag: str | None = None,
) -> Setting:
    return Setting(
        name, parse, kind, default, frozenset(roles.split()), help, trips, flag
    )


_count = wholeNumber(minimum=1)

#: The table: every setting, in the order the documentation lists them.
SETTINGS: tuple[Setting, ...] = (
    # Where things are.
    _s(
        "MAAS_RPC_DATA_DIR",
        text,
        "path",
        "~/.local/share/maas-rpc/<role>",
        "region cluster supervisor",
        "The data directory. A region keeps the shared secret, the SQLite "
        "advertisement store and its control sockets there, shared by every "
        "event-loop on the host; a cluster keeps its UUID (and by default "
        "its copy of the secret) and its control socket.",
    ),
    _s(
        "MAAS_RPC_SECRET_FILE",
        text,
        "path",
        "<data dir>/secret",
        "region cluster supervisor",
        "The shared secret's file. The first region process on a host creates "
        "it; give each cluster a copy.",
    ),
    _s(
        "MAAS_URL",
        url,
        "URL",
        "http://localhost:5240/MAAS",
        "cluster",
        "Where the region serves discovery (the cluster polls <MAAS_URL>/rpc/).",
        flag="maas-url",
    ),
    _s(
        "MAAS_RPC_CLUSTER_UUID",
        clusterUUID,
        "UUID",
        "generated once and kept",
        "cluster",
        "This cluster's UUID; when unset, one is generated the first time and "
        "kept in the data directory.",
        flag="uuid",
    ),
    # Region: listening and advertising.
    _s(
        "MAAS_RPC_WORKERS",
        _count,
        "count",
        "1",
        "supervisor",
        "How many event-loop processes maas-rpc region runs.",
    ),
    _s(
        "MAAS_RPC_HTTP_PORT",
        wholeNumber(0, 65535),
        "port",
        "5240",
        "region supervisor",
        "The discovery (web) port. maas-rpc region binds it once and hands "
        "it to its workers; a port in use is refused. 0: any free port.",
    ),
    _s(
        "MAAS_RPC_PORTS",
        ports,
        "ports",
        "5250-5259",
        "region",
        "RPC ports to try, first free wins: N, N-M, or 0 for any free port.",
        "An event-loop that finds none free does not start (maas-rpc region "
        "stops with that line).",
    ),
    _s(
        "MAAS_RPC_BIND",
        address,
        "address",
        "all interfaces",
        "region supervisor",
        "One address to listen on.",
    ),
    _s(
        "MAAS_RPC_ADVERTISE_INTERVAL",
        seconds,
        "seconds",
        "60",
        "region",
        "Seconds between refreshes of an event-loop's advertisement.",
    ),
    _s(
        "MAAS_RPC_ADVERTISE_EXPIRY",
        seconds,
        "seconds",
        "300",
        "region",
        "Seconds after which an advertisement that was not refreshed is deleted.",
        "Clusters stop connecting to that event-loop.",
    ),
    _s(
        "MAAS_RPC_DATABASE_URL",
        databaseURL,
        "database URL",
        "unset: SQLite in the data directory",
        "region",
        "A postgresql:// URL: keep the advertisement store in that database, "
        "shared by event-loops on several hosts (needs maas-rpc[postgresql]); "
        "libpq's PG* variables supply what the URL leaves out.",
    ),
    _s(
        "MAAS_RPC_STATUS",
        boolean,
        "0/1",
        "0",
        "region",
        "1 to keep status/<pid>.json in the data directory: each "
        "event-loop's connected clusters (maas-rpc status asks the control "
        "socket instead).",
    ),
    _s(
        "MAAS_RPC_REGION_PROTOCOL",
        classSpec,
        "module:Class",
        "RegionServer",
        "region",
        "A RegionServer subclass with responders of your own.",
        flag="protocol",
    ),
    _s(
        "MAAS_RPC_CLUSTER_PROTOCOL",
        classSpec,
        "module:Class",
        "ClusterClient",
        "cluster",
        "A ClusterClient subclass with responders of your own.",
        flag="protocol",
    ),
    # Timing.
    _s(
        "MAAS_RPC_HANDSHAKE_TIMEOUT",
        seconds,
        "seconds",
        "30",
        "region cluster",
        "Seconds a connection may take to authenticate and register.",
        "The connection is dropped and logged; the cluster tries again.",
    ),
    _s(
        "MAAS_RPC_CONNECT_TIMEOUT",
        seconds,
        "seconds",
        "10",
        "cluster",
        "Seconds for one TCP connection attempt (and one discovery request).",
        "The attempt fails; the next poll tries again.",
    ),
    _s(
        "MAAS_RPC_POLL_DISCONNECTED",
        seconds,
        "seconds",
        "2",
        "cluster",
        "Seconds between discovery polls while connected to no event-loop.",
    ),
    _s(
        "MAAS_RPC_POLL_PARTIAL",
        seconds,
        "seconds",
        "10",
        "cluster",
        "Seconds between discovery polls while some advertised event-loops "
        "are not connected.",
    ),
    _s(
        "MAAS_RPC_POLL_CONNECTED",
        seconds,
        "seconds",
        "30",
        "cluster",
        "Seconds between discovery polls while every advertised event-loop "
        "is connected.",
    ),
    _s(
        "MAAS_RPC_KEEPALIVE_INTERVAL",
        seconds,
        "seconds",
        "30",
        "cluster",
        "Seconds between pings on each region connection.",
    ),
    _s(
        "MAAS_RPC_KEEPALIVE_TIMEOUT",
        seconds,
        "seconds",
        "10",
        "cluster",
        "Seconds a ping may take.",
        "The connection is dropped and replaced.",
    ),
    _s(
        "MAAS_RPC_IDLE_TIMEOUT",
        seconds,
        "seconds",
        "90",
        "region",
        "Seconds after which a cluster connection the region has heard "
        "nothing from is dropped (clusters ping every 30).",
        "The connection is dropped; the cluster reconnects.",
    ),
    _s(
        "MAAS_RPC_DRAIN_TIMEOUT",
        seconds,
        "seconds",
        "10",
        "region cluster",
        "On SIGTERM, seconds to let calls in progress finish (new ones are "
        "refused with SHUTTING_DOWN) before connections are closed.",
        "Calls still in progress then fail on the caller's side with a lost "
        "connection.",
    ),
    # Security.
    _s(
        "MAAS_RPC_TLS_CA",
        text,
        "path",
        "unset",
        "region cluster",
        "CA certificate (PEM) for mutual TLS; with MAAS_RPC_TLS_CERT and "
        "MAAS_RPC_TLS_KEY, all three or none.",
    ),
    _s(
        "MAAS_RPC_TLS_CERT",
        text,
        "path",
        "unset",
        "region cluster",
        "This process's certificate (PEM) for mutual TLS.",
    ),
    _s(
        "MAAS_RPC_TLS_KEY",
        text,
        "path",
        "unset",
        "region cluster",
        "Its private key (PEM).",
    ),
    _s(
        "MAAS_RPC_ALLOW_LEGACY_PEERS",
        boolean,
        "0/1",
        "0",
        "region cluster",
        "1 to accept MAAS and stock-AMP peers, which speak the plain "
        "handshake without the secure channel (logged loudly).",
        "Without it, such a peer is refused with one line naming this variable.",
    ),
    # Limits.
    _s(
        "MAAS_RPC_MAX_UNAUTHENTICATED",
        _count,
        "count",
        "100",
        "region",
        "Connections from one address that may be in the handshake at once.",
        "Further connections from that address are refused (logged) until "
        "some complete.",
    ),
    _s(
        "MAAS_RPC_MAX_UNAUTHENTICATED_TOTAL",
        _count,
        "count",
        "2000",
        "region",
        "Connections from all addresses that may be in the handshake at once.",
        "Further connections are closed at once (logged) until some complete.",
    ),
    _s(
        "MAAS_RPC_MAX_UNAUTHENTICATED_BYTES",
        wholeNumber(minimum=65536),
        "bytes",
        "33554432 (32 MiB)",
        "region",
        "Bytes that all connections in the handshake may hold in their "
        "buffers together.",
        "The connection whose data crosses it is dropped (logged).",
    ),
    _s(
        "MAAS_RPC_MAX_OUTSTANDING",
        _count,
        "count",
        "1000",
        "region cluster",
        "Commands from one connection that may be in progress at once.",
        "Further commands are refused with an error until some finish.",
    ),
    _s(
        "MAAS_RPC_MAX_UNSENT",
        wholeNumber(minimum=65536),
        "bytes",
        "67108864 (64 MiB)",
        "region cluster",
        "Bytes that may wait in one connection's send buffer while the peer "
        "does not read.",
        "The connection is dropped and logged.",
    ),
    _s(
        "MAAS_RPC_MAX_VALUE",
        wholeNumber(minimum=65535),
        "bytes",
        "16777216 (16 MiB)",
        "region cluster",
        "The largest argument or answer value sent (in chunks, to maas-rpc peers).",
        "The call is refused before anything is sent (ArgumentTooLarge).",
    ),
    _s(
        "MAAS_RPC_MAX_BOX",
        wholeNumber(minimum=65535),
        "bytes",
        "33554432 (32 MiB)",
        "region cluster",
        "The most one received call or answer may hold, chunks included "
        "(64 KiB before authentication).",
        "The connection is dropped and logged.",
    ),
    _s(
        "MAAS_RPC_MAX_KEYS",
        wholeNumber(minimum=16),
        "count",
        "1024",
        "region cluster",
        "Keys one received call or answer may hold from an authenticated peer "
        "(32 before authentication).",
        "The connection is dropped and logged.",
    ),
    _s(
        "MAAS_RPC_MAX_UNAUTHENTICATED_BOX",
        wholeNumber(minimum=4096),
        "bytes",
        "65536 (64 KiB)",
        "region cluster",
        "The most one received box may hold from a peer that has not completed "
        "the handshake (each entry counts 128 bytes of overhead).",
        "The connection is dropped and logged.",
    ),
    _s(
        "MAAS_RPC_MAX_UNAUTHENTICATED_KEYS",
        wholeNumber(minimum=8),
        "count",
        "32",
        "region cluster",
        "Keys one received box may hold from a peer that has not completed the "
        "handshake.",
        "The connection is dropped and logged.",
    ),
    _s(
        "MAAS_RPC_MAX_UNAUTHENTICATED_ASKS",
        wholeNumber(minimum=2),
        "count",
        "4",
        "region cluster",
        "Commands a peer that has not completed the handshake may have in "
        "progress at once.",
        "The connection is dropped and logged.",
    ),
    _s(
        "MAAS_RPC_MAX_UNAUTHENTICATED_LIST_ITEMS",
        wholeNumber(minimum=1),
        "count",
        "256",
        "region cluster",
        "Items a list argument (such as Register's networks) may have in a "
        "command from a peer that has not completed the handshake; counted "
        "before anything is decoded.",
        "The connection is dropped and logged.",
    ),
    # Discovery (cluster) and its web server (region).
    _s(
        "MAAS_RPC_DISCOVERY_TIMEOUT",
        seconds,
        "seconds",
        "20",
        "cluster",
        "How long one fetch of the region's discovery document may take, from "
        "connecting to its last byte; bytes arriving do not extend it.",
        "The fetch is abandoned and logged (at most once a minute); the "
        "cluster keeps connecting to the event-loops it last knew.",
    ),
    _s(
        "MAAS_RPC_DISCOVERY_MAX_BYTES",
        wholeNumber(minimum=1024),
        "bytes",
        "1048576 (1 MiB)",
        "cluster",
        "The largest discovery document read.",
        "The fetch is abandoned as soon as the document is known to be larger, "
        "and logged; the cluster keeps the event-loops it last knew.",
    ),
    _s(
        "MAAS_RPC_DISCOVERY_MAX_EVENTLOOPS",
        _count,
        "count",
        "256",
        "cluster",
        "Event-loops used from one discovery document.",
        "The rest are dropped, in one log line (at most once a minute).",
    ),
    _s(
        "MAAS_RPC_DISCOVERY_MAX_ADDRESSES",
        _count,
        "count",
        "32",
        "cluster",
        "Addresses used for one event-loop of a discovery document.",
        "The rest are dropped, in one log line (at most once a minute).",
    ),
    _s(
        "MAAS_RPC_CONNECT_CONCURRENCY",
        _count,
        "count",
        "16",
        "cluster",
        "Connection attempts to region event-loops in progress at once.",
        "Further attempts wait their turn.",
    ),
    _s(
        "MAAS_RPC_HTTP_TIMEOUT",
        seconds,
        "seconds",
        "10",
        "region",
        "How long a discovery HTTP connection may live, from accept to close: "
        "the request must arrive and be answered within it; bytes arriving "
        "do not extend it.",
        "The connection is aborted (logged at most once a minute).",
    ),
    _s(
        "MAAS_RPC_HTTP_MAX_HEADERS",
        _count,
        "count",
        "32",
        "region",
        "Headers one discovery HTTP request may have.",
        "The request is answered 400 and the connection closed.",
    ),
    _s(
        "MAAS_RPC_HTTP_MAX_HEADER_BYTES",
        wholeNumber(minimum=256),
        "bytes",
        "8192",
        "region",
        "Bytes of request line and headers one discovery HTTP request may have.",
        "The request is answered 400 and the connection closed.",
    ),
    _s(
        "MAAS_RPC_HTTP_MAX_CONNECTIONS",
        _count,
        "count",
        "256",
        "region",
        "Discovery HTTP connections open at once, from all addresses.",
        "Further connections are closed as soon as they are accepted (logged "
        "at most once a minute).",
    ),
    _s(
        "MAAS_RPC_HTTP_MAX_PER_ADDRESS",
        _count,
        "count",
        "64",
        "region",
        "Discovery HTTP connections open at once from one address.",
        "Further connections from that address are closed as soon as they are "
        "accepted (logged at most once a minute).",
    ),
    # Operating.
    _s(
        "MAAS_RPC_METRICS_PORT",
        wholeNumber(0, 65535),
        "port",
        "unset: no metrics",
        "region cluster supervisor",
        "Serve Prometheus metrics on http://127.0.0.1:<port>/metrics (needs "
        "maas-rpc[metrics]). Under maas-rpc region the supervisor serves the "
        "sum of its workers' metrics, gathered over their control sockets.",
    ),
    _s(
        "MAAS_RPC_CONTROL",
        boolean,
        "0/1",
        "1",
        "region cluster",
        "0 to open no control socket (then maas-rpc status and call cannot "
        "reach this process).",
    ),
    _s(
        "MAAS_RPC_LOG_LEVEL",
        logLevel,
        "level",
        "info",
        "region cluster supervisor",
        "The lowest level logged: debug, info, warn or error.",
    ),
    # Set by maas-rpc region for its workers.
    _s(
        "MAAS_RPC_HTTP_FD",
        wholeNumber(minimum=0),
        "file descriptor",
        "unset",
        "internal",
        "The listening discovery socket a worker adopts instead of binding "
        "MAAS_RPC_HTTP_PORT.",
    ),
    _s(
        "MAAS_RPC_NOTIFY_FD",
        wholeNumber(minimum=0),
        "file descriptor",
        "unset",
        "internal",
        "Where a worker tells maas-rpc region that it serves, or why it "
        "could not start.",
    ),
    _s(
        "MAAS_RPC_WORKER",
        text,
        "name",
        "unset",
        "internal",
        "The worker's name (eventloop-N); its log events go to maas-rpc "
        "region as JSON lines.",
    ),
    # Development.
    _s(
        "MAAS_RPC_TEST_DATABASE_URL",
        databaseURL,
        "database URL",
        "unset: PostgreSQL tests skip",
        "development",
        "A PostgreSQL database the test suite may use.",
    ),
    _s(
        "MAAS_RPC_FUZZ_SCALE",
        number,
        "number",
        "1",
        "development",
        "Scales the number of wire-fuzzing cases in the test suite.",
    ),
    _s(
        "MAAS_RPC_BENCH_KEEP",
        text,
        "flag",
        "unset",
        "development",
        "Keep the benchmarks' temporary files.",
    ),
    _s(
        "MAAS_RPC_DOCS_INVENTORIES",
        text,
        "word",
        "unset",
        "development",
        "required: a missing local intersphinx inventory fails the docs build.",
    ),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def setting(name: str) -> Setting:
    """Return the setting named ``name``.

    :param name: the variable.
    :return: the :class:`Setting`.
    :raises KeyError: when there is none.
    """
    return _BY_NAME[name]


def readFields(
    cls: type, environ: Mapping[str, str], fields: Mapping[str, str]
) -> dict[str, Any]:
    """Read the settings ``fields`` names, parsed as the table says.

    A field whose variable is unset or empty gets the dataclass's own
    default, so the dataclass stays the one place a default is written down
    (the table's ``default`` is its documentation; a test compares the two).

    :param cls: a dataclass; the fields named must have defaults.
    :param environ: the environment.
    :param fields: field name to variable name.
    :return: field name to value, as keyword arguments for ``cls``.
    :raises provisioningserver.config.ConfigError: for the first malformed
        value, naming its variable.
    """
    declared = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, variable in fields.items():
        spec = declared[name]
        default = (
            spec.default
            if spec.default is not dataclasses.MISSING
            else spec.default_factory()  # type: ignore[operator]
        )
        values[name] = setting(variable).value(environ, default)
    return values


def readInto(
    cls: type[_T], environ: Mapping[str, str], fields: Mapping[str, str]
) -> _T:
    """Build ``cls`` from the settings ``fields`` names (see
    :func:`readFields`).

    :param cls: a dataclass whose fields all have defaults.
    :param environ: the environment.
    :param fields: field name to variable name.
    :return: the instance.
    :raises provisioningserver.config.ConfigError: for the first malformed
        value, naming its variable.
    """
    return cls(**readFields(cls, environ, fields))


def environment(
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, str | None],
    roles: Iterable[str],
) -> dict[str, str]:
    """The environment a process of ``roles`` reads, checked.

    :param environ: the environment; ``os.environ`` when ``None``.
    :param overrides: values that take precedence (the CLI's flags), by
        variable name; ``None`` values are ignored.
    :param roles: the roles of the process about to start.
    :return: the merged environment.
    :raises provisioningserver.config.ConfigError: for the first malformed
        value (see :func:`checkEnvironment`).
    """
    env = dict(os.environ if environ is None else environ)
    env.update({k: v for k, v in overrides.items() if v is not None})
    checkEnvironment(env, roles)
    return env


def settingsFor(*roles: str) -> list[Setting]:
    """Return the settings any of ``roles`` reads, in the table's order.

    :param roles: role names (see :data:`ROLES`).
    :return: the settings.
    """
    wanted = set(roles)
    return [s for s in SETTINGS if s.roles & wanted]


def checkEnvironment(environ: Mapping[str, str], roles: Iterable[str]) -> None:
    """Parse every setting ``roles`` read that ``environ`` sets.

    :param environ: the environment.
    :param roles: the roles of the process about to start.
    :raises provisioningserver.config.ConfigError: for the first malformed
        value, naming its variable.
    """
    for s in settingsFor(*roles):
        s.value(environ)


def unknownVariables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Find ``MAAS_RPC_*`` variables that are no setting (a typo, usually).

    :param environ: the environment.
    :return: ``(variable, closest known setting or None)``, sorted.
    """
    # Compared without the prefix every name shares, which would make any
    # two look alike.
    stems = {
        s.name.removeprefix("MAAS_RPC_"): s.name
        for s in SETTINGS
        if s.roles != {"internal"}
    }
    found = []
    for name in sorted(environ):
        if name.startswith(PREFIXES) and name not in _BY_NAME:
            stem = name.removeprefix("MAAS_RPC_")
            close = difflib.get_close_matches(stem, list(stems), n=1, cutoff=0.75)
            found.append((name, stems[close[0]] if close else None))
    return found


def warnUnknown(environ: Mapping[str, str], prog: str, stream: Any) -> None:
    """Print one warning line per unknown ``MAAS_RPC_*`` variable.

    :param environ: the environment.
    :param prog: the program's name, to start each line with.
    :param stream: where to print (standard error).
    """
    for name, close in unknownVariables(environ):
        hint = f"; did you mean {close}?" if close else ""
        print(
            f"{prog}: warning: {name} is not a maas-rpc setting (ignored){hint}",
            file=stream,
            flush=True,
        )


def _argumentType(s: Setting) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            s.parse(value)
        except InvalidValue as error:
            shown = "" if s.kind == "database URL" else f"{value!r} "
            raise argparse.ArgumentTypeError(f"{shown}{error} ({s.name})") from None
        return value

    check.__name__ = s.kind
    return check


def helpText(s: Setting) -> str:
    """The flag's help: what it means, its variable and its default.

    :param s: the setting.
    :return: text for ``--help`` (``%`` escaped for argparse).
    """
    default = f"; default {s.default}" if s.default else ""
    return f"{s.help} [{s.name}{default}]".replace("%", "%%")


def addArguments(parser: argparse.ArgumentParser, *roles: str) -> None:
    """Add a flag for every setting ``roles`` read.

    Each flag's value is checked by the setting's parser (argparse reports a
    bad one as ``argument --flag: ...``) and stored, as text, under the
    variable's name; flags left out are ``None``. Nothing is read from the
    environment here, so a malformed variable never breaks ``--help``.

    :param parser: the (sub)command's parser.
    :param roles: the roles of the process it starts.
    """
    group = parser.add_argument_group(
        "settings",
        "Each flag sets the environment variable in brackets, and wins over it.",
    )
    seen = set()
    for s in settingsFor(*roles):
        if not s.option or s.option in seen:
            continue
        seen.add(s.option)
        group.add_argument(
            f"--{s.option}",
            dest=s.name,
            metavar=s.kind.upper().replace(" ", "_").replace("/", "|"),
            type=_argumentType(s),
            default=None,
            help=helpText(s),
        )


def overrides(namespace: argparse.Namespace) -> dict[str, str]:
    """The settings given as flags, by variable name.

    :param namespace: what :meth:`argparse.ArgumentParser.parse_args` returned
        for a parser set up by :func:`addArguments`.
    :return: variable name → text, for the flags given.
    """
    return {
        name: value
        for name, value in vars(namespace).items()
        if name in _BY_NAME and value is not None
    }


def optParameters(*roles: str) -> list[list[Any]]:
    """twistd-style ``optParameters`` for every setting ``roles`` read.

    :param roles: the roles of the process.
    :return: ``[[flag, None, None, help], ...]``.
    """
    params: list[list[Any]] = []
    seen = set()
    for s in settingsFor(*roles):
        if not s.option or s.option in seen:
            continue
        seen.add(s.option)
        params.append([s.option, None, None, f"{s.help} [{s.name}]"])
    return params


def optionOverrides(options: Mapping[str, Any], *roles: str) -> dict[str, str]:
    """The settings given as twistd flags, by variable name.

    :param options: parsed :class:`twisted.python.usage.Options`.
    :param roles: the roles used for :func:`optParameters`.
    :return: variable name → text.
    :raises provisioningserver.config.ConfigError: when a flag's value is
        malformed; the message names the flag.
    """
    from provisioningserver.config import ConfigError

    found: dict[str, str] = {}
    for s in settingsFor(*roles):
        if not s.option:
            continue
        value = options.get(s.option)
        if value is None:
            continue
        try:
            s.parse(value)
        except InvalidValue as error:
            raise ConfigError(s.describe(value, str(error), flag=True)) from None
        found[s.name] = value
    return found
