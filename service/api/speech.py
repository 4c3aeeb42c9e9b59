"""Speech endpoints: ``/transcribe``, ``/classify`` and the OpenAI-compatible ``/v1/audio/transcriptions``."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from router_core.audio import decode_audio
from router_core.backbone import SAMPLE_RATE
from router_core.errors import (
    EmptyAudioError,
    InvalidInputError,
    InvalidMaskNameError,
    MaskNotFoundError,
    NotImplementedFeatureError,
    StoreUnavailableError,
)
from service.api.docs import (
    AUDIO_BODY,
    KEYED_ERRORS,
    OPENAI_BODY,
    OPENAI_RESPONSES,
    SPEECH_ERRORS,
    LanguageQuery,
    TaskQuery,
    error_responses,
)
from service.api.openai_format import SegmentView, check_format_options, render_transcription, stream_events
from service.api.uploads import read_upload
from service.pipeline.admission import admit_request, may_use
from service.pipeline.inference import (
    AUTO,
    check_mask,
    classification_of,
    run_request,
    word_bodies,
)
from service.pipeline.longform import SegmentResult, joined, main_language, plan_segments, transcribe_segments
from service.pipeline.state import AppState, state_of

api = APIRouter(tags=["speech"])


async def _decoded(request: Request, state: AppState, longform: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The upload as a 16 kHz wave, and the form's other fields. A full queue refuses it before it is read
    or decoded; decoding counts against the request's deadline. ``longform`` (transcription): recordings up
    to ``max_longform_seconds``; one longer than a segment gets ``longform_seconds_per_audio_second`` more
    time per second of audio."""
    deadline = request.state.deadline = time.monotonic() + state.settings.request_timeout_s
    admit_request(request, state)  # before anything is read
    engine, batcher = state.ready_engine()
    batcher.check_room()
    data, fields = await read_upload(request, state.settings.max_upload_bytes)
    settings = state.settings
    limit = settings.max_longform_seconds if longform else settings.max_audio_seconds
    wave = await run_in_threadpool(decode_audio, data, limit, deadline)
    seconds = wave.shape[0] / SAMPLE_RATE
    if longform and seconds > settings.segment_seconds:  # a recording cut into segments: more time
        request.state.deadline += seconds * settings.longform_seconds_per_audio_second
    if wave.shape[0] < engine.backbone.min_samples:
        raise EmptyAudioError(f"audio is too short: {wave.shape[0]} samples at 16 kHz, at least "
                              f"{engine.backbone.min_samples} needed")
    return wave, fields


@api.post("/transcribe", summary="Transcribe audio with a language's mask (or lang=auto), long recordings included",
          responses=SPEECH_ERRORS, openapi_extra=AUDIO_BODY)
async def transcribe(request: Request, lang: LanguageQuery) -> dict:
    state = state_of(request)
    started = time.monotonic()
    wave, _ = await _decoded(request, state, longform=True)
    await check_mask(request, state, state.settings.language_mask if lang == AUTO else lang,
                     "classify" if lang == AUTO else "ctc")
    plan = await plan_segments(state, wave)
    results = [r async for r in transcribe_segments(request, state, wave, lang, plan.segments)]
    transcript = joined(results)
    language = main_language(results) or (None if lang == AUTO else lang)
    body: dict[str, Any] = {
        "text": transcript.text,
        "language": language,
        "mask": language,
        "decoder": results[0].decoder if results else "none (no speech)",
        "duration": round(wave.shape[0] / SAMPLE_RATE, 3),
        "words": word_bodies(transcript.words),
        "segments": [_segment_body(i, r) for i, r in enumerate(results)],
        "timing": request.state.timing if len(results) == 1 else {"total_ms": _ms_since(started)},
    }
    if len(results) == 1 and results[0].language_probability is not None:
        body["language_probability"] = round(results[0].language_probability, 6)
    if plan.no_speech_prob is not None:
        body["no_speech_prob"] = round(plan.no_speech_prob, 6)
    return body


def _segment_body(index: int, result: SegmentResult) -> dict[str, Any]:
    body: dict[str, Any] = {"id": index, "start": round(result.start, 3), "end": round(result.end, 3),
                            "text": result.transcript.text, "language": result.language}
    if result.language_probability is not None:
        body["language_probability"] = round(result.language_probability, 6)
    if result.no_speech_prob is not None:
        body["no_speech_prob"] = round(result.no_speech_prob, 6)
    return body


def _ms_since(started: float) -> float:
    return round(1000 * (time.monotonic() - started), 2)


@api.post("/classify", summary="Classify audio with a task's mask", responses=SPEECH_ERRORS,
          openapi_extra=AUDIO_BODY)
