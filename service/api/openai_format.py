"""Rendering a transcript in the OpenAI audio API's response formats: json, text, verbose_json, srt, vtt."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from router_core.decoding import Transcript, Word, mean_logprob
from router_core.errors import InvalidInputError, S3RouterError

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
SEGMENT_GAP_S = 0.8  # a pause this long between words starts a new segment
SEGMENT_MAX_WORDS = 16


def segments_of(words: list[Word]) -> list[list[Word]]:
    """Cut words into segments at pauses of ``SEGMENT_GAP_S`` or after ``SEGMENT_MAX_WORDS`` words."""
    segments: list[list[Word]] = []
    for word in words:
        if not segments or word.start - segments[-1][-1].end >= SEGMENT_GAP_S or len(segments[-1]) >= SEGMENT_MAX_WORDS:
            segments.append([])
        segments[-1].append(word)
    return segments


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


@dataclass(frozen=True)
class SegmentView:
    """One segment of a long recording as the response shows it (seconds on the file's timeline)."""

    start: float
    end: float
    transcript: Transcript
    no_speech_prob: float | None


def _pause_segments(transcript: Transcript) -> list[SegmentView]:
    """A short clip's segments: its words cut at pauses (:func:`segments_of`)."""
    return [SegmentView(seg[0].start, seg[-1].end, Transcript(" ".join(w.text for w in seg), seg, mean_logprob(seg)),
                        None)
            for seg in segments_of(transcript.words)]


def _cues(segments: list[SegmentView], separator: str) -> list[str]:
    return [f"{_clock(s.start, separator)} --> {_clock(s.end, separator)}\n{s.transcript.text}"
            for s in segments if s.transcript.text]


def check_format_options(fmt: str, granularities: list[str]) -> None:
    """Refuse an unknown ``response_format`` or timestamp granularity (400)."""
    if fmt not in RESPONSE_FORMATS:
        raise InvalidInputError(f"response_format {fmt!r} is not supported; use one of {', '.join(RESPONSE_FORMATS)}")
    unknown = set(granularities) - {"word", "segment"}
    if unknown:
        raise InvalidInputError(f"timestamp_granularities {sorted(unknown)} unknown; use word and/or segment")


def render_transcription(
    transcript: Transcript, language: str, duration: float, fmt: str, granularities: list[str],
    segments: list[SegmentView] | None = None,
) -> tuple[str, str]:
    """``(body, media type)`` for ``fmt``; unknown formats and granularities are a 400. ``segments``: a
    long recording's speech segments (verbose_json segments and srt/vtt cues follow them); without them,
    the words are cut at pauses."""
    check_format_options(fmt, granularities)
    views = segments if segments is not None else _pause_segments(transcript)
    if fmt == "json":
        return json.dumps({"text": transcript.text}), "application/json"
    if fmt == "text":
        return transcript.text + "\n", "text/plain"
    if fmt == "srt":
        cues = _cues(views, ",")
        return "\n\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, start=1)) + "\n", "application/x-subrip"
    if fmt == "vtt":
        return "WEBVTT\n\n" + "\n\n".join(_cues(views, ".")) + "\n", "text/vtt"
    body: dict = {"task": "transcribe", "language": language, "duration": round(duration, 3), "text": transcript.text}
    if "word" in granularities:
        body["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                          "probability": round(w.probability, 6) if w.probability is not None else None}
                         for w in transcript.words]
    if "segment" in granularities:
        body["segments"] = [
            {
                "id": i,
                "seek": 0,
                "start": round(v.start, 3),
                "end": round(v.end, 3),
                "text": v.transcript.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": round(v.transcript.avg_logprob, 6) if v.transcript.avg_logprob is not None else 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": round(v.no_speech_prob or 0.0, 6),
            }
            for i, v in enumerate(views)
        ]
    return json.dumps(body), "application/json"


class _HasTranscript(Protocol):
    @property
    def transcript(self) -> Transcript: ...


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def stream_events(results: AsyncIterator[_HasTranscript]) -> AsyncIterator[bytes]:
    """OpenAI's transcription stream as server-sent events: a ``transcript.text.delta`` per finished segment
    with text, then ``transcript.text.done`` with the whole text. An error after the stream began is an
    ``error`` event (its status line was already sent)."""
    parts: list[str] = []
    try:
        async for result in results:
            text = result.transcript.text
            if text:
                yield _event({"type": "transcript.text.delta", "delta": (" " if parts else "") + text})
                parts.append(text)
    except S3RouterError as exc:
        yield _event({"type": "error", "error": {"type": type(exc).__name__, "message": str(exc)}})
        return
    yield _event({"type": "transcript.text.done", "text": " ".join(parts)})
