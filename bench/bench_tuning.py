"""Start-up kernel tuning time: what ``Router.prepare_kernels`` costs for a wav2vec2-base backbone.

Run: ``python -m bench.bench_tuning [--max-batch 8] [--max-seconds 120] [--dtype float16]`` on a GPU.
Run it twice: the first run on a machine compiles and times every tile config (Triton's caches are
empty), the second reads Triton's on-disk caches, as a service restart on the same machine would.
"""

from __future__ import annotations

import argparse
import time

import torch

from router_core.kernels import triton_masked, triton_tuning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    shapes = [(3072, 768), (768, 3072), (768, 768)]  # fc1, fc2, attention projections of wav2vec2-base
    max_rows = args.max_batch * (int(args.max_seconds * 50) + 1)  # 50 frames per second
    started = time.perf_counter()
    triton_tuning.tune(shapes, getattr(torch, args.dtype), torch.device("cuda"), max_rows)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    print(f"dtype={args.dtype} shapes={shapes} max_rows={max_rows} buckets={triton_tuning.tuning_rows(max_rows)}")
    print(f"tune: {elapsed:.1f} s for {len(triton_masked._tuned)} keys")
    for key, tuned in sorted(triton_masked._tuned.items(), key=lambda kv: str(kv[0])):
        for kind, choice in sorted(tuned.paths.items()):
            path = "materialized + cuBLAS" if choice.materialize else "tiles"
            times = f"tiles {choice.tiled_ms:.4f} ms, materialized {choice.materialized_ms:.4f} ms"
            print(f"  {key} {kind}: {path} ({times}); tiles {tuned.config}")


if __name__ == "__main__":
    main()
