"""Running one request's items through the batcher: mask checks, the queue, waiting (and giving up when
the client goes away), language detection. Shared by the short-clip and long-form paths."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import torch
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from router_core.decoding import Classification, Transcript, Word
from router_core.errors import (
    ClientClosedRequestError,
    DeadlineExceededError,
    MaskKindError,
    OverloadedError,
)
from router_core.heads import MaskKind
from router_core.language_id import DecodingLanguageId, best_candidate, transcription_masks
from router_core.router import RoutedOutput
from service.pipeline.admission import may_use, require_mask_right
from service.pipeline.batching import Pending
from service.pipeline.state import AppState
from service.settings import LID_SETTINGS

DISCONNECT_POLL_S = 0.1
ROOM_POLL_S = 0.05  # how often a long recording's next segment looks for room in a full queue


async def check_mask(request: Request, state: AppState, mask: str, kind: MaskKind) -> None:
    """403 for a mask the request's key may not use, 404 for an unknown mask (listing what exists), 422 for a
    mask of the other kind."""
    engine, _ = state.ready_engine()
    require_mask_right(state, getattr(request.state, "api_key", None), mask)
    loaded = await run_in_threadpool(engine.registry.get, mask)
    request.state.mask = loaded.name
    if loaded.kind != kind:
        want = "transcription (ctc)" if kind == "ctc" else "classification"
        raise MaskKindError(f"mask {mask!r} is a {loaded.kind} mask, not a {want} mask")


async def run_request(
    request: Request, state: AppState, wave: torch.Tensor, mask: str, kind: MaskKind, wait_for_room: bool = False
) -> RoutedOutput:
    """Check the mask, enqueue, and wait for the result — dropping the work if the client goes away.
    ``wait_for_room``: a full queue delays the item (a segment of a long recording) instead of refusing it."""
    await check_mask(request, state, mask, kind)
    out, item = await serve_item(state, wave, mask, kind, request.state.deadline, request.is_disconnected,
                                 wait_for_room)
    request.state.timing = {
        "queue_ms": round(1000 * ((item.started_at or item.enqueued_at) - item.enqueued_at), 2),
        "inference_ms": round(1000 * ((item.finished_at or 0.0) - (item.started_at or 0.0)), 2),
    }
    return out


async def serve_item(
    state: AppState, wave: torch.Tensor, mask: str, kind: MaskKind, deadline: float,
    gone: Callable[[], Awaitable[bool]], wait_for_room: bool = False,
) -> tuple[RoutedOutput, Pending]:
    """Enqueue one item and wait for its output until ``deadline`` (``time.monotonic()``); ``gone()`` says
    whether the client went away (its work is then dropped)."""
    _, batcher = state.ready_engine()
    while True:
        remaining = deadline - time.monotonic()  # one deadline for decoding and every pass
        if remaining <= 0:
            raise DeadlineExceededError("the request was not served before its deadline")
        try:
            item = batcher.submit(wave, mask, kind, remaining)
            break
        except OverloadedError:
            if not wait_for_room:
                raise
            if await gone():
                raise ClientClosedRequestError("the client closed the request before its answer was ready") from None
            await asyncio.sleep(ROOM_POLL_S)
    waiter = asyncio.ensure_future(batcher.result(item))
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
            if done:
                return waiter.result(), item
            if await gone():
                raise ClientClosedRequestError("the client closed the request before its answer was ready")
    except (ClientClosedRequestError, asyncio.CancelledError):  # nobody waits for it any more: drop the work
        batcher.cancel(item)
        waiter.cancel()
        raise


def word_bodies(words: list[Word]) -> list[dict[str, Any]]:
    """Words as the JSON bodies of /transcribe and the stream show them (seconds, 3 decimals)."""
    return [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]


def transcript_of(out: RoutedOutput) -> Transcript:
    if out.transcript is None:  # the batcher refuses outputs of the other kind; never a bare assert here
        raise MaskKindError(f"mask {out.mask_name!r} did not produce a transcript")
    return out.transcript


def classification_of(out: RoutedOutput) -> Classification:
    if out.classification is None:
        raise MaskKindError(f"mask {out.mask_name!r} did not produce a classification")
    return out.classification


AUTO = "auto"


def language_picker(state: AppState) -> DecodingLanguageId:
    """How ``lang=auto`` decides (:mod:`router_core.language_id`), from the settings."""
    return DecodingLanguageId(**{field: getattr(state.settings, name) for field, name in LID_SETTINGS.items()})


def allowed_for(request: Request, state: AppState) -> Callable[[str], bool]:
    """Whether the request's API key may use a mask (:func:`may_use`)."""
    return may_use(state, getattr(request.state, "api_key", None))


RunItem = Callable[[str, MaskKind], Awaitable[RoutedOutput]]


async def transcribe_as(
    run: RunItem, state: AppState, lang: str, allowed: Callable[[str], bool] = lambda _: True, decide: bool = True
) -> tuple[RoutedOutput, float | None]:
    """One piece of audio transcribed by ``lang``'s mask, and for ``auto`` the language-ID probability of the
    language it was transcribed in (``None`` otherwise). ``run(mask, kind)`` serves the piece with a mask.

    ``auto``: the language-ID mask runs first. Unless it is confident, its best candidates that are
    transcription masks ``allowed`` to the caller are all transcribed at once (concurrent items, so one
    mixed-mask batch), and the transcript that explains the audio best is the answer
    (:func:`router_core.language_id.best_candidate`). ``decide=False`` takes the mask's best label as is
    (a stream's partial results)."""
    if lang != AUTO:
        return await run(lang, "ctc"), None
    lid = classification_of(await run(state.settings.language_mask, "classify"))
    engine, _ = state.ready_engine()
    picker = language_picker(state)
    candidates: list[str] = []
    if decide:  # (a stream's partials are not decisions)
        if picker.undecided(lid):
            labels = [label for label in lid.probabilities if allowed(label)]
            usable = await run_in_threadpool(transcription_masks, engine.registry, labels)
            candidates = picker.candidates(lid, set(usable))
        state.metrics.observe_language_id("mask" if len(candidates) < 2 else "decoding")
    if len(candidates) < 2:
        label = candidates[0] if candidates else lid.label
        return await run(label, "ctc"), lid.probabilities[label]
    tasks = [asyncio.ensure_future(run(label, "ctc")) for label in candidates]
    try:
        outs = list(await asyncio.gather(*tasks))
    finally:  # one failed (or the request was cancelled): the others' items leave the queue
        for task in tasks:
            task.cancel()
    best = await run_in_threadpool(best_candidate, picker, engine.registry, outs, lid)
    return outs[best], lid.probabilities[candidates[best]]

