"""Service overhead and throughput: HTTP + batching vs calling ``Router`` directly in-process.

Run: ``python -m bench.bench_service [--seconds 5] [--levels 1,4,8]``. A wav2vec2-base-shaped backbone
(random weights, saved with ``save_pretrained``) with 4 language masks is served by a separate
``s3router serve`` process on loopback (so client and server do not share a GIL); a mixed-language
load is sent at each concurrency level. Baseline: ``Router.forward`` on one waveform, same masks, same run.
Target: p50 at concurrency 1 <= 1.15x the direct call. (The load is random noise, so the server runs with
``--no-vad``: the speech gate would answer it without inference.)

``--against DIR``: the same server at concurrency 1 from another checkout (``git worktree add DIR REV``),
requests alternating between the two, and the ratio of their p50s: a change to the request path must not
make a request slower.

``--overload``: an open-loop load at 3x the measured capacity for ``--overload-seconds`` against a server
with a small queue. Every answer must be a 200 or a 503 with Retry-After, and the p95 latency of the 200s
is compared with its bound, (queue length / batch size + 1) batches of the measured batch time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import statistics
import tempfile
import time

import httpx
import soundfile as sf
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from bench.serving import serving
from bench.timing import markdown_table
from router_core import DirectoryStore, HeadSpec, MaskRegistry, Router, encode_mask, load_backbone, random_mask
from service.pipeline.engine import DEMO_VOCAB

LANGS = ["lang0", "lang1", "lang2", "lang3"]


def _engine(folder: str, small: bool) -> Router:
    torch.manual_seed(0)
    config = Wav2Vec2Config(num_hidden_layers=4) if small else Wav2Vec2Config()
    Wav2Vec2Model(config).save_pretrained(f"{folder}/backbone")
    backbone = load_backbone(f"{folder}/backbone", local_files_only=True)
    registry = MaskRegistry(DirectoryStore(f"{folder}/registry"), backbone.spec(), budget_bytes=2**31)
    head = HeadSpec(kind="ctc", vocab=DEMO_VOCAB)
    for i, name in enumerate(LANGS):
        registry.put(encode_mask(random_mask(backbone.spec(), name, head, backbone.default_layer_names(), 0.9, i)))
    return Router(backbone, registry)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--requests", type=int, default=12, help="requests per concurrency level")
    parser.add_argument("--small", action="store_true", help="4 transformer layers instead of 12")
    parser.add_argument("--against", metavar="DIR", help="also compare concurrency 1 with another checkout's server")
    parser.add_argument("--overload", action="store_true", help="also run the 3x-capacity overload test")
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        router = _engine(folder, args.small)
        wave = torch.randn(int(args.seconds * 16_000)) * 0.1
        buf = io.BytesIO()
        sf.write(buf, wave.numpy(), 16_000, format="WAV", subtype="PCM_16")
        wav = buf.getvalue()

        direct = []
        for i in range(args.requests):
            start = time.perf_counter()
            router.forward([wave], [LANGS[i % len(LANGS)]])
            direct.append(time.perf_counter() - start)

        server = contextlib.ExitStack()
        url = server.enter_context(serving(*_flags(folder, max_queue=256, max_batch=8)))

        def call(i: int) -> float:
            start = time.perf_counter()
            r = httpx.post(f"{url}/transcribe?lang={LANGS[i % len(LANGS)]}", content=wav, timeout=600)
            r.raise_for_status()
            return time.perf_counter() - start

        rows = []
        base_p50 = statistics.median(direct)
        rows.append(["direct Router.forward", 1, f"{base_p50:.3f}", f"{_percentile(direct, 0.95):.3f}",
                     f"{args.seconds / base_p50:.1f}", "1.00"])
        for level in [int(x) for x in args.levels.split(",")]:
            call(0)  # warm
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(level) as pool:
                latencies = list(pool.map(call, range(args.requests)))
            wall = time.perf_counter() - started
            p50 = statistics.median(latencies)
            rows.append([f"HTTP, concurrency {level}", level, f"{p50:.3f}", f"{_percentile(latencies, 0.95):.3f}",
                         f"{args.requests * args.seconds / wall:.1f}", f"{p50 / base_p50:.2f}"])
        server.close()
        layers = "4" if args.small else "12"
        print(f"{args.seconds:g} s clips, {layers}-layer wav2vec2-base shape, threads={torch.get_num_threads()}")
        print(markdown_table(["mode", "concurrency", "p50 s", "p95 s", "audio s per s", "p50 / direct p50"], rows))
        if args.against:
            _against(folder, wav, args.against, args.requests)
        if args.overload:
            _overload(folder, wav, base_p50, args.overload_seconds)


def _flags(folder: str, max_queue: int, max_batch: int) -> list[str]:
    return ["--backbone", f"{folder}/backbone", "--registry", f"{folder}/registry", "--max-wait-ms", "2",
            "--max-queue", str(max_queue), "--max-batch-size", str(max_batch), "--no-vad"]


def _against(folder: str, wav: bytes, checkout: str, requests: int) -> None:
    """p50 at concurrency 1 of this checkout's server against ``checkout``'s, requests alternating (so a
    drift of the machine's speed touches both alike), each server warmed first."""
    flags = _flags(folder, max_queue=256, max_batch=8)
    with serving(*flags) as ours, serving(*flags, checkout=checkout) as theirs:
        latencies: dict[str, list[float]] = {ours: [], theirs: []}
        for url in (ours, theirs):
            httpx.post(f"{url}/transcribe?lang={LANGS[0]}", content=wav, timeout=600).raise_for_status()
        for i in range(2 * requests):
            url = (ours, theirs)[i % 2]
            start = time.perf_counter()
            httpx.post(f"{url}/transcribe?lang={LANGS[i // 2 % len(LANGS)]}", content=wav,
                       timeout=600).raise_for_status()
            latencies[url].append(time.perf_counter() - start)
    new, old = statistics.median(latencies[ours]), statistics.median(latencies[theirs])
    print(f"\nconcurrency 1, alternating, {requests} requests each: this checkout p50 {new:.3f} s, "
          f"{checkout} p50 {old:.3f} s, ratio {new / old:.3f}")


def _overload(folder: str, wav: bytes, one_item_s: float, seconds: float) -> None:
    """Requests arrive at 3x capacity (capacity = 1 / one item's time on this machine; on 2 CPU cores a
    batch costs about the sum of its items) whatever the answers; a queue of 8, batches of 4."""
    max_queue, max_batch = 8, 4
    server = contextlib.ExitStack()
    url = server.enter_context(serving(*_flags(folder, max_queue, max_batch)))
    rate = 3.0 / one_item_s
    answers: list[tuple[int, float, str | None]] = []

    def call(i: int) -> None:
        start = time.perf_counter()
        r = httpx.post(f"{url}/transcribe?lang={LANGS[i % len(LANGS)]}", content=wav, timeout=120)
        answers.append((r.status_code, time.perf_counter() - start, r.headers.get("retry-after")))

    count = int(rate * seconds)
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        started = time.perf_counter()
        for i in range(count):
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))
            pool.submit(call, i)
    server.close()
    ok = [t for code, t, _ in answers if code == 200]
    refused = [(code, retry) for code, _, retry in answers if code != 200]
    bound = (max_queue / max_batch + 1) * max_batch * one_item_s  # the queue ahead, then its own batch
    print(f"\noverload: {count} requests at {rate:.1f}/s (3x capacity) for {seconds:g} s, queue {max_queue}, "
          f"batches of {max_batch}")
    print(f"  200: {len(ok)}, 503 with Retry-After: {sum(1 for c, r in refused if c == 503 and r)}, "
          f"other: {sum(1 for c, r in refused if c != 503 or not r)}")
    if ok:
        print(f"  p50 {statistics.median(ok):.2f} s, p95 {_percentile(ok, 0.95):.2f} s of the 200s; "
              f"bound (queue / batch + 1) x batch time = {bound:.2f} s")


if __name__ == "__main__":
    main()
