"""The fault tests' proxy (``tests/faults/proxy.py``), able to flip one byte
in flight and to record a connection's bytes.

:class:`TamperProxy` is a :class:`FaultProxy` whose connection pairs can
change one byte of the next chunk written to one side
(:meth:`TamperProxy.flipNext`), and record every chunk of a pair in order
(:attr:`TamperProxy.recorded`), for replaying it later.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_name = "maas_rpc_faults_proxy"
if _name not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        _name, Path(__file__).resolve().parent.parent / "faults" / "proxy.py"
    )
    assert _spec is not None and _spec.loader is not None
    sys.modules[_name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_name])
proxy = sys.modules[_name]

DOWNSTREAM = proxy.DOWNSTREAM
UPSTREAM = proxy.UPSTREAM

__all__ = ["DOWNSTREAM", "UPSTREAM", "Flip", "TamperProxy"]


@dataclass(frozen=True)
class Flip:
    """A byte the proxy changed.

    :ivar pair: the connection pair's number.
    :ivar to: the side it was written to (:data:`DOWNSTREAM`: the cluster).
    :ivar size: the chunk's length.
    :ivar index: the byte's position in the chunk.
    :ivar before: its value before.
    :ivar after: its value after.
    """

    pair: int
    to: str
    size: int
    index: int
    before: int
    after: int


class _TamperPair(proxy._Pair):
    def received(self, side: Any, data: bytes) -> None:
        owner = self.proxy
        to = self.other(side.side)
        owner.recorded.setdefault(self.number, []).append((to, data))
        armed = owner._armed.get(to)
        index = None
        if armed is not None:
            position, mask = armed
            index = position(data) if callable(position) else position
        if index is not None:
            del owner._armed[to]
            if index < 0:
                index += len(data)
            changed = bytearray(data)
            changed[index] ^= mask(data[index]) if callable(mask) else mask
            owner.flips.append(
                Flip(self.number, to, len(data), index, data[index], changed[index])
            )
            data = bytes(changed)
        super().received(side, data)


class TamperProxy(proxy.FaultProxy):
    """A :class:`FaultProxy` that can flip a byte and records every pair.

    :ivar recorded: pair number → ``[(to, chunk), ...]``, every chunk as it
        came, in order, ``to`` being the side it was written to.
    :ivar flips: the :class:`Flip` made, in order.
    """

    def __init__(self, target: tuple[str, int], *, reactor: Any = None) -> None:
        super().__init__(target, reactor=reactor)
        self.recorded: dict[int, list[tuple[str, bytes]]] = {}
        self.flips: list[Flip] = []
        self._armed: dict[str, tuple[Any, Any]] = {}

    def _newPair(self) -> Any:
        pair = _TamperPair(self, next(self._numbers))
        self._pairs[pair.number] = pair
        return pair

    def flipNext(self, to: str, position: Any, mask: Any = 0x01) -> None:
        """XOR one byte of the next chunk written to side ``to`` with
        ``mask``, once.

        :param to: :data:`DOWNSTREAM` (towards the cluster) or
            :data:`UPSTREAM` (towards the region).
        :param position: the byte's index (negative from the end), or a
            function of the chunk that returns it, or ``None`` to wait for a
            later chunk.
        :param mask: the bits to flip, or a function of the byte's value
            that returns them.
        """
        self._inReactor(self._armed.__setitem__, to, (position, mask))

    def armed(self) -> bool:
        """Whether a flip is still waiting for its chunk."""
        return bool(self._inReactor(len, self._armed))

    def openPairNumbers(self) -> list[int]:
        """The numbers of the pairs still open."""
        return sorted(self._inReactor(lambda: list(self._pairs)))
