"""JSON bodies shared by the transcription routes and the stream: words and segments as clients read them."""

from __future__ import annotations

from typing import Any

from router_core.decoding import Word
from service.pipeline.segments import SegmentResult


def word_bodies(words: list[Word]) -> list[dict[str, Any]]:
    """Words as the JSON bodies of /transcribe and the stream show them (seconds, 3 decimals)."""
    return [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]


def segment_body(index: int, result: SegmentResult) -> dict[str, Any]:
    """One speech segment of /transcribe's ``segments``."""
    body: dict[str, Any] = {"id": index, "start": round(result.start, 3), "end": round(result.end, 3),
                            "text": result.transcript.text, "language": result.language}
    if result.language_probability is not None:
        body["language_probability"] = round(result.language_probability, 6)
    if result.no_speech_prob is not None:
        body["no_speech_prob"] = round(result.no_speech_prob, 6)
    return body
