"""Start-up tuning of the Triton backend (its ``prepare``): every row bucket and layer shape the service
can meet is tuned before ``/readyz`` turns ready, and whatever was chosen is checked against the reference.

For each ``(out N, in K)`` layer shape and each row bucket up to the largest batch, one call on random
data lets :mod:`triton_masked` tune that key (the autotuner picks the tiles, or reads Triton's on-disk
cache; then the tiles and the materialized path are timed and the faster is kept), and a two-mask call
compiles the segmented variant that mixed-mask batches take. Both outputs must match
:func:`masked_linear_reference`: a compiler or driver fault on this GPU stops start-up with an error that
names the shape and the tiles, instead of being served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch

from router_core.errors import KernelUnavailableError
from router_core.kernels import triton_masked
from router_core.kernels.bits import pack_bits
from router_core.kernels.buckets import LAST_BUCKET, ROW_BUCKETS
from router_core.kernels.reference import Segments, masked_linear_reference
from router_core.kernels.triton_masked import TritonTuner
from router_core.kernels.workspace import MASKED_WEIGHTS

log = logging.getLogger(__name__)


def tuning_rows(max_rows: int) -> list[int]:
    """One row count per tuning bucket a batch of up to ``max_rows`` rows can fall in (each bucket's top,
    the last one capped at ``max_rows``)."""
    counts: list[int] = []
    for bucket in (*ROW_BUCKETS, LAST_BUCKET):
        counts.append(min(bucket, max_rows))
        if bucket >= max_rows:
            break
    return counts


def tune(
    layer_shapes: Iterable[tuple[int, int]], dtype: torch.dtype, device: torch.device, max_rows: int,
    tuner: TritonTuner,
) -> None:
    """The Triton backend's ``prepare``: :func:`tune_and_check` on CUDA; nothing to tune in the interpreter."""
    if tuner.interpret:
        return
    started = time.perf_counter()
    tune_and_check(layer_shapes, dtype, device, max_rows, tuner)
    MASKED_WEIGHTS.buffers.clear()  # this (start-up) thread's scratch: the model thread keeps its own
    log.info(
        "triton kernels tuned and checked for %d row buckets up to %d rows in %.1f s",
        len(tuning_rows(max_rows)), max_rows, time.perf_counter() - started,
    )


def tune_and_check(
    layer_shapes: Iterable[tuple[int, int]], dtype: torch.dtype, device: torch.device, max_rows: int,
    tuner: TritonTuner,
) -> None:
    """Tune every (row bucket up to ``max_rows``, layer shape) key now and check what was chosen."""
    gen = torch.Generator(device=device).manual_seed(0)
    for n_out, k in sorted(set(layer_shapes)):
        weight = (torch.randn(n_out, k, generator=gen, device=device) / k**0.5).to(dtype)  # [N, K]
        bias = torch.randn(n_out, generator=gen, device=device).to(dtype)  # [N]
        keep = torch.rand(n_out, k, generator=gen, device=device) < 0.9  # [N, K]
        two_masks = torch.stack([pack_bits(keep), pack_bits(~keep)])  # [2, N, KB]
        for rows in tuning_rows(max_rows):
            x = torch.randn(rows, k, generator=gen, device=device).to(dtype)  # [R, K]
            what = f"{rows}x{k}->{n_out}"
            one = masked_linear_reference(x, weight, bias, two_masks[0])  # [R, N]
            got = triton_masked.segmented_masked_linear_triton(
                x, weight, bias, two_masks[:1], triton_masked.single_segment(rows), tuner=tuner
            )  # the first call of a key tunes it
            check_close_to_reference(got, one, f"{what}, one mask, {_served(tuner, rows, n_out, k, dtype, 'one')}")
            # a mixed-mask batch: its path is chosen now (and the tiles' segmented variant compiled), not on a request
            half = rows // 2
            mixed = Segments((0, half, rows), (0, 1))
            got = triton_masked.segmented_masked_linear_triton(x, weight, bias, two_masks, mixed, tuner=tuner)
            expected = torch.cat([one[:half], masked_linear_reference(x[half:], weight, bias, two_masks[1])])
            served = _served(tuner, rows, n_out, k, dtype, "mixed")
            check_close_to_reference(got, expected, f"{what}, two masks, {served}")


def _served(tuner: TritonTuner, rows: int, n_out: int, k: int, dtype: torch.dtype, kind: str) -> str:
    """What calls of ``kind`` take for this key, for error messages."""
    tuned = tuner.tuned_for(rows, n_out, k, dtype)
    choice = tuned.paths.get(kind) if tuned is not None else None
    if tuned is None or choice is None:
        return "the interpreter's tiles"
    return "W*M materialized + cuBLAS" if choice.materialize else f"tiles {tuned.config}"


def check_close_to_reference(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Refuse ``got`` unless every element has ``|got - expected| <= tol * (|expected| + rms(expected))``
    (tol: 1e-4 for IEEE float32 products, 2e-2 for TF32 and half precision): one wrong tile edge in a
    large output fails it."""
    tolerance = 1e-4 if triton_masked.input_precision(got.dtype) == "ieee" else 2e-2
    rms = expected.float().square().mean().sqrt().clamp_min(1e-12)
    chunk_worst = []
    for start in range(0, got.shape[0], 4096):  # in row chunks: a few float32 temporaries of 4096 rows
        want = expected[start : start + 4096].float()
        chunk_worst.append(((got[start : start + 4096].float() - want).abs() / (want.abs() + rms)).max())
    worst = torch.stack(chunk_worst).max().item() if chunk_worst else 0.0  # NaN stays NaN
    if not worst <= tolerance:  # also refuses NaN
        raise KernelUnavailableError(
            f"the triton masked-matmul kernel is wrong on this device at {what} ({got.dtype}): error "
            f"{worst:.2e} > {tolerance:g} of the reference's scale. "
            "Serve with S3R_KERNEL=reference (or kernel=reference) and report it."
        )
