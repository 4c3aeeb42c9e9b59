"""What one client costs the others: the isolation scenarios of issue #39, measured.

1. A short clip's latency while a long recording is transcribed (below).
2. Idle connections: ``--idle`` sockets that send nothing, then a normal request; how long until the server
   has closed them (``S3R_HEADER_TIMEOUT_S``).
3. Overload: 3x capacity for ``--overload-seconds`` with mixed clip lengths (1-10 s); counts of 200, 503 and
   anything else (504), and the recovery: how long after the load stops until a clip is answered within
   twice its time alone.

Run: ``python -m bench.bench_isolation [--minutes 10] [--against DIR]``. A wav2vec2-base-shaped backbone with
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
import socket
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


def _idle_connections(url: str, count: int) -> tuple[int, float]:
    """``count`` sockets that send nothing, then a request: its status, and the seconds until the server
    has closed every idle socket (``inf`` if some were still open after 120 s)."""
    host, port = url.rsplit(":", 1)
    idle = [socket.create_connection((host.removeprefix("http://"), int(port)), timeout=120) for _ in range(count)]
    started = time.perf_counter()
    status = httpx.get(f"{url}/healthz", timeout=30).status_code
    closed_after = 0.0
    try:
        for conn in idle:
            if conn.recv(1) != b"":  # a server that closes sends nothing first
                return status, float("inf")
            closed_after = time.perf_counter() - started
    except TimeoutError:
        closed_after = float("inf")
    finally:
        for conn in idle:
            conn.close()
    return status, closed_after


def _overload(url: str, seconds: float, one_second_cost: float) -> tuple[dict[str, int], float]:
    """3x capacity (capacity: one audio second costs ``one_second_cost`` s here) of clips of 1-10 s for
    ``seconds``: answers counted by status, and the recovery time after the load stops."""
    clips = [_wav(length, length) for length in range(1, 11)]
    rate = 3.0 / (5.5 * one_second_cost)  # requests per second: 3x what the server completes
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def call(i: int) -> None:
        r = httpx.post(f"{url}/transcribe?lang={LANGS[i % len(LANGS)]}", content=clips[i % 10], timeout=120)
        with lock:
            counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))
            pool.submit(call, i)
        stopped = time.perf_counter()
        alone = 3.0 * one_second_cost
        while time.perf_counter() - stopped < 120:  # recovery: a 3 s clip answered within twice its time alone
            probe = time.perf_counter()
            r = httpx.post(f"{url}/transcribe?lang={LANGS[0]}", content=clips[2], timeout=120)
            if r.status_code == 200 and time.perf_counter() - probe <= 2 * alone:
                return counts, time.perf_counter() - stopped
            time.sleep(0.2)
    return counts, float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--idle", type=int, default=255)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--against", metavar="DIR")
    args = parser.parse_args()
    clip, long_wav = _wav(3.0, 1), _wav(args.minutes * 60, 2)
    latency, isolation = [], []
    with tempfile.TemporaryDirectory() as folder:
        _engine(folder, small=True)
        base = ["--backbone", f"{folder}/backbone", "--registry", f"{folder}/registry", "--max-wait-ms", "2"]
        for checkout in [None, args.against] if args.against else [None]:
            server = checkout or "this checkout"
            for mode, flags in (("vad", []), ("no-vad", ["--no-vad"])):
                long_flags = ["--max-upload-bytes", str(len(long_wav) + 4096), "--request-timeout-s", "600"]
                with serving(*base, *long_flags, *flags, checkout=checkout) as url:
                    alone, during, upload_s = _measure(url, clip, long_wav, args.clips, args.every)
                p50_alone, p50_during = statistics.median(alone), statistics.median(during)
                latency.append([server, mode, f"{p50_alone:.2f}", f"{p50_during:.2f}",
                                f"{_percentile(during, 0.95):.2f}", f"{p50_during / p50_alone:.1f}", f"{upload_s:.0f}"])
            header = [] if checkout else ["--header-timeout-s", "5"]  # (older servers have no such setting)
            with serving(*base, "--no-vad", *header, checkout=checkout) as url:
                status, closed_after = _idle_connections(url, args.idle)
                counts, recovery = _overload(url, args.overload_seconds, p50_alone / 3.0)
            isolation.append([server, str(status), f"{closed_after:.1f}",
                              ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), f"{recovery:.1f}"])
    print(f"{machine_name()}; 4-layer wav2vec2-base shape, noise; 3 s clips alone and while a {args.minutes:g}-minute "
          "recording is transcribed")
    print(markdown_table(["server", "mode", "clip p50 alone s", "clip p50 during s", "clip p95 during s",
                          "p50 ratio", "upload s"], latency))
    print(f"\n{args.idle} idle connections, then a request; then 3x capacity for {args.overload_seconds:g} s "
          "(1-10 s clips)")
    print(markdown_table(["server", "request status", "idle closed after s", "answers", "recovery s"], isolation))


if __name__ == "__main__":
    main()
