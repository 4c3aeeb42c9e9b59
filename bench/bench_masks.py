"""Many masks: batch cost by distinct masks, memory per registered mask, load times, an LRU under Zipf traffic.

Run: ``python -m bench.bench_masks [--device cuda] [--skip-batches]`` (``bench/gpu_check.sh`` runs it on a
GPU). A wav2vec2-base-shaped backbone (random weights) with random 0.9-keep feed-forward masks:

1. **Batches** of 8 and 32 items (5 s clips) carrying 1, 8 or 32 distinct masks: throughput and
   p50/p95 latency of ``Router.forward``, and its time against the same batch with one mask in the same
   round (median and range of the rounds; target at 8 masks: <= 1.10x).
2. **Memory** with 1, 100 and 1,000 masks resident (budget set to hold them): growth of the process
   (host RSS, or CUDA memory allocated) per mask, against the packed-bit lower bound (1 bit per masked
   weight plus the head's float32 weights).
3. **Load time** of one mask: cold (read from the store, checksum, decode, validate, to the device) and
   the hit path.
4. **LRU under Zipf traffic**: 1,000 masks stored, a budget that holds 100, requests drawn with
   ``P(rank r) ~ 1 / r^s``: hit ratio, evictions per 1,000 requests, and the p95 cost of a miss.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from bench.timing import interleaved_samples, machine_name, markdown_table, ratio_summary, round_ratios
from router_core import Backbone, DirectoryStore, HeadSpec, MaskRegistry, Router, encode_mask, random_mask
from router_core.mask_file import decode_mask


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _resident_memory(device: str) -> int:
    """Bytes the process holds where masks live: CUDA memory allocated, or host RSS."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _named(template: bytes, name: str) -> bytes:
    """The template mask file under another name (same bits and head): 1,000 masks without 1,000 top-k
    selections over 85M scores."""
    return encode_mask(dataclasses.replace(decode_mask(template), name=name))


def _batches(router: Router, names: list[str], seconds: float, repeats: int, device: str) -> list[list[str]]:
    rows = []
    for size in (8, 32):
        waves = [torch.randn(int(seconds * 16_000)) * 0.1 for _ in range(size)]
        batches = {distinct: [names[i % distinct] for i in range(size)] for distinct in (1, 8, 32)}
        times = interleaved_samples(
            {distinct: functools.partial(router.forward, waves, masks) for distinct, masks in batches.items()},
            repeats, warmup=1, device=device,
        )
        ratios = round_ratios(times, 1)
        for distinct, samples in times.items():
            p50 = statistics.median(samples)
            p95 = _percentile(samples, 0.95)
            rate = size * seconds / p50
            rows.append([size, distinct, f"{rate:.1f}", f"{p50:.3f}", f"{p95:.3f}", ratio_summary(ratios[distinct])])
    return rows


def _memory(backbone: Backbone, template: bytes, folder: str, device: str) -> tuple[list[list[str]], int]:
    mask = decode_mask(template)
    masked_weights = sum(backbone.spec().layer_shapes[n][0] * backbone.spec().layer_shapes[n][1]
                         for n in mask.layer_bits)
    lower_bound = masked_weights // 8 + 4 * (mask.head_weight.numel() + mask.head_bias.numel())
    store = DirectoryStore(f"{folder}/memory")
    for i in range(1000):
        store.write(f"m{i:04d}", _named(template, f"m{i:04d}"))
    rows = []
    registry = MaskRegistry(store, backbone.spec(), device=device, budget_bytes=2**45)
    before, loaded = _resident_memory(device), 0
    for count in (1, 100, 1000):  # one registry growing: every figure from the same baseline
        for i in range(loaded, count):
            registry.get(f"m{i:04d}")
        loaded = count
        grown = _resident_memory(device) - before
        rows.append([count, f"{grown / count / 2**20:.2f}", f"{registry.resident_bytes / count / 2**20:.2f}",
                     f"{lower_bound / 2**20:.2f}", f"{grown / count / lower_bound:.2f}"])
    return rows, lower_bound


