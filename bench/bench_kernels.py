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
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from bench.timing import cuda_graph_medians, interleaved_medians, machine_name, markdown_table
from router_core.errors import KernelUnavailableError
from router_core.kernels.backend import select_backend
from router_core.kernels.bits import pack_bits
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
    for k, n in SHAPES:
        weights = [torch.randn(n, k, generator=gen).to(args.device, dtype) for _ in range(args.layers)]
        masks = [pack_bits(topk_keep(torch.randn(n, k, generator=gen), 0.9)).to(args.device) for _ in weights]
        for frames in FRAMES:
            x = torch.randn(frames, k, generator=gen).to(args.device, dtype)
            position = itertools.count()  # shared: consecutive calls, whichever backend, use other weights
            fns = {"dense": _cycling(lambda i, x=x, w=weights: F.linear(x, w[i]), position, len(weights))}
            for name, backend in backends.items():
                call = lambda i, x=x, b=backend, w=weights, m=masks: b.masked_linear(x, w[i], None, m[i])  # noqa: E731
                fns[name] = _cycling(call, position, len(weights))
            timings = {"eager": interleaved_medians(fns, args.repeats, device=args.device, inner=inner)}
            if graph:
                timings["graph"] = cuda_graph_medians(fns, args.repeats, inner)
            for mode, times in timings.items():
                base = times["dense"]
                for name in backends:
                    ms = [f"{t * 1e3:.4f}" for t in (base, times[name])]
                    rows.append([f"{k}->{n}", frames, mode, name, *ms, f"{times[name] / base:.3f}"])
    print(f"device={args.device} ({machine_name()}) dtype={args.dtype} threads={torch.get_num_threads()} "
          f"layers={args.layers} inner={inner}")
    print(markdown_table(["layer", "T", "timing", "backend", "dense ms", "masked ms", "ratio"], rows))


def _cycling(call: Callable[[int], torch.Tensor], position: Iterator[int], count: int) -> Callable[[], torch.Tensor]:
    """A no-argument function that calls ``call(next(position) % count)``."""
    return lambda: call(next(position) % count)


if __name__ == "__main__":
    main()