async def classify(
    request: Request,
    task: TaskQuery,
    top_k: int = Query(5, ge=1, le=1000, description="how many labels to return, best first"),
) -> dict:
    state = state_of(request)
    wave, _ = await _decoded(request, state)
    out = await run_request(request, state, wave, task, "classify")
    result = classification_of(out)
    top = result.top(top_k)
    return {
        "task": task,
        "label": result.label,
        "probability": round(top[0][1], 6),
        "labels": [{"label": label, "probability": round(p, 6)} for label, p in top],
        "duration": round(out.audio_seconds, 3),
        "timing": request.state.timing,
    }


@api.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription (stream=true: server-sent events)",
          response_class=Response, responses=OPENAI_RESPONSES, openapi_extra=OPENAI_BODY)
async def openai_transcriptions(request: Request) -> Response:
    state = state_of(request)
    wave, fields = await _decoded(request, state, longform=True)
    fmt = str(fields.get("response_format") or "json")
    granularities = fields.get("timestamp_granularities[]") or fields.get("timestamp_granularities") or ["segment"]
    if isinstance(granularities, str):
        granularities = [granularities]
    check_format_options(fmt, list(granularities))  # a bad option is a 400 before any inference
    stream = str(fields.get("stream") or "false").lower() in ("true", "1")
    plan = await plan_segments(state, wave)
    mask = await _openai_mask(request, state, wave, fields) if plan.segments else str(fields.get("language") or "")
    if stream:
        events = stream_events(transcribe_segments(request, state, wave, mask, plan.segments))
        # x-accel-buffering: a proxy in front (nginx) passes each event on as it comes instead of buffering
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    results = [r async for r in transcribe_segments(request, state, wave, mask, plan.segments)]
    views = [SegmentView(r.start, r.end, r.transcript, r.no_speech_prob) for r in results]
    body, media_type = render_transcription(joined(results), main_language(results) or mask,
                                            wave.shape[0] / SAMPLE_RATE, fmt, list(granularities),
                                            views if len(plan.segments) > 1 else None)
    if media_type == "application/json":
        return Response(body, media_type=media_type)
    return PlainTextResponse(body, media_type=media_type)


@api.post("/v1/audio/translations", summary="OpenAI-compatible translation: not supported (501)",
          responses=error_responses(501))
async def openai_translations(request: Request) -> Response:
    raise NotImplementedFeatureError(
        "translation is not supported: s3router transcribes in the spoken language "
        "(POST /v1/audio/transcriptions); no mask translates"
    )


@api.get("/v1/models", summary="OpenAI-compatible model list: the service model and its transcription masks",
         responses=KEYED_ERRORS)
async def openai_models(request: Request) -> dict:
    """The service model (``model_id``, rooted in the backbone) and every mask that is not known to be a
    classification mask, each with ``parent`` the service model, as vLLM lists LoRA adapters. A mask's kind
    is known once it has been loaded; the store is listed (resident masks only when it is unreachable)."""
    state = state_of(request)
    allowed = may_use(state, admit_request(request, state))  # a key sees the masks it may use, no others
    engine, _ = state.ready_engine()
    names = {m.name for m in engine.registry.resident()}
    with contextlib.suppress(StoreUnavailableError):
        names.update(await run_in_threadpool(engine.registry.available))
    names = {n for n in names if allowed(n)}
    model_id, created = state.settings.model_id, int(state.started_at)
    entry = {"object": "model", "created": created, "owned_by": "s3router"}
    models = [{"id": model_id, **entry, "root": engine.description, "parent": None}]
    kinds = engine.registry.kinds
    models += [{"id": n, **entry, "root": n, "parent": model_id} for n in sorted(names) if kinds.get(n) != "classify"]
    return {"object": "list", "data": models}


async def _openai_mask(request: Request, state: AppState, wave: torch.Tensor, fields: dict[str, Any]) -> str:
    """The mask an OpenAI request names: ``model`` when it is a mask, else ``language``, else ``auto`` (each
    segment language-identified). Resident masks are found without asking the store, so a Redis outage
    does not stop requests for the masks a replica holds."""
    engine, _ = state.ready_engine()
    model = str(fields.get("model") or state.settings.model_id)
    language = fields.get("language")
    key = getattr(request.state, "api_key", None)
    if model != state.settings.model_id and (key is None or key.masks is None or model in key.masks):
        try:
            await run_in_threadpool(engine.registry.get, model)
            return model
        except (MaskNotFoundError, InvalidMaskNameError, StoreUnavailableError):
            pass  # e.g. "whisper-1": fall back to the language
    if language:
        await check_mask(request, state, str(language), "ctc")
        return str(language)
    try:
        await check_mask(request, state, state.settings.language_mask, "classify")
    except MaskNotFoundError:
        names = {m.name for m in engine.registry.resident()}
        with contextlib.suppress(StoreUnavailableError):
            names.update(await run_in_threadpool(engine.registry.available))
        raise InvalidInputError(
            f"say which language to transcribe: set 'language' (one of {', '.join(sorted(names))}) "
            f"or use a mask name as 'model' (no {state.settings.language_mask!r} mask for auto-detection)"
        ) from None
    return AUTO
