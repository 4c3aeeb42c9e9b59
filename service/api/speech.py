"""Speech endpoints: ``/transcribe``, ``/classify`` and the OpenAI-compatible ``/v1/audio/transcriptions``."""

from __future__ import annotations

import contextlib
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
from service.api.bodies import segment_body, word_bodies
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
from service.pipeline.admission import Admission, Admitted, KeyAdmitted
from service.pipeline.segments import joined, main_language
from service.pipeline.transcriber import AUTO, Transcriber

api = APIRouter(tags=["speech"])


async def _decoded(request: Request, admission: Admission,
                   longform: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The upload of an admitted request as a 16 kHz wave, and the form's other fields. Decoding counts
    against the request's deadline. ``longform`` (transcription): recordings up to ``max_longform_seconds``;
    one longer than a segment gets ``longform_seconds_per_audio_second`` more time per second of audio."""
    settings = admission.state.settings
    engine, _ = admission.state.ready_engine()
    data, fields = await read_upload(request, settings.max_upload_bytes)
    limit = settings.max_longform_seconds if longform else settings.max_audio_seconds
    wave = await run_in_threadpool(decode_audio, data, limit, admission.deadline)
    seconds = wave.shape[0] / SAMPLE_RATE
    if longform and seconds > settings.segment_seconds:  # a recording cut into segments: more time
        admission.extend(seconds * settings.longform_seconds_per_audio_second)
    if wave.shape[0] < engine.backbone.min_samples:
        raise EmptyAudioError(f"audio is too short: {wave.shape[0]} samples at 16 kHz, at least "
                              f"{engine.backbone.min_samples} needed")
    return wave, fields


@api.post("/transcribe", summary="Transcribe audio with a language's mask (or lang=auto), long recordings included",
          responses=SPEECH_ERRORS, openapi_extra=AUDIO_BODY)
async def transcribe(request: Request, admission: Admitted, lang: LanguageQuery) -> dict:
    wave, _ = await _decoded(request, admission, longform=True)
    transcriber = Transcriber(admission)
    await transcriber.check_language(lang)
    plan = await transcriber.plan(wave)
    results = [r async for r in transcriber.segments(wave, lang, plan.segments)]
    transcript = joined(results)
    language = main_language(results) or (None if lang == AUTO else lang)
    body: dict[str, Any] = {
        "text": transcript.text,
        "language": language,
        "mask": language,
        "decoder": results[0].decoder if results else "none (no speech)",
        "duration": round(wave.shape[0] / SAMPLE_RATE, 3),
        "words": word_bodies(transcript.words),
        "segments": [segment_body(i, r) for i, r in enumerate(results)],
        "timing": transcriber.timing(),
    }
    if len(results) == 1 and results[0].language_probability is not None:
        body["language_probability"] = round(results[0].language_probability, 6)
    if plan.no_speech_prob is not None:
        body["no_speech_prob"] = round(plan.no_speech_prob, 6)
    return body


@api.post("/classify", summary="Classify audio with a task's mask", responses=SPEECH_ERRORS,
          openapi_extra=AUDIO_BODY)
async def classify(
    request: Request,
    admission: Admitted,
    task: TaskQuery,
    top_k: int = Query(5, ge=1, le=1000, description="how many labels to return, best first"),
) -> dict:
    wave, _ = await _decoded(request, admission)
    transcriber = Transcriber(admission)
    result = await transcriber.classify(wave, task)
    top = result.top(top_k)
    return {
        "task": task,
        "label": result.label,
        "probability": round(top[0][1], 6),
        "labels": [{"label": label, "probability": round(p, 6)} for label, p in top],
        "duration": round(wave.shape[0] / SAMPLE_RATE, 3),
        "timing": transcriber.timing(),
    }


@api.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription (stream=true: server-sent events)",
          response_class=Response, responses=OPENAI_RESPONSES, openapi_extra=OPENAI_BODY)
async def openai_transcriptions(request: Request, admission: Admitted) -> Response:
    wave, fields = await _decoded(request, admission, longform=True)
    fmt = str(fields.get("response_format") or "json")
    granularities = fields.get("timestamp_granularities[]") or fields.get("timestamp_granularities") or ["segment"]
    if isinstance(granularities, str):
        granularities = [granularities]
    check_format_options(fmt, list(granularities))  # a bad option is a 400 before any inference
    stream = str(fields.get("stream") or "false").lower() in ("true", "1")
    transcriber = Transcriber(admission)
    plan = await transcriber.plan(wave)
    mask = await _openai_mask(transcriber, fields) if plan.segments else str(fields.get("language") or "")
    if stream:
        events = stream_events(transcriber.segments(wave, mask, plan.segments))
        # x-accel-buffering: a proxy in front (nginx) passes each event on as it comes instead of buffering
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    results = [r async for r in transcriber.segments(wave, mask, plan.segments)]
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
async def openai_models(request: Request, admission: KeyAdmitted) -> dict:
    """The service model (``model_id``, rooted in the backbone) and every mask that is not known to be a
    classification mask, each with ``parent`` the service model, as vLLM lists LoRA adapters. A mask's kind
    is known once it has been loaded; the store is listed (resident masks only when it is unreachable)."""
    state = admission.state
    engine, _ = state.ready_engine()
    names = {m.name for m in engine.registry.resident()}
    with contextlib.suppress(StoreUnavailableError):
        names.update(await run_in_threadpool(engine.registry.available))
    names = {n for n in names if admission.may_use(n)}  # a key sees the masks it may use
    model_id, created = state.settings.model_id, int(state.started_at)
    entry = {"object": "model", "created": created, "owned_by": "s3router"}
    models = [{"id": model_id, **entry, "root": engine.description, "parent": None}]
    kinds = engine.registry.kinds
    models += [{"id": n, **entry, "root": n, "parent": model_id} for n in sorted(names) if kinds.get(n) != "classify"]
    return {"object": "list", "data": models}


async def _openai_mask(transcriber: Transcriber, fields: dict[str, Any]) -> str:
    """The mask an OpenAI request names: ``model`` when it is a mask, else ``language``, else ``auto`` (each
    segment language-identified). Resident masks are found without asking the store, so a Redis outage
    does not stop requests for the masks a replica holds."""
    state = transcriber.state
    engine, _ = state.ready_engine()
    model = str(fields.get("model") or state.settings.model_id)
    language = fields.get("language")
    if model != state.settings.model_id and transcriber.admission.may_use(model):
        try:
            await run_in_threadpool(engine.registry.get, model)
            return model
        except (MaskNotFoundError, InvalidMaskNameError, StoreUnavailableError):
            pass  # e.g. "whisper-1": fall back to the language
    if language:
        await transcriber.check(str(language), "ctc")
        return str(language)
    try:
        await transcriber.check(state.settings.language_mask, "classify")
    except MaskNotFoundError:
        names = {m.name for m in engine.registry.resident()}
        with contextlib.suppress(StoreUnavailableError):
            names.update(await run_in_threadpool(engine.registry.available))
        raise InvalidInputError(
            f"say which language to transcribe: set 'language' (one of {', '.join(sorted(names))}) "
            f"or use a mask name as 'model' (no {state.settings.language_mask!r} mask for auto-detection)"
        ) from None
    return AUTO
