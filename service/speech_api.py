"""Speech endpoints: ``/transcribe``, ``/classify`` and the OpenAI-compatible ``/v1/audio/transcriptions``."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from router_core.audio import decode_audio
from router_core.backbone import SAMPLE_RATE
from router_core.decoding import Transcript
from router_core.errors import (
    EmptyAudioError,
    InvalidInputError,
    InvalidMaskNameError,
    MaskNotFoundError,
    StoreUnavailableError,
)
from service.api_docs import (
    AUDIO_BODY,
    OPENAI_BODY,
    OPENAI_RESPONSES,
    SPEECH_ERRORS,
    LanguageQuery,
    TaskQuery,
)
from service.inference import (
    AUTO,
    check_mask,
    classification_of,
    no_speech_body,
    resolve_language,
    run_request,
    speech_check,
    transcript_of,
    words_of,
)
from service.openai_format import check_format_options, render_transcription
from service.state import AppState, state_of
from service.uploads import read_upload

api = APIRouter(tags=["speech"])
DISCONNECT_POLL_S = 0.1


async def _decoded(request: Request, state: AppState) -> tuple[torch.Tensor, dict[str, Any]]:
    """The upload as a 16 kHz wave, and the form's other fields. A full queue refuses it before it is read
    or decoded; decoding counts against the request's deadline."""
    deadline = request.state.deadline = time.monotonic() + state.settings.request_timeout_s
    if state.api_keys is not None:  # before anything is read
        key = request.state.api_key = state.api_keys.authenticate(request.headers.get("authorization"))
        request.state.api_key_id = key.id  # metrics count by this ID
        state.api_keys.admit(key)
    engine, batcher = state.ready_engine()
    batcher.check_room()
    data, fields = await read_upload(request, state.settings.max_upload_bytes)
    wave = await run_in_threadpool(decode_audio, data, state.settings.max_audio_seconds, deadline)
    if wave.shape[0] < engine.backbone.min_samples:
        raise EmptyAudioError(f"audio is too short: {wave.shape[0]} samples at 16 kHz, at least "
                              f"{engine.backbone.min_samples} needed")
    return wave, fields


@api.post("/transcribe", summary="Transcribe audio with a language's mask (or lang=auto)",
          responses=SPEECH_ERRORS, openapi_extra=AUDIO_BODY)
async def transcribe(request: Request, lang: LanguageQuery) -> dict:
    state = state_of(request)
    wave, _ = await _decoded(request, state)
    speech = await speech_check(state, wave)
    if speech is not None and not speech.has_speech:
        await check_mask(request, state, state.settings.language_mask if lang == AUTO else lang,
                         "classify" if lang == AUTO else "ctc")
        return no_speech_body(lang, wave, speech)
    language, probability = await resolve_language(request, state, wave, lang)
    out = await run_request(request, state, wave, language, "ctc")
    body = {
        "text": transcript_of(out).text,
        "language": language,
        "mask": out.mask_name,
        "decoder": out.decoder,
        "duration": round(out.audio_seconds, 3),
        "words": words_of(out),
        "timing": request.state.timing,
    }
    if probability is not None:
        body["language_probability"] = round(probability, 6)
    if speech is not None:
        body["no_speech_prob"] = round(speech.no_speech_prob, 6)
    return body


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


@api.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription", response_class=Response,
          responses=OPENAI_RESPONSES, openapi_extra=OPENAI_BODY)
async def openai_transcriptions(request: Request) -> Response:
    state = state_of(request)
    wave, fields = await _decoded(request, state)
    fmt = str(fields.get("response_format") or "json")
    granularities = fields.get("timestamp_granularities[]") or fields.get("timestamp_granularities") or ["segment"]
    if isinstance(granularities, str):
        granularities = [granularities]
    check_format_options(fmt, list(granularities))  # a bad option is a 400 before any inference
    speech = await speech_check(state, wave)
    if speech is not None and not speech.has_speech:
        language = str(fields.get("language") or "")
        seconds = wave.shape[0] / SAMPLE_RATE
        body, media_type = render_transcription(Transcript(""), language, seconds, fmt, list(granularities))
    else:
        mask = await _openai_mask(request, state, wave, fields)
        out = await run_request(request, state, wave, mask, "ctc")
        body, media_type = render_transcription(transcript_of(out), mask, out.audio_seconds, fmt, list(granularities))
    if media_type == "application/json":
        return Response(body, media_type=media_type)
    return PlainTextResponse(body, media_type=media_type)


async def _openai_mask(request: Request, state: AppState, wave: torch.Tensor, fields: dict[str, Any]) -> str:
    """The mask an OpenAI request names: ``model`` when it is a mask, else ``language``, else the language
    detected by the language-ID mask. Resident masks are found without asking the store, so a Redis
    outage does not stop requests for the masks a replica holds."""
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
        return str(language)
    try:
        mask, _ = await resolve_language(request, state, wave, AUTO)
    except MaskNotFoundError:
        names = {m.name for m in engine.registry.resident()}
        with contextlib.suppress(StoreUnavailableError):
            names.update(await run_in_threadpool(engine.registry.available))
        raise InvalidInputError(
            f"say which language to transcribe: set 'language' (one of {', '.join(sorted(names))}) "
            f"or use a mask name as 'model' (no {state.settings.language_mask!r} mask for auto-detection)"
        ) from None
    return mask
