"""Which CPU schedule runs a masked linear, timed on the machine at hand (the CPU backend's ``prepare``).

These schedules compute the same ``y = x (W * M)^T + b`` (:mod:`router_core.kernels.cpu`):

* ``tiled:R`` — ``W * M`` block by block (``R`` rows of ``W`` per block, in L2), one GEMM per block
  (re-reads ``x`` per block: smaller blocks stay in cache, larger ones re-read ``x`` less);
* ``split:P`` — the same with ``W`` cut into ``P`` equal blocks per thread: few, large blocks, so ``x`` is
  read only ``P`` times per thread (with many frames, ``x`` is the larger operand of ``3072 -> 768``);
* ``full_pass`` — the whole ``W * M`` into a reused buffer by the fused C++ pass, then one GEMM;
* ``reference`` — ``W * M`` by plain torch ops (unpack, ``where``), then one GEMM.

Which is fastest depends on the CPU (cache sizes, memory bandwidth, the BLAS), the layer shape and the
row count: fixed thresholds tuned on one AMD EPYC missed by 10–90% on an Intel Xeon. So the start-up
times them on random data for every ``(N, K)`` layer shape and every row bucket up to the largest
batch, cycling through enough copies of the weights to leave the last-level cache as a model's many
layers do (buckets above :data:`TIMED_ROWS` take the choice of the largest timed one: there the GEMM dwarfs
the masking and the schedules converge), keeps the fastest, and writes the choices to a JSON file keyed by
the machine (CPU model, cores, torch version, threads), so a restart on the same machine times nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from router_core.kernels.bits import pack_bits
from router_core.kernels.buckets import LAST_BUCKET, ROW_BUCKETS, row_bucket

log = logging.getLogger(__name__)

SCHEDULES = ("tiled:64", "tiled:128", "tiled:256", "split:1", "split:2", "full_pass", "reference")
TIMED_ROWS = 1024  # the largest row bucket timed at start-up
TILED_MAX_X_BYTES = 4 << 20  # the untimed rule: tiled while x is at most this many bytes, else full pass
COLD_BYTES = 32 << 20  # weight copies cycled through while timing: more than a last-level cache holds
MAX_COPIES = 8

Timer = Callable[[Callable[[], object]], float]
RunSchedule = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
Key = tuple[int, int, str, int]  # (N, K, dtype, row bucket)


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_key() -> str:
    """What the choices depend on besides the shapes: the CPU, its cores, torch and its thread count."""
    return f"{cpu_model()}|{os.cpu_count()} cpus|torch {torch.__version__}|{torch.get_num_threads()} threads"


class CpuSchedule:
    """The CPU backend's schedule per ``(N, K, dtype, row bucket)``: timed by :meth:`tune`, else the
    untimed size rule. ``cache_file`` (optional) keeps the timed choices per machine across restarts;
    ``timer`` (seconds per call of a thunk) can be stood in for in tests."""

    def __init__(self, cache_file: Path | None = None, timer: Timer = median_seconds) -> None:
        self.cache_file = cache_file
        self.timer = timer
        self.choices: dict[Key, str] = {}
        self.timings: dict[Key, dict[str, float]] = {}  # seconds per call of each schedule, as timed
        self._machine = machine_key()
        self._load()

    def choose(self, rows: int, n_out: int, k: int, dtype: torch.dtype) -> str:
        """The schedule for ``rows`` rows of an ``[n_out, k]`` layer."""
        bucket = row_bucket(rows)
        timed = self.choices.get((n_out, k, str(dtype), bucket))
        if timed is None and bucket > TIMED_ROWS:
            timed = self.choices.get((n_out, k, str(dtype), TIMED_ROWS))
        if timed is not None:
            return timed
        element = dtype.itemsize
        return "tiled" if rows * k * element <= TILED_MAX_X_BYTES else "full_pass"  # tiled: default blocks

    def tune(
        self,
        layer_shapes: Iterable[tuple[int, int]],
        dtype: torch.dtype,
        device: torch.device,
        max_rows: int,
        run: RunSchedule,
    ) -> None:
        """Time every schedule (``run(schedule, x, W, b, bits)``) for each layer shape and row bucket up
        to ``min(max_rows, TIMED_ROWS)`` not yet chosen on this machine; keep the fastest; save."""
        gen = torch.Generator().manual_seed(0)
        new = 0
        for n_out, k in sorted(set(layer_shapes)):
            copies = max(1, min(MAX_COPIES, COLD_BYTES // (n_out * k * dtype.itemsize)))
            layers = [
                ((torch.randn(n_out, k, generator=gen) / k**0.5).to(dtype),  # [N, K]
                 pack_bits(torch.rand(n_out, k, generator=gen) < 0.9))  # [N, ceil(K/8)]
                for _ in range(copies)
            ]
            bias = torch.zeros(n_out, dtype=dtype)  # [N]
            for bucket in (*ROW_BUCKETS, LAST_BUCKET):
                rows = min(bucket, max_rows)
                key = (n_out, k, str(dtype), bucket)
                if key not in self.choices:
                    x = torch.randn(rows, k, generator=gen).to(dtype)  # [R, K]
                    times = self.timings[key] = self._time(run, x, layers, bias)
                    self.choices[key] = min(times, key=lambda s: times[s])
                    new += 1
                if bucket >= max_rows or bucket >= TIMED_ROWS:
                    break
        if new:
            log.info("cpu kernel schedules timed for %d keys on %s: %s", new, self._machine, self.choices)
            self._save()

    def _time(self, run: RunSchedule, x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]],
              bias: torch.Tensor) -> dict[str, float]:
        """Seconds per pass of each schedule over the weight copies ``layers`` (``(W, bits)`` each)."""
        return {s: self.timer(functools.partial(_each_layer, s, x, run, layers, bias)) for s in SCHEDULES}

    def _load(self) -> None:
        if self.cache_file is None or not self.cache_file.is_file():
            return
        try:
            saved = json.loads(self.cache_file.read_text(encoding="utf-8")).get(self._machine, {})
            self.choices.update({_key(k): v for k, v in saved.items() if v in SCHEDULES})  # others: timed again
        except (OSError, ValueError, AttributeError) as exc:  # a damaged cache is timed again, never fatal
            log.warning("ignoring the cpu schedule cache %s: %s", self.cache_file, exc)

    def _save(self) -> None:
        if self.cache_file is None:
            return
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8")) if self.cache_file.is_file() else {}
        except (OSError, ValueError):
            data = {}
        data[self._machine] = {"|".join(map(str, k)): v for k, v in sorted(self.choices.items())}
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(self.cache_file)
        except OSError as exc:  # a read-only home: the choices hold for this process only
            log.warning("cannot write the cpu schedule cache %s: %s", self.cache_file, exc)


def _each_layer(schedule: str, x: torch.Tensor, run: RunSchedule, layers: list[tuple[torch.Tensor, torch.Tensor]],
                bias: torch.Tensor) -> None:
    for weight, bits in layers:
        run(schedule, x, weight, bias, bits)


def _key(text: str) -> Key:
    n_out, k, dtype, bucket = text.split("|")
    return int(n_out), int(k), dtype, int(bucket)
