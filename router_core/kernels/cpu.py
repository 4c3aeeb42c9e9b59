"""Fast CPU masked linear ``y = x (W * M)^T + b``: the C++ extension in ``csrc/apply_bits.cpp`` unpacks the
bits and applies them to ``W`` in one fused pass (8 weights per bit byte), then MKL/oneDNN's GEMM runs.

Two ways to schedule it (and the plain-torch reference as a third), timed per machine, layer shape and
row bucket at start-up by :mod:`router_core.kernels.cpu_schedule`:

* **tiled** (small ``x``: a few hundred frames): ``W`` is masked block by block (``block_rows`` rows,
  about 2 MB) into a per-thread buffer that stays in L2, and each block's GEMM runs there, one
  single-threaded GEMM per block, blocks spread over the threads. ``W`` and the bits cross the memory
  bus once, as in a dense GEMM; but every block's GEMM reads all of ``x`` again.
* **full pass** (large ``x``): the whole ``W * M`` is written into a reused buffer, then one GEMM. The
  extra cost is one weight copy, small next to a GEMM over many frames.

The naive path (unpack to bytes, ``torch.where``, linear) touches ``W`` three times and the unpacked
mask twice.

A mixed-mask batch (rows sorted into one segment per mask) runs in **one parallel region**
(``segmented_linear`` in the extension): each thread takes (segment, block of ``W``) tasks and runs their
GEMMs single-threaded. A segment of a few hundred rows split over the cores by the BLAS runs 10-25% slower
per row than one GEMM over the whole batch (2 Xeon cores); side by side, one GEMM per core, the segments
run near the whole batch's speed.

The extension is compiled on first use with ``torch.utils.cpp_extension`` (needs a C++ compiler and
``ninja``); :func:`load_extension` raises :class:`KernelUnavailableError` when that is impossible.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO

import torch
import torch.nn.functional as F

from router_core.errors import KernelUnavailableError
from router_core.kernels.bits import check_packed_for
from router_core.kernels.cpu_schedule import CpuSchedule
from router_core.kernels.materialized import MaterializedWeights
from router_core.kernels.reference import DENSE_SEGMENT, Segments, masked_linear_reference
from router_core.kernels.workspace import MASKED_WEIGHTS

_SOURCE = Path(__file__).parent / "csrc" / "apply_bits.cpp"


_EXTENSION = "s3r_apply_bits"


@functools.lru_cache(maxsize=1)
def load_extension() -> ModuleType:
    """Compile (once per machine, cached by torch) and import the ``apply_bits`` extension.

    torch guards each load, even one with nothing to rebuild, with a plain ``lock`` file in the build folder
    that it deletes when done; a process killed in between (a restart during start-up) leaves the file, and
    every later load waits on it forever. So loads here take an ``flock`` on the folder first, which the
    kernel releases when its holder dies: whoever holds it is the only loader, and any ``lock`` file it finds
    was left by a dead one and is removed. A folder this process cannot write (an image built the library
    and the service runs as another user, or on a read-only file system) can take no lock: its library is
    imported as built."""
    try:
        from torch.utils.cpp_extension import _get_build_directory, load  # the folder torch builds in (torch pinned)

        build = Path(_get_build_directory(_EXTENSION, verbose=False))
        try:
            guard = (build / "s3r.flock").open("w")
        except OSError:
            return _import_built(build)
        with guard:
            if _lock(guard):
                (build / "lock").unlink(missing_ok=True)
            return load(
                name=_EXTENSION,
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except Exception as exc:  # compiler missing, ninja missing, build error, nothing built in a read-only folder
        raise KernelUnavailableError(f"the CPU masked-weight extension could not be built: {exc}") from exc


def _lock(guard: IO[str]) -> bool:
    """Take the exclusive ``flock`` (waiting for another loader); False where the file system has none (some
    network file systems), and then torch's own lock file alone guards the load, as it did before."""
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


