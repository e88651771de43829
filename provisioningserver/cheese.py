"""Cheese rating: the toy domain logic behind the ``EatCheez`` example.

It is deliberately tiny and deterministic, so that a rating computed on a
cluster can be checked anywhere: the same ``(name, origin)`` always rates the
same.
"""

from __future__ import annotations

import hashlib

from provisioningserver.rpc.exceptions import NoSuchCheese

__all__ = ["REFUSED_CHEESES", "rate_cheese"]

#: Names (compared case-insensitively) of cheeses a cluster will not rate.
REFUSED_CHEESES = frozenset({"cheez whiz", "squirty cheese"})


def rate_cheese(name: str, origin: str) -> int:
    """Rate a cheese from 1 to 10.

    :param name: the cheese's name, e.g. ``"Brie"``.
    :param origin: where it comes from, e.g. ``"France"``.
    :return: a rating from 1 to 10, a function of ``name`` and ``origin``
        alone.
    :raises NoSuchCheese: when ``name`` is blank or one of
        :data:`REFUSED_CHEESES`.

    >>> from provisioningserver.cheese import rate_cheese
    >>> rate_cheese("Brie", "France")
    8
    """
    if not name.strip():
        raise NoSuchCheese("a cheese needs a name")
    if name.strip().casefold() in REFUSED_CHEESES:
        raise NoSuchCheese(f"{name} is not cheese")
    digest = hashlib.sha256(f"{name}\0{origin}".encode()).digest()
    return digest[0] % 10 + 1
