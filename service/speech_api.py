"""Speech endpoints: ``/transcribe``, ``/classify`` and the OpenAI-compatible ``/v1/audio/transcriptions``."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from router_core.audio import decode_audio
from router_core.errors import (
    DeadlineExceededError,
    EmptyAudioError,
    InvalidInputError,
    MaskKindError,
    PayloadTooLargeError,
)
from router_core.router import RoutedOutput
from service.app import AppState, state_of
from service.openai_format import render_transcription

router = APIRouter(tags=["speech"])
DISCONNECT_POLL_S = 0.1


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"upload is {int(declared)} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse the bytes already read
    return body


async def read_upload(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """Audio bytes from a raw body or a multipart ``file`` field, plus the other form fields."""
    body = await read_body(request, limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body, {}
    form = await request.form()
    fields: dict[str, Any] = {}
    audio: bytes | None = None
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(key, []).append(value)
        elif key == "file":
            audio = await value.read()
    if audio is None:
        raise EmptyAudioError("multipart upload has no 'file' field")
    return audio, {k: v[0] if len(v) == 1 else v for k, v in fields.items()}


async def run_request(request: Request, state: AppState, wave: torch.Tensor, mask: str, kind: str) -> RoutedOutput:
    """Check the mask, enqueue, and wait for the result — dropping the work if the client goes away."""
    engine, batcher = state.ready_engine()
    loaded = await run_in_threadpool(engine.registry.get, mask)  # 404 listing what exists
    request.state.mask = loaded.name
    if loaded.kind != kind:
        want = "transcription (ctc)" if kind == "ctc" else "classification"
        raise MaskKindError(f"mask {mask!r} is a {loaded.kind} mask, not a {want} mask")
    item = batcher.submit(wave, mask, kind, state.settings.request_timeout_s)
    waiter = asyncio.ensure_future(batcher.result(item))
    while True:
        done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
        if done:
            out = waiter.result()
            break
        if await request.is_disconnected():
            item.cancelled = True
            waiter.cancel()
            raise DeadlineExceededError("client disconnected")
    request.state.timing = {
        "queue_ms": round(1000 * ((item.started_at or item.enqueued_at) - item.enqueued_at), 2),
        "inference_ms": round(1000 * ((item.finished_at or 0.0) - (item.started_at or 0.0)), 2),
    }
    return out


async def _decoded(request: Request, state: AppState) -> tuple[torch.Tensor, dict[str, Any]]:
    data, fields = await read_upload(request, state.settings.max_upload_bytes)
    wave = await run_in_threadpool(decode_audio, data, state.settings.max_audio_seconds)
    engine, _ = state.ready_engine()
    if wave.shape[0] < engine.backbone.min_samples:
        raise EmptyAudioError(f"audio is too short: {wave.shape[0]} samples at 16 kHz, at least "
                              f"{engine.backbone.min_samples} needed")  # fmt: skip
    return wave, fields


def _words(out: RoutedOutput) -> list[dict[str, Any]]:
    assert out.transcript is not None
    return [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in out.transcript.words]


AUTO = "auto"


async def resolve_language(
    request: Request, state: AppState, wave: torch.Tensor, lang: str
) -> tuple[str, float | None]:
    """``lang`` itself, or for ``auto`` the language-ID mask's best label and its probability."""
    if lang != AUTO:
        return lang, None
    lid = await run_request(request, state, wave, state.settings.language_mask, "classify")
    assert lid.classification is not None
    label = lid.classification.label
    return label, lid.classification.probabilities[label]


@router.post("/transcribe", summary="Transcribe audio with a language's mask (or lang=auto)")
async def transcribe(
    request: Request, lang: str = Query(..., description="language mask, e.g. fr, or auto to detect it")
) -> dict:
    state = state_of(request)
    wave, _ = await _decoded(request, state)
    language, probability = await resolve_language(request, state, wave, lang)
    out = await run_request(request, state, wave, language, "ctc")
    assert out.transcript is not None
    body = {
        "text": out.transcript.text,
        "language": language,
        "mask": out.mask_name,
        "decoder": out.decoder,
        "duration": round(out.audio_seconds, 3),
        "words": _words(out),
        "timing": request.state.timing,
    }
    if probability is not None:
        body["language_probability"] = round(probability, 6)
    return body


@router.post("/classify", summary="Classify audio with a task's mask")
async def classify(
    request: Request,
    task: str = Query(..., description="task mask, e.g. speaker"),
    top_k: int = Query(5, ge=1, le=1000, description="how many labels to return, best first"),
) -> dict:
    state = state_of(request)
    wave, _ = await _decoded(request, state)
    out = await run_request(request, state, wave, task, "classify")
    assert out.classification is not None
    top = out.classification.top(top_k)
    return {
        "task": task,
        "label": out.classification.label,
        "probability": round(top[0][1], 6),
        "labels": [{"label": label, "probability": round(p, 6)} for label, p in top],
        "duration": round(out.audio_seconds, 3),
        "timing": request.state.timing,
    }


@router.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription")
async def openai_transcriptions(request: Request) -> Response:
    state = state_of(request)
    wave, fields = await _decoded(request, state)
    engine, _ = state.ready_engine()
    model = str(fields.get("model") or state.settings.model_id)
    language = fields.get("language")
    available = await run_in_threadpool(engine.registry.available)
    if model in available:
        mask = model
    elif language:
        mask = str(language)
    elif state.settings.language_mask in available:
        mask, _ = await resolve_language(request, state, wave, AUTO)
    else:
        raise InvalidInputError(
            f"say which language to transcribe: set 'language' (one of {', '.join(available)}) "
            f"or use a mask name as 'model' (no {state.settings.language_mask!r} mask for auto-detection)"
        )
    fmt = str(fields.get("response_format") or "json")
    granularities = fields.get("timestamp_granularities[]") or fields.get("timestamp_granularities") or ["segment"]
    if isinstance(granularities, str):
        granularities = [granularities]
    out = await run_request(request, state, wave, mask, "ctc")
    assert out.transcript is not None
    body, media_type = render_transcription(out.transcript, mask, out.audio_seconds, fmt, list(granularities))
    if media_type == "application/json":
        return Response(body, media_type=media_type)
    return PlainTextResponse(body, media_type=media_type)
