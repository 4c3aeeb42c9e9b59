"""Long recordings: cut into speech segments by the VAD, each segment one item in the batcher (so the
segments of one file, of other files and of other requests share mixed-mask batches), and the transcripts
put back on the file's timeline. With ``lang=auto`` each segment is language-identified and transcribed
with its own language's mask: code-switched recordings work. A clip no longer than one segment
(``segment_max_s``) is one segment, gated by the VAD as a whole, as short clips always were.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import torch
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from router_core.backbone import SAMPLE_RATE
from router_core.decoding import Transcript, mean_logprob
from router_core.heads import MaskKind
from router_core.router import RoutedOutput
from router_core.vad import SegmentSettings
from service.pipeline.inference import allowed_for, run_request, transcribe_as, transcript_of
from service.pipeline.state import AppState
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


async def plan_segments(state: AppState, wave: torch.Tensor) -> Plan:
    """The speech segments of ``wave [T]`` (counted in the segment and speech-ratio metrics)."""
    plan = await _plan(state, wave)
    speech = sum(s.end - s.start for s in plan.segments) / max(1, wave.shape[0])  # share inside segments
    state.metrics.observe_segments(len(plan.segments), speech)
    return plan


async def _plan(state: AppState, wave: torch.Tensor) -> Plan:
    """The whole clip when it fits one segment (none when the VAD hears no speech), else the VAD's
    segments, or fixed windows with the VAD off."""
    settings, detector = state.settings, state.speech_detector
    total, longest = wave.shape[0], int(settings.segment_seconds * SAMPLE_RATE)
    if total <= longest:
        if detector is None:
            return Plan([Segment(0, total, None)], None)
        check = await run_in_threadpool(detector.check, wave)
        return Plan([Segment(0, total, check.no_speech_prob)] if check.has_speech else [], check.no_speech_prob)
    if detector is None:
        return Plan([Segment(start, end, None) for start, end in fixed_windows(total, longest)], None)
    found = await run_in_threadpool(detector.segments, wave, segment_settings(settings))
    segments = [Segment(s.start, s.end, 1.0 - s.speech_prob) for s in found]
    return Plan(segments, min((1.0 - s.speech_prob for s in found), default=1.0))


async def transcribe_segments(
    request: Request, state: AppState, wave: torch.Tensor, lang: str, segments: list[Segment]
) -> AsyncIterator[SegmentResult]:
    """Each segment's transcript, in order, as soon as it and those before it are done. At most
    ``max_batch_size`` segments of one request wait in the queue at a time; a full queue delays the
    segments of a long recording (admitted when it arrived), and refuses a one-segment clip (503)."""
    engine, _ = state.ready_engine()
    in_flight = asyncio.Semaphore(state.settings.max_batch_size)
    usable = [s for s in segments if s.end - s.start >= engine.backbone.min_samples]
    wait = len(usable) > 1

    async def one(segment: Segment) -> SegmentResult:
        async with in_flight:
            piece = wave[segment.start : segment.end]  # [S]

            async def run(mask: str, kind: MaskKind) -> RoutedOutput:
                return await run_request(request, state, piece, mask, kind, wait_for_room=wait)

            out, probability = await transcribe_as(run, state, lang, allowed_for(request, state))
        offset = segment.start / SAMPLE_RATE
        return SegmentResult(offset, segment.end / SAMPLE_RATE, out.mask_name, probability,
                             shifted(transcript_of(out), offset), out.decoder, segment.no_speech_prob)

    tasks = [asyncio.ensure_future(one(s)) for s in usable]
    try:
        for task in tasks:
            yield await task
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
