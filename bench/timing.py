"""Timing helpers for the benchmarks: interleaved repeats, median, ratios against a same-run baseline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

import torch

K = TypeVar("K", bound=Hashable)  # what names a timed function: a label, a count


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_samples(
    fns: Mapping[K, Callable[[], object]], repeats: int, warmup: int = 2, device: str = "cpu", inner: int = 1
) -> dict[K, list[float]]:
    """Seconds per call of each function, one sample per round, the functions run round-robin so drift
    hits them all alike.

    Each sample times ``inner`` back-to-back calls between two device synchronisations and divides by
    ``inner``: on a GPU, ``inner > 1`` measures calls as a model issues them (launches queued behind
    running kernels), not one launch plus a host round trip."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[K, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / inner)
    return samples


def interleaved_medians(
    fns: Mapping[K, Callable[[], object]], repeats: int, warmup: int = 2, device: str = "cpu", inner: int = 1
) -> dict[K, float]:
    """Median seconds per call of each function over :func:`interleaved_samples`' rounds."""
    samples = interleaved_samples(fns, repeats, warmup, device, inner)
    return {name: statistics.median(values) for name, values in samples.items()}


def round_ratios(samples: Mapping[K, list[float]], baseline: K) -> dict[K, list[float]]:
    """Each function's time over the baseline's in the same round of :func:`interleaved_samples`.

    A ratio of two medians lets a slow stretch of the machine (seen here: one configuration's time moved
    by up to 30% between processes) land on one side only; the ratio within a round compares calls made
    seconds apart, so its median and spread say how far the comparison itself can be trusted."""
    base = samples[baseline]
    return {name: [t / b for t, b in zip(values, base, strict=True)] for name, values in samples.items()}


def ratio_summary(ratios: list[float]) -> str:
    """``median (min-max, n rounds)`` of per-round ratios."""
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds)"


def cuda_graph_medians(
    fns: Mapping[str, Callable[[], object]], repeats: int, inner: int, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each function with the host taken out: ``inner`` calls of each are
    captured once into a CUDA graph (after warm-up on a side stream, which also runs any autotuning), and
    the graphs are replayed round-robin. What is left is the GPU time of the kernels themselves, as a
    model served from captured graphs would see it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns.values():
            for _ in range(warmup):
                fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graphs = {}
    for name, fn in fns.items():
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
        graphs[name] = graph
    per_replay = interleaved_medians({name: g.replay for name, g in graphs.items()}, repeats, 1, "cuda")
    return {name: seconds / inner for name, seconds in per_replay.items()}


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_name() -> str:
    """The CPU model and core count (and the GPU, when there is one): every figure names its machine."""
    import os

    from router_core.kernels.cpu_schedule import cpu_model

    name = f"{os.cpu_count()} x {cpu_model()}"
    if torch.cuda.is_available():
        name += f", {torch.cuda.get_device_name()}"
    return name
