"""Streaming latency: how long after the audio a stream's partial and final results arrive.

Run: ``python -m bench.bench_stream [--speeds 1,10]`` (needs espeak-ng and the bundled model). A minute of
espeak-ng sentences in the five bundled languages (``bench.speech_corpus``) is streamed to ``WS /v1/stream``
of an ``s3router serve`` in 100 ms chunks at each speed. Reported per speed: partial latency (arrival
minus the time, in the sent audio's clock, of the last audio the partial covers), final latency (arrival
minus the segment's end), and the CER of the finals against the long-form transcript's CER.
"""

from __future__ import annotations

import argparse
import statistics

import httpx
import jiwer

from bench.serving import serving, stream_audio
from bench.speech_corpus import RATE, VOICES, flac, recording
from bench.timing import machine_name, markdown_table
from router_core.training.text_sources import normalize


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speeds", default="1,10")
    args = parser.parse_args()
    audio, truth = recording(VOICES[:1], per_language=3)
    reference = " ".join(normalize(t) for *_, t in truth)
    with serving() as url:
        whole = httpx.post(f"{url}/transcribe?lang=auto", content=flac(audio), timeout=300).json()["text"]
        rows = []
        for speed in [float(s) for s in args.speeds.split(",")]:
            messages = stream_audio(url, audio, speed)
            partial = [t - m["end"] / speed for t, m in messages if m["type"] == "partial"]
            final = [t - m["end"] / speed for t, m in messages if m["type"] == "final"]
            text = " ".join(m["text"] for _, m in messages if m["type"] == "final" and m["text"])
            rows.append([f"{speed:g}x", len(partial), f"{statistics.median(partial):.2f}",
                         f"{_percentile(partial, 0.95):.2f}", len(final), f"{statistics.median(final):.2f}",
                         f"{_percentile(final, 0.95):.2f}", f"{jiwer.cer(reference, text):.3f}"])
    print(f"{len(audio) / RATE:.0f} s of speech in {len(truth)} sentences; long-form CER "
          f"{jiwer.cer(reference, whole):.3f}; {machine_name()}")
    print(markdown_table(["speed", "partials", "partial p50 s", "partial p95 s", "finals", "final p50 s",
                          "final p95 s", "CER of finals"], rows))


if __name__ == "__main__":
    main()
