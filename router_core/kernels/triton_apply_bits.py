"""The other way to multiply by a masked weight on a GPU: build ``W * M`` once, then a cuBLAS GEMM.

Maths::

    Wm[n, k] = W[n, k] if bit (7 - k % 8) of bits[n, k // 8] else 0      # one pass, [N, K]
    y = x @ Wm^T + b                                                     # F.linear (cuBLAS)

It costs one extra pass over ``W`` (read ``W`` and the bits, write ``Wm``) and then runs at cuBLAS speed,
so for large row counts, or where Triton's own GEMM is slower than cuBLAS (IEEE float32 runs on the CUDA
cores), it can beat reading the bits inside the tile loop. A mixed-mask batch pays one such pass per
mask (:func:`segmented_linear_materialized`), built for up to :data:`GROUP` masks in one launch; when the
batch's segments are equal in length and in mask order (the router sorts items by mask, so a batch whose
masks carry equally many items of one length is), one batched GEMM then serves them all::

    Wm[s] = W * M_s                          # [S, N, K], one launch per GROUP masks
    y[s] = x[s] @ Wm[s]^T + b                # x viewed [S, L, K] -> [S, L, N]: one bmm

A launch costs several microseconds of host time, about what an FFN layer's GEMM takes on a GPU: on an
H200 the tuner timed the old per-segment path (two launches per segment) at 2-5x a one-mask call for two
masks, where the arithmetic is the same. The tuner (:mod:`triton_masked`) times both ways per row bucket
and layer shape, for one-mask and for mixed-mask calls, and keeps the faster. ``Wm`` goes to reused
per-thread buffers (:mod:`workspace`).
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
GROUP = 8
"""Most masked weights a mixed batch builds at once: the buffer holds ``GROUP`` copies of ``W`` (38 MB for
a wav2vec2-base FFN weight in fp16), whatever the number of masks in the batch."""


@triton.jit
def _apply_bits_kernel(w_ptr, bits_ptr, out_ptr, N, K, KB, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One ``[BLOCK_N, BLOCK_K]`` tile of ``out[s] = W * M_s`` per program, ``s = program_id(2)``: ``W [N, K]``,
    ``bits [S, N, KB]``, ``out [S, N, K]``, all row-major."""
    mask = tl.program_id(2).to(tl.int64)
    bits_ptr += mask * N * KB
    out_ptr += mask * N * K
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
    ok = (offs_n < N)[:, None] & (offs_k < K)[None, :]  # [BN, BK]
    w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=ok, other=0.0)  # [BN, BK]
    byte = tl.load(bits_ptr + offs_n[:, None] * KB + (offs_k // 8)[None, :], mask=ok, other=0)  # [BN, BK]
    keep = ((byte.to(tl.int32) >> (7 - offs_k % 8)[None, :]) & 1) != 0
    tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], tl.where(keep, w, tl.zeros_like(w)), mask=ok)


