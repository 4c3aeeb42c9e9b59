"""What a long upload costs everyone else: a short clip's latency while a long recording is transcribed.

Run: ``python -m bench.bench_fairness [--minutes 10] [--against DIR]``. A wav2vec2-base-shaped backbone with
4 transformer layers (random weights, 4 language masks, as ``bench_service --small``) is served by
``s3router serve``. A short clip (3 s) is sent alone ``--clips`` times, then again every ``--every`` seconds
while one ``--minutes``-long recording is being transcribed. Reported: the clip's p50/p95 alone and during
the upload, and their ratio (1.0: the upload costs the clip nothing). Two modes:

* ``vad``: the speech detector on (the audio is noise, so it finds no speech: the upload's cost is its
  detection alone, which once ran under one lock shared with every other request);
* ``no-vad``: the recording cut into 25 s windows, every one transcribed (the batcher's scheduling).

``--against DIR`` runs the same with another checkout's server (``git worktree add DIR REV``) in the same
run, so the two can be compared on one machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import statistics
import tempfile
import threading
import time

import httpx
import soundfile as sf
import torch

from bench.bench_service import LANGS, _engine, _percentile
from bench.serving import serving
from bench.timing import machine_name, markdown_table


def _wav(seconds: float, seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    wave = torch.randn(int(seconds * 16_000), generator=generator) * 0.1  # [T]
    buf = io.BytesIO()
    sf.write(buf, wave.numpy(), 16_000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _clip_latency(url: str, clip: bytes, i: int) -> float:
    start = time.perf_counter()
    httpx.post(f"{url}/transcribe?lang={LANGS[i % len(LANGS)]}", content=clip, timeout=600).raise_for_status()
    return time.perf_counter() - start


def _measure(url: str, clip: bytes, long_wav: bytes, clips: int,
             every: float) -> tuple[list[float], list[float], float]:
    """Clip latencies alone, then during the long upload (sent every ``every`` s), and the upload's time."""
    _clip_latency(url, clip, 0)  # warm
    alone = [_clip_latency(url, clip, i) for i in range(clips)]
    upload: dict[str, float] = {}

    def send_long() -> None:
        start = time.perf_counter()
        httpx.post(f"{url}/transcribe?lang={LANGS[0]}", content=long_wav, timeout=3600).raise_for_status()
        upload["seconds"] = time.perf_counter() - start

    long_thread = threading.Thread(target=send_long)
    long_thread.start()
    time.sleep(1.0)  # the upload is read and decoding or detection has begun
    during: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(clips) as pool:
        futures = []
        for i in range(clips):
            futures.append(pool.submit(_clip_latency, url, clip, i))
            time.sleep(every)
        during = [f.result() for f in futures]
    long_thread.join()
    return alone, during, upload["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--against", metavar="DIR")
    args = parser.parse_args()
    clip, long_wav = _wav(3.0, 1), _wav(args.minutes * 60, 2)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        _engine(folder, small=True)
        base = ["--backbone", f"{folder}/backbone", "--registry", f"{folder}/registry", "--max-wait-ms", "2",
                "--max-upload-bytes", str(len(long_wav) + 4096), "--request-timeout-s", "600"]
        for checkout in [None, args.against] if args.against else [None]:
            for mode, flags in (("vad", []), ("no-vad", ["--no-vad"])):
                with serving(*base, *flags, checkout=checkout) as url:
                    alone, during, upload_s = _measure(url, clip, long_wav, args.clips, args.every)
                p50_alone, p50_during = statistics.median(alone), statistics.median(during)
                rows.append([checkout or "this checkout", mode, f"{p50_alone:.2f}", f"{p50_during:.2f}",
                             f"{_percentile(during, 0.95):.2f}", f"{p50_during / p50_alone:.1f}", f"{upload_s:.0f}"])
    print(f"{machine_name()}; 3 s clips alone and while a {args.minutes:g}-minute recording is transcribed "
          f"(4-layer wav2vec2-base shape, noise)")
    print(markdown_table(["server", "mode", "clip p50 alone s", "clip p50 during s", "clip p95 during s",
                          "p50 ratio", "upload s"], rows))


if __name__ == "__main__":
    main()
