"""silero-vad against webrtcvad for cutting long recordings, through the same segmentation rules.

Run: ``python -m bench.bench_vad [--minutes 10]`` (needs espeak-ng; webrtcvad from ``webrtcvad-wheels``, a dev
dependency). A recording of espeak-ng sentences in five languages with 0.8-1.6 s pauses, 3 s of silence and
2 s of loud noise (``bench.speech_corpus.recording``) is cut by :func:`router_core.vad.speech_segments` from
each detector's speech probability per 32 ms window: silero's own, and for webrtcvad the share of its
10 ms frames judged speech (aggressiveness 0-3). Once as synthesized (pauses of faint noise), once with
pink noise added to the whole recording at 10 dB SNR. Reported per detector and condition:

- pauses found: true pauses between sentences that hold a segment boundary (a missed one merges sentences);
- boundaries in pauses: segment ends and starts that fall outside every sentence (0.3 s slack), as the
  long-form test demands;
- sentences missed: no segment overlaps them; false segments: a segment overlapping no sentence;
- cost: seconds of detector time per second of audio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.speech_corpus import RATE, VOICES, Truth, in_a_pause, recording
from bench.timing import machine_name, markdown_table
from router_core.vad import WINDOW_SAMPLES, SegmentSettings, SpeechDetector, SpeechSegment, speech_segments

FRAME = 160  # webrtcvad's 10 ms frame at 16 kHz


def webrtc_probabilities(audio: np.ndarray, aggressiveness: int) -> torch.Tensor:
    """``audio [T]`` -> ``[ceil(T / 512)]``: the share of each 32 ms window's 10 ms frames webrtcvad calls speech."""
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")  # [T]
    frames = len(pcm) // FRAME
    flags = np.array([vad.is_speech(pcm[i * FRAME : (i + 1) * FRAME].tobytes(), RATE) for i in range(frames)],
                     dtype=np.float32)  # [F]
    starts = np.arange(0, len(pcm), WINDOW_SAMPLES)  # window w covers [512 w, 512 (w + 1))
    probs = [flags[s // FRAME : min(frames, (s + WINDOW_SAMPLES) // FRAME)].mean() if s // FRAME < frames else 0.0
             for s in starts]
    return torch.tensor(probs, dtype=torch.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise of unit RMS (white noise shaped in the frequency domain)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    noise = np.fft.irfft(spectrum, n)
    return (noise / noise.std()).astype(np.float32)


def score(segments: list[SpeechSegment], truth: Truth, total: float, slack: float = 0.3) -> dict[str, float]:
    spans = [(s.start / RATE, s.end / RATE) for s in segments]
    cuts = [t for span in spans for t in span]
    pauses = list(zip([b for _, b, *_ in truth[:-1]], [a for a, *_ in truth[1:]], strict=True))
    found = sum(any(end - slack <= t <= start + slack for t in cuts) for end, start in pauses)
    overlaps = [[a < e and s < b for s, e in spans] for a, b, *_ in truth]  # [sentence][segment]
    return {
        "pauses found": found / len(pauses),
        "boundaries in pauses": sum(in_a_pause(t, truth, total, slack) for t in cuts) / max(1, len(cuts)),
        "sentences missed": sum(not any(row) for row in overlaps),
        "false segments": sum(not any(row[j] for row in overlaps) for j in range(len(spans))),
        "segments": len(spans),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    per_language = max(1, round(args.minutes * 60 / (len(VOICES) * 5 * 4.0)))  # ~4 s per sentence with its pause
    clean, truth = recording(VOICES, per_language)
    total = len(clean) / RATE
    rng = np.random.default_rng(0)
    speech_rms = float(np.sqrt(np.mean(np.concatenate([clean[int(a * RATE) : int(b * RATE)] for a, b, *_ in truth])
                                       ** 2)))
    noisy = clean + pink_noise(len(clean), rng) * speech_rms / 10 ** (10 / 20)  # 10 dB SNR
    silero = SpeechDetector()
    detectors: dict[str, Callable[[np.ndarray], torch.Tensor]] = {
        "silero-vad": lambda a: silero.probabilities(torch.from_numpy(a.astype(np.float32)))}
    for mode in range(4):
        detectors[f"webrtcvad {mode}"] = lambda a, m=mode: webrtc_probabilities(a, m)
    settings, rows = SegmentSettings(), []
    for condition, audio in (("as synthesized", clean), ("pink noise, 10 dB SNR", noisy)):
        for name, detect in detectors.items():
            started = time.perf_counter()
            probs = detect(audio)  # [W]
            cost = (time.perf_counter() - started) / total
            found = score(speech_segments(probs, len(audio), 0.5, settings), truth, total)
            rows.append([condition, name, f"{found['pauses found']:.3f}", f"{found['boundaries in pauses']:.3f}",
                         found["sentences missed"], found["false segments"], found["segments"], f"{cost:.4f}"])
    print(f"{total / 60:.1f} min recording, {len(truth)} sentences; {machine_name()}")
    print(markdown_table(["audio", "detector", "pauses found", "boundaries in pauses", "sentences missed",
                          "false segments", "segments", "s per audio s"], rows))


if __name__ == "__main__":
    main()