def masked_weights_triton(weight: torch.Tensor, stack: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write ``W * M_s`` into ``out[s]`` for every mask ``s`` in one launch and return ``out``: ``weight
    [N, K]``, ``stack [S, N, ceil(K/8)]`` uint8 (contiguous), ``out [S, N, K]`` contiguous in the weight's
    dtype (a non-contiguous weight is copied first)."""
    n_out, k = weight.shape
    check_packed_for(weight, stack)
    assert stack.dim() == 3 and stack.is_contiguous(), f"stack {tuple(stack.shape)} must be a contiguous [S, N, KB]"
    assert out.shape == (stack.shape[0], n_out, k) and out.dtype == weight.dtype and out.is_contiguous(), (
        f"out {tuple(out.shape)} {out.dtype} must be a contiguous {(stack.shape[0], n_out, k)} {weight.dtype}"
    )
    weight = weight.contiguous()  # [N, K]
    grid = (-(-n_out // BLOCK_N), -(-k // BLOCK_K), stack.shape[0])
    _apply_bits_kernel[grid](weight, stack, out, n_out, k, stack.shape[2], BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out


def masked_weight_triton(weight: torch.Tensor, bits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write ``W * M`` into ``out`` and return it: ``weight [N, K]``, ``bits [N, ceil(K/8)]`` uint8,
    ``out [N, K]`` contiguous in the weight's dtype (a non-contiguous weight is copied first)."""
    assert bits.dim() == 2 and out.shape == weight.shape, f"bits {tuple(bits.shape)}, out {tuple(out.shape)}"
    return masked_weights_triton(weight, bits.unsqueeze(0), out.unsqueeze(0))[0]


def masked_linear_materialized(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor
) -> torch.Tensor:
    """``x @ (W * M)^T + b`` for ``x [..., K]`` -> ``[..., N]``: ``W * M`` into this thread's buffer, then
    ``F.linear`` (which writes a new tensor: the result never aliases the buffer)."""
    return F.linear(x, masked_weight_triton(weight, bits, MASKED_WEIGHTS.get(weight)), bias)


def segmented_linear_materialized(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stack: torch.Tensor, segments: Segments
) -> torch.Tensor:
    """Mixed-mask linear over ``x [R, K]`` -> ``[R, N]`` (``stack``: ``[S, N, KB]``; a dense segment
    multiplies ``W`` itself). The masks' ``W * M`` are built :data:`GROUP` at a time into this thread's
    buffer, then each group's segments run as one batched GEMM when they are its masks in order, equal
    in length and adjacent (see the module's maths), else one GEMM per segment, written in place into the
    output. Reusing the buffer is safe: a group's GEMMs are queued on the stream before the next group's
    pass overwrites it."""
    spans = segments.spans()
    if len(spans) == 1 and spans[0][:2] == (0, x.shape[0]):
        mask_id = spans[0][2]
        return (
            F.linear(x, weight, bias)
            if mask_id == DENSE_SEGMENT
            else masked_linear_materialized(x, weight, bias, stack[mask_id])
        )
    out = x.new_empty(x.shape[0], weight.shape[0])  # [R, N]
    for start, end, _ in (span for span in spans if span[2] == DENSE_SEGMENT):
        _linear_into(out[start:end], x[start:end], weight, bias)
    for first in range(0, stack.shape[0], GROUP):
        group = [span for span in spans if first <= span[2] < first + GROUP]
        if not group:
            continue
        last = max(span[2] for span in group) + 1
        masked = masked_weights_triton(weight, stack[first:last], _group_buffer(weight, last - first))  # [G, N, K]
        if _one_batched_gemm(group, first):
            start, end, length = group[0][0], group[-1][1], group[0][1] - group[0][0]
            x3 = x[start:end].view(len(group), length, x.shape[1])  # [G, L, K]
            out3 = out[start:end].view(len(group), length, weight.shape[0])  # [G, L, N]
            if bias is None:
                torch.bmm(x3, masked.transpose(1, 2), out=out3)
            else:
                torch.baddbmm(bias, x3, masked.transpose(1, 2), out=out3)
            continue
        for start, end, mask_id in group:
            _linear_into(out[start:end], x[start:end], masked[mask_id - first], bias)
    return out


def _linear_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``out = x @ weight^T + b`` in place: ``x [R, K]``, ``weight [N, K]``, ``out [R, N]``."""
    if bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)


def _one_batched_gemm(group: list[tuple[int, int, int]], first: int) -> bool:
    """Whether the group's segments are masks ``first, first + 1, ...`` in order, adjacent and of one length."""
    length = group[0][1] - group[0][0]
    return all(
        mask_id == first + i and end - start == length and (i == 0 or start == group[i - 1][1])
        for i, (start, end, mask_id) in enumerate(group)
    )


def _group_buffer(weight: torch.Tensor, count: int) -> torch.Tensor:
    """``[count, N, K]`` of this thread's buffer for masked copies of ``weight``, sized to the next power of
    two up to :data:`GROUP` copies (so batches of 2 to 8 masks share at most four buffers per shape)."""
    size = min(GROUP, 1 << (count - 1).bit_length())
    return MASKED_WEIGHTS.get_shaped((size, *weight.shape), weight.dtype, weight.device)[:count]
