"""Masked weights kept dense for the masks in use: ``W * M`` built once per (layer, mask), then plain dense GEMMs.

The masked-matmul schedules re-apply the bits on every call, which costs a read of ``W`` that a small
GEMM cannot hide (up to 1.1-1.4x a dense ``F.linear`` on 2 CPU cores at 50-250 frames). For the few
masks a box serves most, keeping ``W * M`` dense makes each call exactly a dense GEMM, at the price of a
dense copy of every masked layer per mask (wav2vec2-base's FFN: 226 MB per mask in float32; the bundled
model: 8 MB). The copies live within a byte budget, least recently used out; a copy goes when its mask's
bits are freed (the mask was evicted or replaced), so it can never outlive the mask it was built from.
Budget 0 (the default) keeps nothing: every call masks on the fly.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch


class MaterializedWeights:
    """``W * M`` per packed-bits tensor (one mask's bits for one layer), within ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self._items: OrderedDict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, weight: torch.Tensor, bits: torch.Tensor, build: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor | None:
        """The dense ``W * M [N, K]`` for ``bits`` (built by ``build(weight, bits)`` on a miss), or ``None``
        when it cannot be kept within the budget."""
        size = weight.numel() * weight.element_size()
        if size > self.budget_bytes:
            return None
        key = id(bits)
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry[0]() is bits:
                self._items.move_to_end(key)
                return entry[1]
        dense = build(weight, bits)  # [N, K]
        with self._lock:
            self._drop(key)
            while self._items and self.bytes + size > self.budget_bytes:
                self._drop(next(iter(self._items)))
            self._items[key] = (weakref.ref(bits), dense)
            self.bytes += size
        weakref.finalize(bits, self._forget, key, weakref.ref(dense))
        return dense

    def _forget(self, key: int, dense: weakref.ref[torch.Tensor]) -> None:
        """``bits`` was freed: drop its copy (unless the key already holds a newer one)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry[1] is dense():
                self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1].numel() * entry[1].element_size()
