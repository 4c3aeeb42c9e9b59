"""Service throughput with beam search + language model: decoding on the model thread vs in a decode pool.

Run: ``python -m bench.bench_pipeline [--workers 0,1,2] [--levels 1,8,32]``. The bundled default model
(every transcription mask carries a character language model) is served by ``s3router serve`` on
loopback, once per ``--decode-workers`` value, in the same run; the load is espeak-ng speech in the
bundled languages (needs ``espeak-ng``), sent at each concurrency level. Baseline: ``--decode-workers 0``
(the beam search on the model thread, as before the pool existed). Reported: audio seconds served per
wall second, p50 and p95 latency, and the throughput ratio against the baseline at the same concurrency.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import soundfile as sf

from bench.serving import serving
from bench.timing import machine_name, markdown_table

SENTENCES = [
    ("de", "Der Hund schläft auf dem Sofa."), ("fr", "Il fait beau aujourd'hui dans le jardin."),
    ("es", "La casa de mi madre es muy grande."), ("it", "Il treno parte alle otto di sera."),
    ("en", "The weather is nice in the garden today."), ("de", "Wir trinken morgens gern einen Kaffee."),
    ("fr", "Nous allons au marché chaque samedi matin."), ("es", "El perro duerme debajo de la mesa."),
]


def _speech(folder: Path) -> list[tuple[str, bytes, float]]:
    """(language, WAV bytes, seconds) per sentence, spoken by espeak-ng."""
    clips = []
    for i, (lang, text) in enumerate(SENTENCES):
        path = folder / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", lang, "-w", str(path), text], check=True)
        clips.append((lang, path.read_bytes(), sf.info(str(path)).duration))
    return clips


def _load(url: str, clips: list[tuple[str, bytes, float]], level: int, requests: int) -> dict[str, float]:
    def call(i: int) -> float:
        lang, wav, _ = clips[i % len(clips)]
        start = time.perf_counter()
        r = httpx.post(f"{url}/transcribe?lang={lang}", content=wav, timeout=600)
        r.raise_for_status()
        return time.perf_counter() - start

    for i in range(len(clips)):  # warm every mask and language model
        call(i)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(level) as pool:
        latencies = sorted(pool.map(call, range(requests)))
    wall = time.perf_counter() - started
    audio = sum(clips[i % len(clips)][2] for i in range(requests))
    return {"throughput": audio / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="0,1,2", help="decode-workers values; the first is the baseline")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3, help="requests per level = rounds x max(level, 8)")
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    levels = [int(c) for c in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        clips = _speech(Path(folder))
    results: dict[tuple[int, int], dict[str, float]] = {}
    for w in workers:
        with serving("--decode-workers", str(w), "--max-batch-size", str(args.max_batch), "--max-queue", "512",
                     "--max-wait-ms", "5") as url:
            for level in levels:
                results[(w, level)] = _load(url, clips, level, args.rounds * max(level, 8))
    rows = []
    for level in levels:
        base = results[(workers[0], level)]["throughput"]
        for w in workers:
            r = results[(w, level)]
            rows.append([level, w, f"{r['throughput']:.2f}", f"{r['p50']:.3f}", f"{r['p95']:.3f}",
                         f"{r['throughput'] / base:.2f}"])
    print(f"bundled model, beam search + LM, {len(clips)} espeak clips "
          f"({sum(c[2] for c in clips) / len(clips):.1f} s mean), max batch {args.max_batch}, {machine_name()}")
    print(markdown_table(["concurrency", "decode workers", "audio s per s", "p50 s", "p95 s",
                          f"throughput / {workers[0]} workers"], rows))


if __name__ == "__main__":
    main()
