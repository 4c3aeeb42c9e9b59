"""Where one encoder pass spends its device time: the ``torch.profiler`` table of its top kernels.

Run: ``python -m bench.profile_forward [--device cuda] [--dtype float16] [--seconds 5]``. A wav2vec2-base-shaped
backbone (random weights), one clip, dense: on an H200 a 5 s clip took 14 ms in fp16 with or without
CUDA graphs (2026-12-04), far above what its ~70 GFLOP need; this names the kernels that take it.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Wav2Vec2Config, Wav2Vec2Model

from bench.timing import machine_name
from router_core import Backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=20, help="kernels listed")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    backbone = Backbone.from_model(Wav2Vec2Model(Wav2Vec2Config()), device=args.device, dtype=dtype)
    waves = [torch.randn(int(args.seconds * 16_000)) * 0.1]  # [T]: one clip
    on_gpu = args.device.startswith("cuda")
    for _ in range(3):  # warm: cuDNN picks its algorithms, the allocator fills
        backbone.encode(waves)
    if on_gpu:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with profile(activities=activities) as prof:
        for _ in range(5):
            backbone.encode(waves)
        if on_gpu:
            torch.cuda.synchronize()
    print(f"device={args.device} ({machine_name()}) dtype={args.dtype} clip={args.seconds:g} s, 5 passes")
    sort = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
