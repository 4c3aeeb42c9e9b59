"""Rendering a transcript in the OpenAI audio API's response formats: json, text, verbose_json, srt, vtt."""

from __future__ import annotations

import json

from router_core.decoding import Transcript, Word
from router_core.errors import InvalidInputError

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


def _cues(transcript: Transcript, separator: str) -> list[str]:
    return [
        f"{_clock(seg[0].start, separator)} --> {_clock(seg[-1].end, separator)}\n{' '.join(w.text for w in seg)}"
        for seg in segments_of(transcript.words)
    ]


def check_format_options(fmt: str, granularities: list[str]) -> None:
    """Refuse an unknown ``response_format`` or timestamp granularity (400)."""
    if fmt not in RESPONSE_FORMATS:
        raise InvalidInputError(f"response_format {fmt!r} is not supported; use one of {', '.join(RESPONSE_FORMATS)}")
    unknown = set(granularities) - {"word", "segment"}
    if unknown:
        raise InvalidInputError(f"timestamp_granularities {sorted(unknown)} unknown; use word and/or segment")


def render_transcription(
    transcript: Transcript, language: str, duration: float, fmt: str, granularities: list[str]
) -> tuple[str, str]:
    """``(body, media type)`` for ``fmt``; unknown formats and granularities are a 400."""
    check_format_options(fmt, granularities)
    if fmt == "json":
        return json.dumps({"text": transcript.text}), "application/json"
    if fmt == "text":
        return transcript.text + "\n", "text/plain"
    if fmt == "srt":
        cues = _cues(transcript, ",")
        return "\n\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, start=1)) + "\n", "application/x-subrip"
    if fmt == "vtt":
        return "WEBVTT\n\n" + "\n\n".join(_cues(transcript, ".")) + "\n", "text/vtt"
    body: dict = {"task": "transcribe", "language": language, "duration": round(duration, 3), "text": transcript.text}
    if "word" in granularities:
        body["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in transcript.words]
    if "segment" in granularities:
        body["segments"] = [
            {
                "id": i,
                "seek": 0,
                "start": round(seg[0].start, 3),
                "end": round(seg[-1].end, 3),
                "text": " ".join(w.text for w in seg),
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            for i, seg in enumerate(segments_of(transcript.words))
        ]
    return json.dumps(body), "application/json"
