"""The other way to multiply by a masked weight on a GPU: build ``W * M`` once, then a cuBLAS GEMM.

Maths::

    Wm[n, k] = W[n, k] if bit (7 - k % 8) of bits[n, k // 8] else 0      # one pass, [N, K]
    y = x @ Wm^T + b                                                     # F.linear (cuBLAS)

It costs one extra pass over ``W`` (read ``W`` and the bits, write ``Wm``) and then runs at cuBLAS speed,
so for large row counts, or where Triton's own GEMM is slower than cuBLAS (IEEE float32 runs on the CUDA
cores), it can beat reading the bits inside the tile loop. A mixed-mask batch pays one such pass per
segment (:func:`segmented_linear_materialized`). The tuner (:mod:`triton_masked`) times both ways per
row bucket and layer shape, for one-mask and for mixed-mask calls, and keeps the faster. ``Wm`` goes to
a reused per-thread buffer (:mod:`workspace`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from router_core.kernels.bits import check_packed_for
from router_core.kernels.reference import DENSE_SEGMENT, Segments
from router_core.kernels.workspace import MASKED_WEIGHTS

BLOCK_N = 16
BLOCK_K = 256


@triton.jit
def _apply_bits_kernel(w_ptr, bits_ptr, out_ptr, N, K, KB, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One ``[BLOCK_N, BLOCK_K]`` tile of ``out = W * M`` per program (row-major ``[N, K]`` tensors)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
    ok = (offs_n < N)[:, None] & (offs_k < K)[None, :]  # [BN, BK]
    w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=ok, other=0.0)  # [BN, BK]
    byte = tl.load(bits_ptr + offs_n[:, None] * KB + (offs_k // 8)[None, :], mask=ok, other=0)  # [BN, BK]
    keep = ((byte.to(tl.int32) >> (7 - offs_k % 8)[None, :]) & 1) != 0
    tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], tl.where(keep, w, tl.zeros_like(w)), mask=ok)


def masked_weight_triton(weight: torch.Tensor, bits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write ``W * M`` into ``out`` and return it: ``weight [N, K]``, ``bits [N, ceil(K/8)]`` uint8,
    ``out [N, K]`` contiguous in the weight's dtype (a non-contiguous weight is copied first)."""
    n_out, k = weight.shape
    check_packed_for(weight, bits)
    assert out.shape == weight.shape and out.dtype == weight.dtype and out.is_contiguous(), (
        f"out {tuple(out.shape)} {out.dtype} must be a contiguous {tuple(weight.shape)} {weight.dtype}"
    )
    weight = weight.contiguous()  # [N, K]
    grid = (-(-n_out // BLOCK_N), -(-k // BLOCK_K))
    _apply_bits_kernel[grid](weight, bits, out, n_out, k, bits.shape[1], BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out


def masked_linear_materialized(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor
) -> torch.Tensor:
    """``x @ (W * M)^T + b`` for ``x [..., K]`` -> ``[..., N]``: ``W * M`` into this thread's buffer, then
    ``F.linear`` (which writes a new tensor: the result never aliases the buffer)."""
    return F.linear(x, masked_weight_triton(weight, bits, MASKED_WEIGHTS.get(weight)), bias)


def segmented_linear_materialized(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stack: torch.Tensor, segments: Segments
) -> torch.Tensor:
    """Mixed-mask linear over ``x [R, K]`` -> ``[R, N]``: segment by segment, its ``W * M`` built in this
    thread's buffer, then cuBLAS on its rows, written in place into the output (``stack``: ``[S, N, KB]``;
    a dense segment multiplies ``W`` itself). Reusing one buffer is safe: each segment's GEMM is queued
    on the stream before the next segment's pass overwrites it."""
    spans = segments.spans()
    if len(spans) == 1 and spans[0][:2] == (0, x.shape[0]):
        mask_id = spans[0][2]
        return (
            F.linear(x, weight, bias)
            if mask_id == DENSE_SEGMENT
            else masked_linear_materialized(x, weight, bias, stack[mask_id])
        )
    out = x.new_empty(x.shape[0], weight.shape[0])  # [R, N]
    scratch = MASKED_WEIGHTS.get(weight)
    for start, end, mask_id in spans:
        masked = weight if mask_id == DENSE_SEGMENT else masked_weight_triton(weight, stack[mask_id], scratch)
        if bias is None:
            torch.mm(x[start:end], masked.t(), out=out[start:end])
        else:
            torch.addmm(bias, x[start:end], masked.t(), out=out[start:end])
    return out
