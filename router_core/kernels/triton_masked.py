"""Triton masked matmul that reads the packed bits inside the tile loop (no dense masked weight).

Maths, per output tile ``[BLOCK_M, BLOCK_N]`` of ``y = x @ (W * M)^T + b``::

    acc = 0
    for each segment s overlapping the tile's rows:                    # usually one
        for k0 in range(0, K, BLOCK_K):
            xt   = x[rows of s in the tile, k0:k0+BK]                  # [BM, BK], other rows 0
            wt   = W[n0:n0+BN, k0:k0+BK]^T                             # [BK, BN]
            keep = bit (7 - k % 8) of bits[mask(s), n, k // 8]         # [BK, BN], MSB-first
            acc += xt @ where(keep, wt, 0)
    y[m0:m0+BM, n0:n0+BN] = acc + b[n0:n0+BN]

Segmented variant (after Punica's SGMV): a mixed-mask batch is cut into row segments, each with one
mask (``-1`` keeps every weight). One launch serves every mask: each program walks the small segment
table and accumulates, for each segment that overlaps its row tile, those rows against that segment's
mask, so a tile that straddles a boundary stays correct and tile sizes are free to tune. A batch of one
segment (the common single-mask call) needs no table at all.

Two ways to read the bits are compiled, and the autotuner keeps the faster on the GPU at hand:
``BITS_BY_BYTE=0`` loads a byte for every weight (each byte 8 times, a gather), ``BITS_BY_BYTE=1``
loads each byte once (``[BK/8, BN]``) and expands it into its 8 bits in registers.

Tiles are autotuned per (rows bucket, N, K, dtypes) on CUDA and the choice is cached on disk by
Triton, so a restart does not retune; what was chosen lives in a :class:`TritonTuner`, which the Triton
backend owns. The first one-mask and the first mixed-mask call of a key then
time the best tiles against the materialized path (:mod:`triton_apply_bits`: ``W * M`` built once per
mask, then cuBLAS), and later calls of each kind take the faster. Tile space and buckets:
:mod:`triton_configs`; start-up tuning: :mod:`triton_tuning`.

Precision follows ``F.linear``: float32 inputs are multiplied in full IEEE float32 unless torch allows
TF32 for matmuls; half and bfloat16 use the tensor cores with float32 accumulation.

Runs on CUDA tensors; on the CPU only under ``TRITON_INTERPRET=1`` (tests, small shapes), with one fixed
config (tests run every config).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
import triton.testing

from router_core.kernels.bits import check_packed_for
from router_core.kernels.buckets import row_bucket
from router_core.kernels.reference import DENSE_SEGMENT, Segments
from router_core.kernels.triton_apply_bits import segmented_linear_materialized
from router_core.kernels.triton_configs import CONFIGS, INTERPRETER_CONFIG, prune_configs

log = logging.getLogger(__name__)

_INTERPRET = triton.knobs.runtime.interpret
"""Read once: the kernels were created in this mode at import (TRITON_INTERPRET=1: tests on the CPU)."""


@triton.jit
def _accumulate_rows(
    acc, x_ptr, w_ptr, bits_base, has_mask, row_lo, row_hi,
    offs_m, offs_n, col_ok, K, KB,
    stride_xm, stride_xk, stride_wn, stride_wk,
    INPUT_PRECISION: tl.constexpr, BITS_BY_BYTE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``acc += x[row_lo:row_hi] @ (W * M)^T`` on this tile's rows ``[BM]`` and columns ``[BN]``."""
    row_ok = (offs_m >= row_lo) & (offs_m < row_hi)  # [BM]
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # [BK]
        k_ok = offs_k < K
        xt = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )  # [BM, BK]
        wk_ok = k_ok[:, None] & col_ok[None, :]  # [BK, BN]
        wt = tl.load(
            w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk, mask=wk_ok, other=0.0
        )  # [BK, BN]
        if BITS_BY_BYTE:
            offs_kb = k0 // 8 + tl.arange(0, BLOCK_K // 8)  # [BK/8]
            byte = tl.load(
                bits_base + offs_n[None, :] * KB + offs_kb[:, None],
                mask=(offs_kb < KB)[:, None] & col_ok[None, :] & has_mask,
                other=255,
            )  # [BK/8, BN]
            shifts = 7 - tl.arange(0, 8)  # [8]
            bit = (byte.to(tl.int32)[:, None, :] >> shifts[None, :, None]) & 1  # [BK/8, 8, BN]
            keep = tl.reshape(bit, (BLOCK_K, BLOCK_N)) != 0  # [BK, BN], row kb*8+j is k0+kb*8+j
        else:
            byte = tl.load(
                bits_base + offs_n[None, :] * KB + (offs_k[:, None] // 8), mask=wk_ok & has_mask, other=255
            )  # [BK, BN]
            keep = ((byte.to(tl.int32) >> (7 - (offs_k[:, None] % 8))) & 1) != 0
        wt = tl.where(keep, wt, tl.zeros_like(wt))
        acc += tl.dot(xt, wt, input_precision=INPUT_PRECISION)
    return acc


@triton.jit(do_not_specialize=["M", "num_segments", "single_mask_id", "m_bucket"])  # one binary for every row count
def _segmented_masked_matmul_kernel(
    x_ptr, w_ptr, bits_ptr, bias_ptr, out_ptr, table_ptr,
    M, N, K, KB, num_segments, single_mask_id, m_bucket,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    bits_mask_stride,
    HAS_BIAS: tl.constexpr, ONE_SEGMENT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BITS_BY_BYTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program per ``[BLOCK_M, BLOCK_N]`` output tile. ``table``: ``[2S + 1]`` int32, the segment
    offsets ``[S + 1]`` then the mask ids ``[S]`` (read only when not ``ONE_SEGMENT``)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m0 = pid_m * BLOCK_M
    m1 = tl.minimum(m0 + BLOCK_M, M)
    offs_m = m0 + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    col_ok = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if ONE_SEGMENT:
        bits_base = bits_ptr + tl.maximum(single_mask_id, 0).to(tl.int64) * bits_mask_stride
        acc = _accumulate_rows(
            acc, x_ptr, w_ptr, bits_base, single_mask_id >= 0, m0, m1, offs_m, offs_n, col_ok, K, KB,
            stride_xm, stride_xk, stride_wn, stride_wk, INPUT_PRECISION, BITS_BY_BYTE, BLOCK_N, BLOCK_K,
        )
    else:
        for s in range(0, num_segments):
            row_lo = tl.maximum(tl.load(table_ptr + s), m0)
            row_hi = tl.minimum(tl.load(table_ptr + s + 1), m1)
            if row_lo < row_hi:
                mask_id = tl.load(table_ptr + num_segments + 1 + s)
                bits_base = bits_ptr + tl.maximum(mask_id, 0).to(tl.int64) * bits_mask_stride
                acc = _accumulate_rows(
                    acc, x_ptr, w_ptr, bits_base, mask_id >= 0, row_lo, row_hi, offs_m, offs_n, col_ok, K, KB,
                    stride_xm, stride_xk, stride_wn, stride_wk, INPUT_PRECISION, BITS_BY_BYTE, BLOCK_N, BLOCK_K,
                )
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & col_ok[None, :])


def _time_config(kernel_call, quantiles):  # noqa: ANN001,ANN202  (the autotuner's do_bench signature)
    """Triton's ``do_bench`` with a shorter budget (5 ms warm-up, 25 ms of repeats) than its default
    (25/100 ms): a tuning pass over every row bucket and layer shape then fits in a start-up."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


_tuned_kernel = triton.autotune(
    configs=CONFIGS,
    key=["m_bucket", "N", "K", "INPUT_PRECISION"],  # + every tensor's dtype (the autotuner adds them)
    prune_configs_by={"early_config_prune": prune_configs},
    do_bench=_time_config,
    cache_results=True,
)(_segmented_masked_matmul_kernel)


@functools.lru_cache(maxsize=256)
def _segment_table(segments: Segments, device: torch.device) -> torch.Tensor:
    """``[2S + 1]`` int32 on ``device``: offsets then mask ids. Cached: every maskable layer of one
    forward pass shares the batch's segmentation, so the host-to-device copy happens once per batch
    shape, not once per layer. Never written to."""
    return torch.tensor(segments.offsets + segments.mask_ids, dtype=torch.int32, device=device)


def segmented_masked_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits_stack: Sequence[torch.Tensor] | torch.Tensor,
    segments: Segments,
    config: triton.Config | None = None,
    tuner: TritonTuner | None = None,
) -> torch.Tensor:
    """Mixed-mask linear in one launch: ``y[r] = x[r] @ (W * M_s)^T + b`` for row ``r`` of segment ``s``.

    Shapes: ``x [R, K]`` (row stride free, ``K`` contiguous or strided), ``weight [N, K]``, ``bias [N]`` or
    ``None``, ``bits_stack [S, N, ceil(K/8)]`` uint8 (or a list of ``[N, ceil(K/8)]``), ``segments`` over
    ``R`` rows with ids into the stack (``-1``: dense); returns ``[R, N]`` in ``x``'s dtype.
    ``config`` pins the tiles (tests); else ``tuner`` (the backend's: it holds what was tuned) picks tiles,
    or the materialized path when it was timed faster for calls of this kind."""
    n_out, k = weight.shape
    rows = x.shape[0]
    stack = bits_stack if isinstance(bits_stack, torch.Tensor) else _stack(bits_stack, n_out, (k + 7) // 8, x.device)
    assert x.dim() == 2 and x.shape[1] == k, f"x {tuple(x.shape)} does not match weight {tuple(weight.shape)}"
    check_packed_for(weight, stack)
    assert bias is None or bias.shape == (n_out,), f"bias {tuple(bias.shape)}"
    assert segments.offsets[-1] == rows, f"segments cover {segments.offsets[-1]} rows, x has {rows}"
    if rows == 0:
        return torch.empty(0, n_out, dtype=x.dtype, device=x.device)
    precision = input_precision(x.dtype)
    if config is None and tuner is None:
        raise ValueError("pass the backend's tuner (or a config that pins the tiles)")
    launch = _launch_kwargs(config) if config is not None else tuner.launch_for(  # type: ignore[union-attr]
        x, weight, bias, stack, segments
    )
    if launch is None:
        return segmented_linear_materialized(x, weight, bias, stack, segments)
    out = torch.empty(rows, n_out, dtype=x.dtype, device=x.device)  # [R, N]
    args, flags = _kernel_args(x, weight, bias, stack, segments, out, precision)
    grid = (_cdiv(rows, launch["BLOCK_M"]), _cdiv(n_out, launch["BLOCK_N"]))
    _segmented_masked_matmul_kernel[grid](*args, **flags, **launch)
    return out


def _kernel_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stack: torch.Tensor,
    segments: Segments,
    out: torch.Tensor,
    precision: str,
) -> tuple[tuple, dict]:
    """The kernel's positional arguments and its compile-time flags for one call."""
    one_segment = len(segments.mask_ids) == 1
    table = weight if one_segment else _segment_table(segments, x.device)  # (unread when one segment)
    rows, (n_out, k) = x.shape[0], weight.shape
    args = (
        x, weight, stack, bias if bias is not None else weight, out, table,
        rows, n_out, k, (k + 7) // 8, len(segments.mask_ids), segments.mask_ids[0], row_bucket(rows),
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        stack.stride(0),
    )
    return args, {"HAS_BIAS": bias is not None, "ONE_SEGMENT": one_segment, "INPUT_PRECISION": precision}


@dataclass(frozen=True)
class PathChoice:
    """Tiles or ``W * M`` built once and cuBLAS, for one kind of call (one mask, or mixed masks), as
    timed on the first such call of a key (milliseconds)."""

    materialize: bool
    tiled_ms: float
    materialized_ms: float


@dataclass(frozen=True)
class Tuned:
    """What the tuner chose for one key: the tiles (with their launch keywords), and per kind of call
    (``one``, ``mixed``) the faster path, filled in by the first call of that kind."""

    config: triton.Config
    launch: dict
    paths: dict[str, PathChoice]


def _time(fn: Callable[[], object]) -> float:
    """Milliseconds per call of ``fn`` on the GPU (the tuner's timing budget)."""
    return float(_time_config(fn, quantiles=None))


class TritonTuner:
    """The Triton backend's tuning state: per key ``(row bucket, N, K, x dtype, W dtype, precision)`` the
    tiles the autotuner picked, and per kind of call (one mask, mixed masks) whether the tiles or the
    materialized path is faster. Later calls of a key launch directly, without the autotuner's per-call
    bookkeeping (host time that a small GEMM cannot hide).

    ``autotuner`` (Triton's, over :data:`CONFIGS`), ``timer`` (ms per call of a thunk) and ``interpret``
    (fixed tiles, nothing timed) can be stood in for: tests run the GPU dispatch on the CPU that way."""

    def __init__(self, autotuner: Any = None, timer: Callable[[Callable[[], object]], float] = _time,
                 interpret: bool | None = None) -> None:
        self.autotuner = _tuned_kernel if autotuner is None else autotuner
        self.timer = timer
        self.interpret = _INTERPRET if interpret is None else interpret
        self.choices: dict[tuple, Tuned] = {}

    def launch_for(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stack: torch.Tensor,
                   segments: Segments) -> dict | None:
        """Launch keywords for this call's tiles, or ``None`` when the materialized path serves it. The
        first call of a key tunes its tiles; the first of each kind then times both paths on its data."""
        if self.interpret:
            return _INTERPRETER_LAUNCH
        key = (row_bucket(x.shape[0]), *weight.shape, x.dtype, weight.dtype, input_precision(x.dtype))
        tuned = self.choices.get(key) or self._tune(key, x, weight, bias, stack, segments)
        kind = "one" if len(segments.mask_ids) == 1 else "mixed"
        choice = tuned.paths.get(kind) or self._choose(tuned, kind, x, weight, bias, stack, segments)
        return None if choice.materialize else tuned.launch

    def tuned_for(self, rows: int, n_out: int, k: int, dtype: torch.dtype) -> Tuned | None:
        """What was chosen for ``rows`` rows of a ``[n_out, k]`` layer in ``dtype`` (``None``: not yet)."""
        return self.choices.get((row_bucket(rows), n_out, k, dtype, dtype, input_precision(dtype)))

    def _tune(self, key: tuple, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              stack: torch.Tensor, segments: Segments) -> Tuned:
        """First call of a key: the autotuner picks the tiles (or reads Triton's disk cache)."""
        rows, n_out = x.shape[0], weight.shape[0]
        out = torch.empty(rows, n_out, dtype=x.dtype, device=x.device)  # [R, N]
        args, flags = _kernel_args(x, weight, bias, stack, segments, out, key[-1])
        self.autotuner[_grid(rows, n_out)](*args, **flags)
        config = self.autotuner.best_config
        tuned = self.choices[key] = Tuned(config, _launch_kwargs(config), {})
        return tuned

    def _choose(self, tuned: Tuned, kind: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stack: torch.Tensor, segments: Segments) -> PathChoice:
        """First call of a kind for a key: the tuned tiles and the materialized path are timed on this
        call's data and segmentation, and the faster is kept for every later call of that kind."""
        rows, n_out = x.shape[0], weight.shape[0]
        out = torch.empty(rows, n_out, dtype=x.dtype, device=x.device)  # [R, N]
        args, flags = _kernel_args(x, weight, bias, stack, segments, out, input_precision(x.dtype))
        launch = tuned.launch
        grid = (_cdiv(rows, launch["BLOCK_M"]), _cdiv(n_out, launch["BLOCK_N"]))
        tiled_ms = self.timer(lambda: _segmented_masked_matmul_kernel[grid](*args, **flags, **launch))
        materialized_ms = self.timer(lambda: segmented_linear_materialized(x, weight, bias, stack, segments))
        choice = tuned.paths[kind] = PathChoice(materialized_ms < tiled_ms, tiled_ms, materialized_ms)
        log.debug("%s calls of %s x %s: %s", kind, rows, tuple(weight.shape), choice)
        return choice


def _launch_kwargs(config: triton.Config) -> dict:
    """A config's tile sizes and launch options as keyword arguments for a direct launch."""
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


_INTERPRETER_LAUNCH = _launch_kwargs(INTERPRETER_CONFIG)


def _cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` in plain Python (``triton.cdiv`` is a jit function: microseconds per host call)."""
    return -(-a // b)


def _grid(rows: int, n_out: int):  # noqa: ANN202  (triton's grid callable)
    return lambda meta: (_cdiv(rows, meta["BLOCK_M"]), _cdiv(n_out, meta["BLOCK_N"]))


def input_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s precision for ``dtype`` inputs, as ``F.linear`` would compute them."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _stack(bits: Sequence[torch.Tensor], n_out: int, kb: int, device: torch.device) -> torch.Tensor:
    """Per-mask bits as one ``[S, N, KB]`` tensor: a view when there is one mask, a copy otherwise
    (a dummy byte row when empty)."""
    if len(bits) == 0:
        return torch.zeros(1, n_out, kb, dtype=torch.uint8, device=device)
    if len(bits) == 1:
        return bits[0].to(device).contiguous().unsqueeze(0)
    return torch.stack([b.to(device) for b in bits]).contiguous()


def masked_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor,
    tuner: TritonTuner | None = None,
) -> torch.Tensor:
    """``x @ (W * M)^T + b`` for ``x [..., K]``, ``weight [N, K]``, ``bits [N, ceil(K/8)]`` uint8; returns
    ``[..., N]`` (one segment, one mask)."""
    rows = x.reshape(-1, x.shape[-1])  # [R, K]
    out = segmented_masked_linear_triton(rows, weight, bias, bits.unsqueeze(0), single_segment(rows.shape[0]),
                                         tuner=tuner)
    return out.reshape(*x.shape[:-1], weight.shape[0])


@functools.lru_cache(maxsize=1024)
def single_segment(rows: int) -> Segments:
    return Segments((0, rows), (0,))


__all__ = ["DENSE_SEGMENT", "TritonTuner", "masked_linear_triton", "segmented_masked_linear_triton"]
