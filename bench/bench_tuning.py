"""Start-up kernel tuning time: what ``Router.prepare_kernels`` costs for a wav2vec2-base backbone.

Run: ``python -m bench.bench_tuning [--max-batch 8] [--max-seconds 120] [--dtype float16]`` on a GPU.
Run it twice: the first run on a machine compiles and times every tile config (Triton's caches are
empty), the second reads Triton's on-disk caches, as a service restart on the same machine would.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from router_core import Backbone, DirectoryStore, MaskRegistry, Router
from router_core.kernels.backend import select_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    backbone = Backbone.from_model(Wav2Vec2Model(Wav2Vec2Config()), device="cuda", dtype=getattr(torch, args.dtype))
    with tempfile.TemporaryDirectory() as folder:
        registry = MaskRegistry(DirectoryStore(folder), backbone.spec(), device="cuda", budget_bytes=2**30)
        backend = select_backend("cuda", "triton")
        router = Router(backbone, registry, backend)
        started = time.perf_counter()
        router.prepare_kernels(args.max_batch, args.max_seconds)  # what the service runs before /readyz
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    print(f"dtype={args.dtype} max_batch={args.max_batch} max_seconds={args.max_seconds}")
    print(f"tune: {elapsed:.1f} s for {len(backend.tuner.choices)} keys")
    for key, tuned in sorted(backend.tuner.choices.items(), key=lambda kv: str(kv[0])):
        for kind, choice in sorted(tuned.paths.items()):
            path = "materialized + cuBLAS" if choice.materialize else "tiles"
            times = f"tiles {choice.tiled_ms:.4f} ms, materialized {choice.materialized_ms:.4f} ms"
            print(f"  {key} {kind}: {path} ({times}); tiles {tuned.config}")


if __name__ == "__main__":
    main()
