"""Masked weights kept dense for the masks in use: ``W * M`` built once per (layer, mask), then plain dense GEMMs.

The masked-matmul schedules re-apply the bits on every call, which costs a read of ``W`` that a small
GEMM cannot hide (up to 1.1-1.4x a dense ``F.linear`` on 2 CPU cores at 50-250 frames). For the few
masks a box serves most, keeping ``W * M`` dense makes each call exactly a dense GEMM, at the price of a
dense copy of every masked layer per mask (wav2vec2-base's FFN: 226 MB per mask in float32; the bundled
model: 8 MB). The copies live within a byte budget; a copy goes when its mask's bits are freed (the mask
was evicted or replaced), so it can never outlive the mask it was built from.

Admission never thrashes: a new copy may push out only copies unused for ``min_idle_s``. When the budget
is full of copies in use, the new mask's calls run the masked schedules instead (as with no budget)
rather than rebuilding copies on every call, which would cost more than masking on the fly. With
``min_idle_s=0`` it is a plain least-recently-used cache.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

MIN_IDLE_S = 10.0  # a copy unused this long may make room for another mask's


@dataclass
class _Copy:
    bits: weakref.ref[torch.Tensor]
    dense: torch.Tensor  # [N, K]
    last_used: float


class MaterializedWeights:
    """``W * M`` per packed-bits tensor (one mask's bits for one layer), within ``budget_bytes``."""

    def __init__(
        self, budget_bytes: int, min_idle_s: float = MIN_IDLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget_bytes = budget_bytes
        self.min_idle_s = min_idle_s
        self.clock = clock
        self.bytes = 0
        self._items: OrderedDict[int, _Copy] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(
        self, weight: torch.Tensor, bits: torch.Tensor, build: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor | None:
        """The dense ``W * M [N, K]`` for ``bits`` (built by ``build(weight, bits)`` on a miss), or ``None``
        when it cannot be kept: larger than the budget, or the budget is held by copies in use."""
        size = weight.numel() * weight.element_size()
        if size > self.budget_bytes:
            return None
        key = id(bits)
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry.bits() is bits:
                entry.last_used = self.clock()
                self._items.move_to_end(key)
                return entry.dense
            self._drop(key)  # a copy for freed bits whose id was reused
            if not self._room_for(size):
                return None
        dense = build(weight, bits)  # [N, K]
        with self._lock:
            self._drop(key)
            if not self._room_for(size):  # another thread took the room meanwhile
                return None
            self._items[key] = _Copy(weakref.ref(bits), dense, self.clock())
            self.bytes += size
        weakref.finalize(bits, self._forget, key, weakref.ref(dense))
        return dense

    def _room_for(self, size: int) -> bool:
        """Drop idle copies, oldest use first, until ``size`` more bytes fit; whether they do. Called with
        the lock held. The order is the order of use, so the idle copies are a prefix: no scan."""
        now = self.clock()
        while self.bytes + size > self.budget_bytes and self._items:
            key, copy = next(iter(self._items.items()))
            if now - copy.last_used < self.min_idle_s:
                return False
            self._drop(key)
        return self.bytes + size <= self.budget_bytes

    def _forget(self, key: int, dense: weakref.ref[torch.Tensor]) -> None:
        """``bits`` was freed: drop its copy (unless the key already holds a newer one)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry.dense is dense():
                self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self.bytes -= entry.dense.numel() * entry.dense.element_size()
