"""Long-form transcription: real-time factor of one long recording against the same speech as short clips.

Run: ``python -m bench.bench_longform [--minutes 60]`` (needs espeak-ng and the bundled model). A recording
of espeak-ng sentences in the five bundled languages with pauses between them (``bench.speech_corpus``) is
sent whole to ``/transcribe?lang=auto`` of an ``s3router serve`` with the bundled model, once with beam
search + language models and once with greedy decoding (a second server, same run). Baseline: the same
sentences sent as separate clips at concurrency 8; and the recording with ``lang=auto`` decided by the
language-ID mask alone (``--lid-candidates 1``), the cost of deciding by decoding. Reported: real-time
factor (processing seconds per audio second: lower is faster), segments, CER against the synthesized text.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time

import httpx
import jiwer

from bench.serving import serving
from bench.speech_corpus import RATE, flac, recording
from bench.timing import machine_name, markdown_table
from router_core.training.text_sources import normalize

VOICES = [(v, s) for v in ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4") for s in (140, 175)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()
    rounds = max(1, round(args.minutes * 60 / (len(VOICES) * 50 * 4.0)))  # ~4 s per sentence with its pause
    started = time.perf_counter()
    audio, truth = recording(VOICES * rounds, per_language=10)
    seconds = len(audio) / RATE
    print(f"{seconds / 60:.1f} min recording, {len(truth)} sentences, synthesized in "
          f"{time.perf_counter() - started:.0f} s; {machine_name()}")
    reference = " ".join(normalize(t) for *_, t in truth)
    clips = [flac(audio[int(a * RATE) : int(b * RATE)]) for a, b, *_ in truth]
    data, rows = flac(audio), []
    with serving("--lid-candidates", "1", "--max-upload-bytes", str(2**30)) as url:  # before language ID by decoding
        started = time.perf_counter()
        body = httpx.post(f"{url}/transcribe?lang=auto", content=data, timeout=3 * seconds).json()
        rows.append(["beam + LM, language-ID mask alone", "one recording", len(body["segments"]),
                     f"{(time.perf_counter() - started) / seconds:.4f}", f"{jiwer.cer(reference, body['text']):.3f}"])
    for decoder in ("auto", "greedy"):
        with serving("--decoder", decoder, "--max-upload-bytes", str(2**30)) as url:
            started = time.perf_counter()
            body = httpx.post(f"{url}/transcribe?lang=auto", content=data, timeout=3 * seconds).json()
            whole = time.perf_counter() - started
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                texts = list(pool.map(lambda c, u=url: httpx.post(f"{u}/transcribe?lang=auto", content=c,
                                                                     timeout=600).json()["text"], clips))
            short = time.perf_counter() - started
        name = "beam + LM" if decoder == "auto" else "greedy"
        rows.append([name, "one recording", len(body["segments"]), f"{whole / seconds:.4f}",
                     f"{jiwer.cer(reference, body['text']):.3f}"])
        rows.append([name, "sentences as clips, concurrency 8", len(clips), f"{short / seconds:.4f}",
                     f"{jiwer.cer(reference, ' '.join(t for t in texts if t)):.3f}"])
    print(markdown_table(["decoder", "sent as", "segments / requests", "real-time factor", "CER"], rows))


if __name__ == "__main__":
    main()
