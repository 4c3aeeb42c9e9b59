"""Fast CPU masked linear: one fused pass builds ``W * M`` from the packed bits, then MKL/oneDNN's GEMM.

The naive path (unpack to bytes, ``torch.where``, linear) touches ``W`` three times and the unpacked
mask twice; the C++ extension in ``csrc/apply_bits.cpp`` reads ``W`` and the bits once and writes the
masked copy once (about the cost of a plain copy of ``W``), so the overhead over dense ``F.linear``
is one weight copy per layer and mask.

The extension is compiled on first use with ``torch.utils.cpp_extension`` (needs a C++ compiler and
``ninja``); :func:`load_extension` raises :class:`KernelUnavailableError` when that is impossible.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from router_core.errors import KernelUnavailableError
from router_core.kernels.reference import DENSE_SEGMENT, Segments

_SOURCE = Path(__file__).parent / "csrc" / "apply_bits.cpp"


@functools.lru_cache(maxsize=1)
def load_extension() -> ModuleType:
    """Compile (once per machine, cached by torch) and import the ``apply_bits`` extension."""
    try:
        from torch.utils.cpp_extension import load

        return load(
            name="s3r_apply_bits",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # compiler missing, ninja missing, build error
        raise KernelUnavailableError(f"the CPU masked-weight extension could not be built: {exc}") from exc


class _Workspace(threading.local):
    """Per-thread scratch buffers for masked weights, one per (shape, dtype).

    A masked weight lives only until its GEMM returns, so one buffer per layer shape is reused
    across layers, masks and calls: a fresh multi-MB allocation would page-fault on every call.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def get(self, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(like.shape), like.dtype)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty(like.shape, dtype=like.dtype)
        return buf


_WORKSPACE = _Workspace()


def masked_weight_cpu(weight: torch.Tensor, bits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``W * M`` as a dense ``[N, K]`` tensor, built in one fused pass (into ``out`` when given)."""
    if out is None:
        out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    return load_extension().apply_bits_out(weight, bits, out)


def masked_linear_cpu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor
) -> torch.Tensor:
    """``x @ (W * M)^T + b`` for ``x [..., K]``; returns ``[..., N]``.

    The masked weight is built in this thread's scratch buffer, so the result must not alias it:
    ``F.linear`` writes a new tensor, and autograd is not supported on this path (inference only).
    """
    return F.linear(x, masked_weight_cpu(weight, bits, _WORKSPACE.get(weight)), bias)


def segmented_masked_linear_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits_stack: Sequence[torch.Tensor],
    segments: Segments,
) -> torch.Tensor:
    """Mixed-mask linear over ``x [R, K]`` -> ``[R, N]``: each distinct mask's weight is built once."""
    spans = segments.spans()
    if len(spans) == 1 and spans[0][:2] == (0, x.shape[0]):
        mask_id = spans[0][2]
        if mask_id == DENSE_SEGMENT:
            return F.linear(x, weight, bias)
        return masked_linear_cpu(x, weight, bias, bits_stack[mask_id])
    out = x.new_empty(x.shape[0], weight.shape[0])  # [R, N]
    by_mask: dict[int, list[tuple[int, int]]] = {}
    for start, end, mask_id in spans:
        by_mask.setdefault(mask_id, []).append((start, end))
    for mask_id, rows in by_mask.items():
        if mask_id == DENSE_SEGMENT:
            w = weight
        else:
            w = masked_weight_cpu(weight, bits_stack[mask_id], _WORKSPACE.get(weight))
        for start, end in rows:
            out[start:end] = F.linear(x[start:end], w, bias)
    return out
