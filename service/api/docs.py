"""What the OpenAPI schema declares beyond the route signatures: the mask-name parameter, the audio request
body (raw or multipart), the error body and the statuses each route can answer, non-JSON responses.

schemathesis checks the running app against this schema in the suite (``tests/test_schema_fuzz.py``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel

from router_core.mask_file import MASK_NAME_MAX, MASK_NAME_PATTERN


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"type", "message"}}``."""

    error: ErrorDetail


_STATUS_TEXT = {
    400: "bad input (unreadable form, invalid option or empty audio)",
    401: "missing or wrong bearer token",
    403: "admin endpoints are disabled (no S3R_ADMIN_TOKEN), or the API key may not use the mask",
    404: "no such mask",
    408: "the upload was not received within S3R_UPLOAD_TIMEOUT_S",
    409: "the mask was made for another backbone",
    413: "over a size or length limit (the message names it)",
    415: "not decodable audio, or an unsupported rate or channel count",
    422: "invalid parameter, or a mask of the other kind",
    429: "the API key is over its rate (S3R_API_KEYS rps=; with Retry-After)",
    503: "queue full, starting up, or the mask store unreachable (with Retry-After)",
    501: "not provided by this service (the message says what to use instead)",
    504: "not served before S3R_REQUEST_TIMEOUT_S",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with its meaning and the error body."""
    return {code: {"model": ErrorBody, "description": _STATUS_TEXT[code]} for code in codes}


# 401, 403 and 429 come only with S3R_API_KEYS set
SPEECH_ERRORS = error_responses(400, 401, 403, 404, 408, 413, 415, 422, 429, 503, 504)
KEYED_ERRORS = error_responses(401, 429, 503)
READ_ERRORS = error_responses(400, 404, 409, 422, 503)
ADMIN_ERRORS = error_responses(400, 401, 403, 404, 408, 409, 413, 422, 503)

_MASK_NAME_TEXT = "letters, digits, '_', '-' and single dots between them, starting with a letter or digit"
MaskNamePath = Annotated[str, Path(pattern=MASK_NAME_PATTERN, max_length=MASK_NAME_MAX, description=_MASK_NAME_TEXT)]
LanguageQuery = Annotated[str, Query(pattern=MASK_NAME_PATTERN, max_length=MASK_NAME_MAX,
                                     description="language mask, e.g. fr, or auto to detect it")]
TaskQuery = Annotated[str, Query(pattern=MASK_NAME_PATTERN, max_length=MASK_NAME_MAX,
                                 description="task mask, e.g. speaker")]

_BINARY = {"type": "string", "format": "binary"}
AUDIO_BODY = {
    "requestBody": {
        "required": True,
        "description": "WAV, FLAC, OGG or MP3, as the raw body or as the multipart field 'file'",
        "content": {
            "audio/*": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}
            },
        },
    }
}
OPENAI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": _BINARY,
                        "model": {"type": "string", "description": "a mask name, or the service's model id"},
                        "language": {"type": "string", "description": "a transcription mask; unset: per segment"},
                        "prompt": {"type": "string", "description": "accepted and ignored (no contextual biasing)"},
                        "stream": {"type": "boolean", "description": "server-sent transcript.text.delta/done events"},
                        "response_format": {"type": "string", "enum": ["json", "text", "verbose_json", "srt", "vtt"]},
                        "temperature": {"type": "number", "description": "accepted and ignored"},
                        "timestamp_granularities[]": {
                            "type": "array",
                            "items": {"type": "string", "enum": ["word", "segment"]},
                        },
                    },
                }
            }
        },
    }
}
MASK_FILE_BODY = {
    "requestBody": {
        "required": True,
        "description": "a mask file (.s3mask) as the raw body",
        "content": {"application/octet-stream": {"schema": _BINARY}},
    }
}
OPENAI_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the transcription in the requested format",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/plain": {"schema": {"type": "string"}},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
        },
    },
    **SPEECH_ERRORS,
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}
}