def _import_built(build: Path) -> ModuleType:
    """The library already built in ``build``, imported without building (as torch imports it)."""
    library = build / f"{_EXTENSION}.so"
    spec = importlib.util.spec_from_file_location(_EXTENSION, library)
    if not library.is_file() or spec is None or spec.loader is None:
        raise FileNotFoundError(f"{build} cannot be written, and holds no built {library.name}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def masked_weight_cpu(weight: torch.Tensor, bits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``W * M`` as a dense ``[N, K]`` tensor, built in one fused pass (into ``out`` when given):
    ``weight [N, K]``, ``bits [N, ceil(K/8)]`` uint8, ``out [N, K]`` contiguous in the weight's dtype."""
    check_packed_for(weight, bits)
    if out is None:
        out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    return load_extension().apply_bits_out(weight, bits, out)


# Blocks of ~2 MB: 256 rows at K=768, 128 at K=3072 (fp32). Which schedule runs is :mod:`cpu_schedule`'s.
_BLOCK_BYTES = 2 << 20


def block_rows_for(k: int, element_size: int) -> int:
    """Rows of ``W`` per block: the power of two that keeps a block near ``_BLOCK_BYTES``, in [16, 256]."""
    rows = max(1, _BLOCK_BYTES // (k * element_size))
    return max(16, min(256, 1 << (rows.bit_length() - 1)))


def masked_linear_tiled(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor, block_rows: int
) -> torch.Tensor:
    """``x [M, K] @ (W * M)^T + b`` -> ``[M, N]``, ``W`` masked ``block_rows`` rows at a time (see module doc);
    ``weight [N, K]``, ``bias [N]`` or ``None``, ``bits [N, ceil(K/8)]`` uint8."""
    check_packed_for(weight, bits)
    assert x.dim() == 2 and x.shape[1] == weight.shape[1], f"x {tuple(x.shape)}, weight {tuple(weight.shape)}"
    return load_extension().masked_linear_tiled(x, weight, bias, bits, block_rows)


def masked_linear_full_pass(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor
) -> torch.Tensor:
    """``x [..., K] @ (W * M)^T + b``: the whole masked weight in this thread's scratch buffer, then one GEMM.

    The result must not alias the buffer: ``F.linear`` writes a new tensor, and autograd is not supported
    on this path (inference only)."""
    return F.linear(x, masked_weight_cpu(weight, bits, MASKED_WEIGHTS.get(weight)), bias)


def run_schedule(
    schedule: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor
) -> torch.Tensor:
    """``x [..., K] @ (W * M)^T + b`` -> ``[..., N]`` by the named schedule (see :mod:`cpu_schedule`):
    ``full_pass``, ``reference``, ``tiled:R`` (blocks of ``R`` rows), ``tiled`` (:func:`block_rows_for`) or
    ``split:P`` (``W`` cut into ``P`` equal blocks per thread: the fewest passes over ``x``)."""
    if schedule == "full_pass":
        return masked_linear_full_pass(x, weight, bias, bits)
    if schedule == "reference":
        return masked_linear_reference(x, weight, bias, bits)
    n, k = weight.shape
    family, _, size = schedule.partition(":")
    if family == "split":
        block_rows = -(-n // (int(size) * torch.get_num_threads()))
    else:
        block_rows = int(size) if size else block_rows_for(k, weight.element_size())
    rows = masked_linear_tiled(x.reshape(-1, k), weight, bias, bits, block_rows)
    return rows.reshape(*x.shape[:-1], n)  # [..., N]


_UNTIMED = CpuSchedule()  # the size rule, for calls without a schedule of their own


def masked_linear_cpu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor,
    schedule: CpuSchedule | None = None, materialized: MaterializedWeights | None = None,
) -> torch.Tensor:
    """``x @ (W * M)^T + b`` for ``x [..., K]``, ``weight [N, K]``, ``bits [N, ceil(K/8)]``; returns
    ``[..., N]``: a dense GEMM on ``W * M`` kept in ``materialized`` when it holds (or can take) this
    mask's copy, else the schedule ``schedule`` chose for this shape and row count on this machine."""
    dense = _kept_dense(weight, bits, materialized)  # [N, K]
    if dense is not None:
        return F.linear(x, dense, bias)
    n, k = weight.shape
    choice = (schedule or _UNTIMED).choose(x.numel() // k, n, k, x.dtype)
    return run_schedule(choice, x, weight, bias, bits)


def _masked_copy(weight: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return masked_weight_cpu(weight, bits)  # a new [N, K] tensor, never the shared scratch buffer


def tune_schedule(
    schedule: CpuSchedule, layer_shapes: Iterable[tuple[int, int]], dtype: torch.dtype, device: torch.device,
    max_rows: int,
) -> None:
    """The CPU backend's ``prepare``: time the schedules for every layer shape and row bucket."""
    schedule.tune(layer_shapes, dtype, device, max_rows, run_schedule)


def segmented_masked_linear_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits_stack: Sequence[torch.Tensor],
    segments: Segments,
    schedule: CpuSchedule | None = None,
    materialized: MaterializedWeights | None = None,
) -> torch.Tensor:
    """Mixed-mask linear over ``x [R, K]`` -> ``[R, N]``: rows ``start:end`` of segment ``s`` times
    ``W * M_s`` (``W`` itself for a :data:`DENSE_SEGMENT`).

    One segment is one masked linear (the schedule timed for its size). Several run in one parallel region
    (:func:`segment_blocks`): each thread takes (segment, block of ``W``) tasks and runs their GEMMs
    single-threaded, on the mask's kept-dense copy when ``materialized`` holds it, else masking the block
    into an L2-sized buffer first. Where that region would cut ``W`` too thin for the threads at hand, each
    segment runs its own masked linear instead, one after another; so do segments of fewer than
    ``_MIN_SEGMENT_ROWS`` rows on average."""
    spans = segments.spans()
    if len(spans) == 1 and spans[0][:2] == (0, x.shape[0]):
        return _one_segment(x, weight, bias, bits_stack, spans[0][2], schedule, materialized)
    n, k = weight.shape
    blocks = segment_blocks(n, k, weight.element_size(), len(spans), torch.get_num_threads())
    if blocks is None or x.shape[0] < _MIN_SEGMENT_ROWS * len(spans):
        out = x.new_empty(x.shape[0], n)  # [R, N]
        for start, end, mask_id in spans:
            out[start:end] = _one_segment(x[start:end], weight, bias, bits_stack, mask_id, schedule, materialized)
        return out
    weights, bits = [], []
    for _, _, mask_id in spans:
        dense = None if mask_id == DENSE_SEGMENT else _kept_dense(weight, bits_stack[mask_id], materialized)
        weights.append(weight if dense is None else dense)  # [N, K]
        bits.append(None if dense is not None or mask_id == DENSE_SEGMENT else bits_stack[mask_id])
    masked_rows, dense_rows = blocks
    return load_extension().segmented_linear(
        x, bias, [a for a, _, _ in spans], [b for _, b, _ in spans], weights, bits, masked_rows, dense_rows
    )


def _one_segment(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits_stack: Sequence[torch.Tensor],
    mask_id: int, schedule: CpuSchedule | None, materialized: MaterializedWeights | None,
) -> torch.Tensor:
    if mask_id == DENSE_SEGMENT:
        return F.linear(x, weight, bias)
    return masked_linear_cpu(x, weight, bias, bits_stack[mask_id], schedule, materialized)


def _kept_dense(
    weight: torch.Tensor, bits: torch.Tensor, materialized: MaterializedWeights | None
) -> torch.Tensor | None:
    """This mask's ``W * M [N, K]`` kept dense, when there is (or can be) one."""
    return None if materialized is None else materialized.get(weight, bits, _masked_copy)


# A masked block of W in the one-region path: ~2.5 MB, a little over L2 on 2 MB-L2 cores and well inside
# L3. Blocks of 64-256 rows cost 10-30% more there (every block's GEMM packs its segment's x again).
_SEGMENT_BLOCK_BYTES = 5 << 19
_MIN_TASK_ROWS = 128  # narrower single-threaded GEMMs lose more than the one region gains
# Segments of fewer rows on average (short clips) go one by one: there the masking, 8x W per 8 masks, is
# the cost, and the BLAS's own threads over each segment measured as fast or faster (2 Xeon cores).
_MIN_SEGMENT_ROWS = 128


def segment_blocks(n: int, k: int, element_size: int, n_segments: int, threads: int) -> tuple[int, int] | None:
    """Rows of ``W`` per task in the one-region mixed-mask path: ``(masked, dense)``, or ``None`` where
    the tasks would be narrower than ``_MIN_TASK_ROWS`` (many threads, few segments: the BLAS's own
    threads then do better, segment by segment).

    Each segment is cut into at least 2 parts and enough for ``2 * threads`` tasks in all, so that no
    thread waits long on another; a masked block is also kept near ``_SEGMENT_BLOCK_BYTES``."""
    parts = max(2, -(-2 * threads // n_segments))
    dense = -(-n // parts)
    if dense < _MIN_TASK_ROWS and n >= 2 * _MIN_TASK_ROWS:
        return None
    by_bytes = max(64, _SEGMENT_BLOCK_BYTES // (k * element_size) // 64 * 64)
    return min(by_bytes, dense), dense
