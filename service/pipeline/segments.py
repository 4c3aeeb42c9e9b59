"""Speech segments of a recording and their results on its timeline: what the VAD plans, and how the
segments' transcripts are put back together. Pure functions; :mod:`service.pipeline.transcriber` runs them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from router_core.decoding import Transcript, mean_logprob
from router_core.vad import SegmentSettings
from service.settings import ServiceSettings


@dataclass(frozen=True)
class Segment:
    start: int  # samples at 16 kHz
    end: int
    no_speech_prob: float | None  # None without a VAD


@dataclass
class SegmentResult:
    start: float  # seconds on the file's timeline
    end: float
    language: str
    language_probability: float | None  # lang=auto only
    transcript: Transcript  # word times on the file's timeline
    decoder: str | None
    no_speech_prob: float | None


@dataclass
class Plan:
    segments: list[Segment]
    no_speech_prob: float | None  # of the whole recording (1 - the highest window probability)


def segment_settings(settings: ServiceSettings) -> SegmentSettings:
    """How the VAD cuts recordings and streams into segments, from the service's settings."""
    return SegmentSettings(settings.segment_min_silence_s, settings.segment_seconds, settings.segment_pad_s)


def fixed_windows(total: int, longest: int) -> list[tuple[int, int]]:
    """``[start, end)`` windows of ``longest`` samples over ``total`` (how audio is cut without a VAD)."""
    return [(s, min(total, s + longest)) for s in range(0, total, longest)]


def shifted(transcript: Transcript, seconds: float) -> Transcript:
    """``transcript`` with every word moved ``seconds`` later."""
    words = [replace(w, start=w.start + seconds, end=w.end + seconds) for w in transcript.words]
    return Transcript(transcript.text, words, transcript.avg_logprob)


def joined(results: list[SegmentResult]) -> Transcript:
    """One transcript of the whole file: the segments' texts and words in order."""
    words = [w for r in results for w in r.transcript.words]
    return Transcript(" ".join(r.transcript.text for r in results if r.transcript.text), words,
                      mean_logprob(words))


def main_language(results: list[SegmentResult]) -> str | None:
    """The language spoken longest (``None`` without segments)."""
    seconds: dict[str, float] = {}
    for r in results:
        seconds[r.language] = seconds.get(r.language, 0.0) + r.end - r.start
    return max(seconds, key=lambda k: seconds[k]) if seconds else None
