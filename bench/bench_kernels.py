"""(a) Masked linear per kernel backend vs dense ``F.linear`` at wav2vec2-base FFN shapes.

Run: ``python -m bench.bench_kernels [--device cuda] [--layers 24] [--graph]``. Prints a table of
times and ratios, each ratio against the dense ``F.linear`` measured in the same run. Target: ratio
<= 1.05.

On a GPU, ``--graph`` adds a second timing of every call with the host taken out (calls captured in a
CUDA graph and replayed): at these shapes one dense GEMM takes about as long as one launch, so the
eager figures mix kernel speed with per-call host cost, and the graph figures show the kernels alone.

``--layers N`` cycles every call (dense and masked alike) through N distinct weight matrices, as a
forward pass does (wav2vec2-base has 24 FFN matrices, 226 MB in fp32): no call finds its weights in
the cache left by the previous one. The default, 1, reuses one matrix, which keeps the dense
baseline's weights hot in the last-level cache.

``--mixed S`` times a mixed-mask layer instead: S segments of T frames, each with its own mask, against one
dense ``F.linear`` over all S x T rows, both as the backend runs a mixed batch (``segmented``) and as S
single-mask calls one after another (``one by one``). That is target (c) at the level of one layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from bench.timing import cuda_graph_medians, interleaved_medians, machine_name, markdown_table
from router_core.errors import KernelUnavailableError
from router_core.kernels.backend import KernelBackend, select_backend
from router_core.kernels.bits import pack_bits
from router_core.kernels.reference import DENSE_SEGMENT, Segments
from router_core.mask_builder import topk_keep

SHAPES = [(768, 3072), (3072, 768)]  # (in K, out N): fc1 and fc2 of wav2vec2-base
FRAMES = [50, 250, 1000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--layers", type=int, default=1, help="distinct weight matrices cycled through")
    parser.add_argument("--inner", type=int, default=None,
                        help="calls per timed sample (default: 20 on a GPU, 1 on the CPU)")
    parser.add_argument("--graph", action="store_true", help="also time CUDA-graph replays (GPU only)")
    parser.add_argument("--materialized-mb", type=float, default=0.0,
                        help="CPU: also time the cpu backend keeping masked weights dense within this budget")
    parser.add_argument("--mixed", type=int, default=0, help="time S segments with S masks per call (see above)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    inner = args.inner or (20 if args.device.startswith("cuda") else 1)
    graph = args.graph and args.device.startswith("cuda")
    backends = {}
    for name in ("reference", "cpu", "triton"):
        try:
            backends[name] = select_backend(args.device, name)
        except KernelUnavailableError as exc:
            print(f"skip {name}: {exc}")
    if args.materialized_mb > 0 and "cpu" in backends:
        backends["cpu+dense"] = select_backend(args.device, "cpu", materialized_bytes=int(args.materialized_mb * 2**20))
    for backend in backends.values():  # as the service does at start-up: Triton tiles, CPU schedules
        backend.prepare([(n, k) for k, n in SHAPES], dtype, torch.device(args.device), max(FRAMES))
    rows = []
    gen = torch.Generator().manual_seed(0)
    segments = max(1, args.mixed)
    for k, n in SHAPES:
        weights = [torch.randn(n, k, generator=gen).to(args.device, dtype) for _ in range(args.layers)]
        masks = [[pack_bits(topk_keep(torch.randn(n, k, generator=gen), 0.9)).to(args.device)
                  for _ in range(segments)] for _ in weights]  # [layer][segment]
        for frames in FRAMES:
            x = torch.randn(segments * frames, k, generator=gen).to(args.device, dtype)
            position = itertools.count()  # shared: consecutive calls, whichever backend, use other weights
            fns = {"dense": _cycling(lambda i, x=x, w=weights: F.linear(x, w[i]), position, len(weights))}
            for name, backend in backends.items():
                for label, call in _calls(backend, x, weights, masks, args.mixed, frames).items():
                    fns[f"{name} {label}".strip()] = _cycling(call, position, len(weights))
            timings = {"eager": interleaved_medians(fns, args.repeats, device=args.device, inner=inner)}
            if graph:
                timings["graph"] = cuda_graph_medians(fns, args.repeats, inner)
            for mode, times in timings.items():
                base = times["dense"]
                for name in [f for f in fns if f != "dense"]:
                    ms = [f"{t * 1e3:.4f}" for t in (base, times[name])]
                    rows.append([f"{k}->{n}", frames, mode, name, *ms, f"{times[name] / base:.3f}"])
    print(f"device={args.device} ({machine_name()}) dtype={args.dtype} threads={torch.get_num_threads()} "
          f"layers={args.layers} inner={inner} segments={segments}")
    print(markdown_table(["layer", "T", "timing", "backend", "dense ms", "masked ms", "ratio"], rows))


def _calls(backend: KernelBackend, x: torch.Tensor, weights: list[torch.Tensor], masks: list[list[torch.Tensor]],
           mixed: int, frames: int) -> dict[str, Callable[[int], torch.Tensor]]:
    """Calls of layer ``i``: one mask over all of ``x``; or, with ``mixed`` segments of ``frames`` rows, the
    backend's mixed-mask call and the same as single-mask calls one after another."""
    if not mixed:
        return {"": lambda i: backend.masked_linear(x, weights[i], None, masks[i][0])}
    plan = Segments(tuple(range(0, (mixed + 1) * frames, frames)), tuple(range(mixed)))
    loop = segments_one_by_one(backend).segmented_masked_linear
    return {"segmented": lambda i: backend.segmented_masked_linear(x, weights[i], None, masks[i], plan),
            "one by one": lambda i: loop(x, weights[i], None, masks[i], plan)}


def segments_one_by_one(backend: KernelBackend) -> KernelBackend:
    """``backend`` with its mixed-mask entry point replaced by one single-mask call per segment, one after
    another: what a mixed batch costs without a mixed-mask path, for comparison with it."""

    def one_by_one(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   bits_stack: Sequence[torch.Tensor], segments: Segments) -> torch.Tensor:
        parts = [F.linear(x[a:b], weight, bias) if m == DENSE_SEGMENT
                 else backend.masked_linear(x[a:b], weight, bias, bits_stack[m]) for a, b, m in segments.spans()]
        return torch.cat(parts)  # [R, N]

    return dataclasses.replace(backend, segmented_masked_linear=one_by_one)


def _cycling(call: Callable[[int], torch.Tensor], position: Iterator[int], count: int) -> Callable[[], torch.Tensor]:
    """A no-argument function that calls ``call(next(position) % count)``."""
    return lambda: call(next(position) % count)


if __name__ == "__main__":
    main()
