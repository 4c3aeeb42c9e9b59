"""The one place that picks the masked-matmul backend.

Order of precedence: an explicit ``requested`` argument (the service's setting, ``auto`` included), else the
``S3R_KERNEL`` environment variable (``reference`` | ``cpu`` | ``triton`` | ``auto``) — the only
environment read in ``router_core`` — else ``auto``:

* CUDA device -> ``triton`` (reads packed bits inside the GEMM tile loop);
* CPU device  -> ``cpu`` (fused C++ pass + GEMM), or ``reference`` when the extension cannot be built.

An explicitly requested backend that cannot run raises :class:`KernelUnavailableError` instead of
silently falling back.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from router_core.errors import KernelUnavailableError
from router_core.kernels.reference import (
    Segments,
    masked_linear_reference,
    segmented_masked_linear_reference,
)

if TYPE_CHECKING:
    from router_core.kernels.cpu_schedule import CpuSchedule
    from router_core.kernels.triton_masked import TritonTuner

log = logging.getLogger(__name__)

BACKEND_NAMES = ("reference", "cpu", "triton")
KERNEL_ENV_VAR = "S3R_KERNEL"
CPU_SCHEDULE_FILE = "cpu-schedules.json"

MaskedLinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
SegmentedFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor | None, Sequence[torch.Tensor], Segments], torch.Tensor
]


PrepareFn = Callable[[Iterable[tuple[int, int]], torch.dtype, torch.device, int], None]


def _nothing_to_prepare(
    layer_shapes: Iterable[tuple[int, int]], dtype: torch.dtype, device: torch.device, max_rows: int
) -> None:
    """Backends without tuned tiles have nothing to do before serving."""


@dataclass(frozen=True)
class KernelBackend:
    """A masked-linear implementation: single-mask and segmented (mixed-mask) entry points, and
    ``prepare(layer_shapes, dtype, device, max_rows)``, run once before serving (the Triton backend
    autotunes its tiles there for every ``(out, in)`` layer shape and batch size up to ``max_rows``)."""

    name: str
    masked_linear: MaskedLinearFn
    segmented_masked_linear: SegmentedFn
    prepare: PrepareFn = _nothing_to_prepare
    tuner: TritonTuner | CpuSchedule | None = None  # what ``prepare`` and later calls chose (reports read it)


REFERENCE = KernelBackend("reference", masked_linear_reference, segmented_masked_linear_reference)


def _cpu_backend(cache_dir: Path | None, materialized_bytes: int) -> KernelBackend:
    from router_core.kernels import cpu
    from router_core.kernels.cpu_schedule import CpuSchedule
    from router_core.kernels.materialized import MaterializedWeights

    cpu.load_extension()  # raises KernelUnavailableError when it cannot be built
    schedule = CpuSchedule(cache_dir / CPU_SCHEDULE_FILE if cache_dir is not None else None)
    kept = MaterializedWeights(materialized_bytes) if materialized_bytes > 0 else None
    return KernelBackend(
        "cpu",
        functools.partial(cpu.masked_linear_cpu, schedule=schedule, materialized=kept),
        functools.partial(cpu.segmented_masked_linear_cpu, schedule=schedule, materialized=kept),
        functools.partial(cpu.tune_schedule, schedule),
        schedule,
    )


def _triton_backend(device: torch.device) -> KernelBackend:
    try:
        import triton

        from router_core.kernels import triton_masked, triton_tuning
    except Exception as exc:  # triton not installed, or no usable driver
        raise KernelUnavailableError(f"triton is not usable here: {exc}") from exc
    if device.type != "cuda" and not triton.knobs.runtime.interpret:
        raise KernelUnavailableError(
            f"the triton backend needs a CUDA device (got {device}); set TRITON_INTERPRET=1 only for tests"
        )
    tuner = triton_masked.TritonTuner()  # this backend's tuning state: tiles and paths chosen per shape
    return KernelBackend(
        "triton",
        functools.partial(triton_masked.masked_linear_triton, tuner=tuner),
        functools.partial(triton_masked.segmented_masked_linear_triton, tuner=tuner),
        functools.partial(triton_tuning.tune, tuner=tuner),
        tuner,
    )


def select_backend(
    device: torch.device | str,
    requested: str | None = None,
    cache_dir: str | Path | None = None,
    materialized_bytes: int = 0,
) -> KernelBackend:
    """Resolve the backend for ``device`` once; see the module docstring for the rules. ``cache_dir``
    keeps what a backend timed on this machine (the CPU schedules) across restarts; ``materialized_bytes``
    lets the CPU backend keep masked weights dense for the masks in use (:mod:`materialized`)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    device = torch.device(device)
    choice = (requested or os.environ.get(KERNEL_ENV_VAR) or "auto").strip().lower()
    if choice not in (*BACKEND_NAMES, "auto"):
        raise KernelUnavailableError(
            f"unknown kernel backend {choice!r}; choose one of {', '.join(BACKEND_NAMES)} or auto"
        )
    if choice == "reference":
        return REFERENCE
    if choice == "cpu":
        if device.type != "cpu":
            raise KernelUnavailableError(f"the cpu kernel backend runs on CPU tensors only, not {device}")
        return _cpu_backend(cache, materialized_bytes)
    if choice == "triton":
        return _triton_backend(device)
    # auto
    try:
        return _triton_backend(device) if device.type == "cuda" else _cpu_backend(cache, materialized_bytes)
    except KernelUnavailableError as exc:
        log.warning("falling back to the reference masked-linear kernel: %s", exc)
        return REFERENCE