def _loads(backbone: Backbone, folder: str, device: str) -> list[list[str]]:
    registry = MaskRegistry(DirectoryStore(f"{folder}/memory"), backbone.spec(), device=device, budget_bytes=2**45)
    cold, hit = [], []
    for i in range(20):
        start = time.perf_counter()
        registry.get(f"m{i:04d}")
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        registry.get(f"m{i:04d}")
        hit.append(time.perf_counter() - start)
    return [["cold (store -> device)", f"{statistics.median(cold) * 1e3:.1f}", f"{_percentile(cold, 0.95) * 1e3:.1f}"],
            ["hit", f"{statistics.median(hit) * 1e6:.1f} us", f"{_percentile(hit, 0.95) * 1e6:.1f} us"]]


def _zipf(backbone: Backbone, template: bytes, folder: str, device: str, requests: int, s: float) -> list[str]:
    one = MaskRegistry(DirectoryStore(f"{folder}/memory"), backbone.spec(), device=device).get("m0000").nbytes
    registry = MaskRegistry(DirectoryStore(f"{folder}/memory"), backbone.spec(), device=device,
                            budget_bytes=100 * one)
    rng = random.Random(0)
    names = [f"m{i:04d}" for i in range(1000)]
    weights = [1 / (rank + 1) ** s for rank in range(1000)]
    draws = rng.choices(names, weights, k=requests)
    hits, misses = [], []
    for name in draws:
        resident = registry.is_resident(name)
        start = time.perf_counter()
        registry.get(name)
        (hits if resident else misses).append(time.perf_counter() - start)
    p95_miss = _percentile(misses, 0.95) if misses else 0.0
    return [f"{len(hits) / requests:.3f}", f"{registry.stats.evictions * 1000 / requests:.0f}",
            f"{_percentile(hits, 0.95) * 1e6:.1f} us", f"{p95_miss * 1e3:.1f} ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5000, help="Zipf draws")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s")
    parser.add_argument("--skip-batches", action="store_true", help="only memory, loads and the LRU")
    parser.add_argument("--batches-only", action="store_true", help="only the batches")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = Backbone.from_model(Wav2Vec2Model(Wav2Vec2Config()), device=args.device)
    head = HeadSpec(kind="ctc", vocab=["<pad>", "|", *"abcdefghijklmnopqrstuvwxyz'"])
    template = encode_mask(random_mask(backbone.spec(), "template", head, backbone.default_layer_names(), 0.9, 0))
    print(f"wav2vec2-base shape, 0.9-keep FFN masks, {args.device}, {machine_name()}")
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_batches:
            registry = MaskRegistry(DirectoryStore(f"{folder}/batch"), backbone.spec(), device=args.device,
                                    budget_bytes=2**40)
            names = [f"lang{i}" for i in range(32)]
            for name in names:
                registry.put(_named(template, name))
            router = Router(backbone, registry)
            router.prepare_kernels(32, args.seconds)
            print(f"\n1. batches of {args.seconds:g} s clips ({args.repeats} repeats, interleaved)")
            print(markdown_table(["items", "distinct masks", "audio s per s", "p50 s", "p95 s",
                                  "time / 1 mask's, per round: median (range)"],
                                 _batches(router, names, args.seconds, args.repeats, args.device)))
        if args.batches_only:
            return
        rows, lower = _memory(backbone, template, folder, args.device)
        print("\n2. memory per registered mask (MiB)")
        print(markdown_table(["masks", "process growth / mask", "registry's count / mask", "packed lower bound",
                              "growth / bound"], rows))
        print("\n3. loading one mask (ms)")
        print(markdown_table(["path", "p50", "p95"], _loads(backbone, folder, args.device)))
        print(f"\n4. 1,000 masks, budget for 100, {args.requests} requests, Zipf s = {args.zipf}")
        print(markdown_table(["hit ratio", "evictions per 1,000 requests", "p95 hit", "p95 miss"],
                             [_zipf(backbone, template, folder, args.device, args.requests, args.zipf)]))


if __name__ == "__main__":
    main()
