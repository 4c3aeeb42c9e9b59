"""Triton masked matmul that reads the packed bits inside the tile loop (no dense masked weight).

Maths, per output tile ``[BLOCK_M, BLOCK_N]`` of ``y = x @ (W * M)^T + b``::

    acc = 0
    for k0 in range(0, K, BLOCK_K):
        xt   = x[m0:m0+BM, k0:k0+BK]                                  # [BM, BK]
        wt   = W[n0:n0+BN, k0:k0+BK]^T                                # [BK, BN]
        byte = bits[mask, n0:n0+BN, (k0:k0+BK) // 8]^T                # [BK, BN] uint8
        keep = (byte >> (7 - k % 8)) & 1                              # MSB-first bit order
        acc += xt @ where(keep, wt, 0)
    y[m0:m0+BM, n0:n0+BN] = acc + b[n0:n0+BN]

Segmented variant (after Punica's SGMV): the rows of a mixed-mask batch are cut into tiles that never
cross a segment boundary; a small host-built tile table gives each program its ``(row_start, row_end,
mask_id)``. ``mask_id == -1`` keeps every weight. One launch serves every mask in the batch.

Precision follows ``F.linear``: float32 inputs are multiplied in full IEEE float32 unless torch allows
TF32 for matmuls (``torch.backends.cuda.matmul.allow_tf32``); half and bfloat16 use the tensor cores
with float32 accumulation.

Runs on CUDA tensors; on the CPU only under ``TRITON_INTERPRET=1`` (tests, small shapes).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from router_core.kernels.reference import DENSE_SEGMENT, Segments

_BLOCK_M = 32
_BLOCK_N = 64
_BLOCK_K = 32


@triton.jit
def _segmented_masked_matmul_kernel(
    x_ptr, w_ptr, bits_ptr, bias_ptr, out_ptr,
    tile_start_ptr, tile_end_ptr, tile_mask_ptr,
    N, K, KB,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    bits_mask_stride,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    row_start = tl.load(tile_start_ptr + pid_t)
    row_end = tl.load(tile_end_ptr + pid_t)
    mask_id = tl.load(tile_mask_ptr + pid_t)
    has_mask = mask_id >= 0
    bits_base = bits_ptr + tl.maximum(mask_id, 0).to(tl.int64) * bits_mask_stride

    offs_m = row_start + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    row_ok = offs_m < row_end
    col_ok = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # [BK]
        k_ok = offs_k < K
        xt = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )  # [BM, BK]
        wk_ok = k_ok[:, None] & col_ok[None, :]
        wt = tl.load(
            w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk, mask=wk_ok, other=0.0
        )  # [BK, BN]
        byte = tl.load(
            bits_base + offs_n[None, :] * KB + (offs_k[:, None] // 8), mask=wk_ok & has_mask, other=255
        )  # [BK, BN]
        keep = ((byte.to(tl.int32) >> (7 - (offs_k[:, None] % 8))) & 1) != 0
        wt = tl.where(keep, wt, tl.zeros_like(wt))
        acc += tl.dot(xt, wt, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@functools.lru_cache(maxsize=256)
def _tile_table(segments: Segments, block_m: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Host-side cut of every segment into row tiles of at most ``block_m`` rows: (starts, ends, masks).

    Cached: every maskable layer of one forward pass shares the batch's segmentation, so the host work
    and the host-to-device copies happen once per batch shape, not once per layer. Never written to."""
    starts: list[int] = []
    ends: list[int] = []
    masks: list[int] = []
    for start, end, mask_id in segments.spans():
        for tile_start in range(start, end, block_m):
            starts.append(tile_start)
            ends.append(min(tile_start + block_m, end))
            masks.append(mask_id)
    return tuple(torch.tensor(values, dtype=torch.int32, device=device) for values in (starts, ends, masks))


def segmented_masked_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits_stack: Sequence[torch.Tensor] | torch.Tensor,
    segments: Segments,
) -> torch.Tensor:
    """Mixed-mask linear over ``x [R, K]`` -> ``[R, N]`` in one launch (``bits_stack``: ``[S, N, KB]``)."""
    n_out, k = weight.shape
    kb = (k + 7) // 8
    stack = bits_stack if isinstance(bits_stack, torch.Tensor) else _stack(bits_stack, n_out, kb, x.device)
    out = torch.empty(x.shape[0], n_out, dtype=x.dtype, device=x.device)  # [R, N]
    starts, ends, masks = _tile_table(segments, _BLOCK_M, x.device)
    if starts.numel() == 0:
        return out
    grid = (starts.numel(), triton.cdiv(n_out, _BLOCK_N))
    _segmented_masked_matmul_kernel[grid](
        x, weight, stack, bias if bias is not None else weight, out,
        starts, ends, masks,
        n_out, k, kb,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        stack.stride(0),
        HAS_BIAS=bias is not None, INPUT_PRECISION=_input_precision(x.dtype),
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K,
    )  # fmt: skip
    return out


def _input_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s precision for ``dtype`` inputs, as ``F.linear`` would compute them."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _stack(bits: Sequence[torch.Tensor], n_out: int, kb: int, device: torch.device) -> torch.Tensor:
    """Stack per-mask bits into one contiguous ``[S, N, KB]`` tensor (a dummy byte row when empty)."""
    if len(bits) == 0:
        return torch.zeros(1, n_out, kb, dtype=torch.uint8, device=device)
    return torch.stack([b.to(device) for b in bits]).contiguous()


def masked_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor
) -> torch.Tensor:
    """``x @ (W * M)^T + b`` for ``x [..., K]``; returns ``[..., N]`` (one segment, one mask)."""
    rows = x.reshape(-1, x.shape[-1])  # [R, K]
    out = segmented_masked_linear_triton(rows, weight, bias, bits.unsqueeze(0), Segments((0, rows.shape[0]), (0,)))
    return out.reshape(*x.shape[:-1], weight.shape[0])


__all__ = ["DENSE_SEGMENT", "masked_linear_triton", "segmented_masked_linear_triton"]
