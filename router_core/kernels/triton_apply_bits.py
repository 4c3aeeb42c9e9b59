"""The other way to multiply by a masked weight on a GPU: build ``W * M`` once, then a cuBLAS GEMM.

Maths::

    Wm[n, k] = W[n, k] if bit (7 - k % 8) of bits[n, k // 8] else 0      # one pass, [N, K]
    y = x @ Wm^T + b                                                     # F.linear (cuBLAS)

It costs one extra pass over ``W`` (read ``W`` and the bits, write ``Wm``) and then runs at cuBLAS speed,
so for large row counts, or where Triton's own GEMM is slower than cuBLAS (IEEE float32 runs on the CUDA
cores), it can beat reading the bits inside the tile loop. The tuner (:mod:`triton_masked`) times both
per row bucket and layer shape and keeps the faster for one-mask calls. ``Wm`` goes to a reused
per-thread buffer (:mod:`workspace`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

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
    """Write ``W * M`` (``[N, K]``, contiguous like ``weight``) into ``out`` and return it."""
    n_out, k = weight.shape
    weight, bits = weight.contiguous(), bits.contiguous()
    grid = (-(-n_out // BLOCK_N), -(-k // BLOCK_K))
    _apply_bits_kernel[grid](weight, bits, out, n_out, k, bits.shape[1], BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out


def masked_linear_materialized(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor
) -> torch.Tensor:
    """``x @ (W * M)^T + b`` for ``x [..., K]`` -> ``[..., N]``: ``W * M`` into this thread's buffer, then
    ``F.linear`` (which writes a new tensor: the result never aliases the buffer)."""
    return F.linear(x, masked_weight_triton(weight, bits, MASKED_WEIGHTS.get(weight)), bias)
