"""Per-thread scratch buffers for masked weights, one per (shape, dtype, device).

A masked weight lives only until its GEMM has read it, so one buffer per layer shape is reused across
layers, masks and calls: a fresh multi-MB allocation would page-fault (CPU) or go through the caching
allocator (GPU) on every call. On a GPU, reuse is safe because one thread's kernels run in order on its
stream: the next layer's write into the buffer is queued behind the GEMM that reads it.
"""

from __future__ import annotations

import threading

import torch


class Workspace(threading.local):
    """``get(like)``: this thread's buffer shaped, typed and placed like ``like`` (contents undefined);
    ``get_shaped(shape, dtype, device)``: the same by description."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[tuple[int, ...], torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, like: torch.Tensor) -> torch.Tensor:
        return self.get_shaped(tuple(like.shape), like.dtype, like.device)

    def get_shaped(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """This thread's buffer of this shape, dtype and device (contents undefined)."""
        key = (shape, dtype, device)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf


MASKED_WEIGHTS = Workspace()
"""The one workspace every kernel backend builds its masked weights in."""
