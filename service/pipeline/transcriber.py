"""One request's work, from decoded audio to results: the :class:`Transcriber`.

A route (HTTP, SSE or a WebSocket stream) admits its caller (:mod:`service.pipeline.admission`), decodes
the audio, and hands both to a ``Transcriber``, which owns everything after:

- the mask checks (the key's rights: 403; unknown: 404; the other kind: 422), for every item it serves;
- planning: the speech segments of a recording (the VAD; a clip up to ``segment_max_s`` is one segment);
- ``lang=auto``: the language-ID mask proposes, and :meth:`DecodingLanguageId.languages_to_transcribe`
  (the one rule, in ``router_core``) says which masks transcribe the piece; two or more run as concurrent
  items of one mixed-mask batch and :func:`best_candidate` picks the answer;
- the batcher calls, within the admission's deadline, dropping the work when the client leaves;
- the timing it reports: the queue wait and batch time summed over every item it ran, and the total.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import torch
from starlette.concurrency import run_in_threadpool

from router_core.backbone import SAMPLE_RATE
from router_core.decoding import Classification, Transcript
from router_core.errors import ClientClosedRequestError, DeadlineExceededError, MaskKindError, OverloadedError
from router_core.heads import MaskKind
from router_core.language_id import best_candidate, transcription_masks
from router_core.router import RoutedOutput
from service.pipeline.admission import Admission
from service.pipeline.batching import Pending
from service.pipeline.segments import Plan, Segment, SegmentResult, fixed_windows, segment_settings, shifted

AUTO = "auto"
DISCONNECT_POLL_S = 0.1
ROOM_POLL_S = 0.05  # how often a long recording's next segment looks for room in a full queue


class Transcriber:
    """The work of one admitted request (or one step of a stream)."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.state = admission.state
        self.items: list[Pending] = []  # every batcher item served, for the timing
        self.request_audio_s = 0.0  # the request's audio: its items' fair rank in the queue

    async def check(self, mask: str, kind: MaskKind) -> None:
        """Before any inference: 403 for a mask the key may not use, 404 for an unknown mask (listing what
        exists), 422 for a mask of the other kind. The first mask checked labels the request's metrics."""
        engine, _ = self.state.ready_engine()
        self.admission.require(mask)
        loaded = await run_in_threadpool(engine.registry.get, mask)
        self.admission.mask = self.admission.mask or loaded.name
        if loaded.kind != kind:
            want = "transcription (ctc)" if kind == "ctc" else "classification"
            raise MaskKindError(f"mask {mask!r} is a {loaded.kind} mask, not a {want} mask")

    async def check_language(self, lang: str) -> None:
        """:meth:`check` of what ``lang`` needs first: its mask, or for ``auto`` the language-ID mask."""
        if lang == AUTO:
            await self.check(self.state.settings.language_mask, "classify")
        else:
            await self.check(lang, "ctc")

    async def serve(self, wave: torch.Tensor, mask: str, kind: MaskKind, wait_for_room: bool = False) -> RoutedOutput:
        """One item through the batcher: ``wave [T]`` by ``mask``, within the deadline. ``wait_for_room``: a
        full queue delays the item (a segment of a long recording, a stream's step) instead of refusing it."""
        await self.check(mask, kind)  # every mask any path reaches: lang=auto's candidates and answers too
        _, batcher = self.state.ready_engine()
        item = await self._submit(wave, mask, kind, wait_for_room)
        self.items.append(item)
        waiter = asyncio.ensure_future(batcher.result(item))
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
                if done:
                    return waiter.result()
                if await self.admission.gone():
                    raise client_gone()
        except (ClientClosedRequestError, asyncio.CancelledError):  # nobody waits for it any more: drop the work
            batcher.cancel(item)
            waiter.cancel()
            raise

    async def _submit(self, wave: torch.Tensor, mask: str, kind: MaskKind, wait_for_room: bool) -> Pending:
        _, batcher = self.state.ready_engine()
        if not self.items and self.request_audio_s:  # the request's first item: can it be done in time?
            batcher.check_wait(self.request_audio_s, self.admission.deadline - time.monotonic())
        while True:
            remaining = self.admission.deadline - time.monotonic()  # one deadline for decoding and every pass
            if remaining <= 0:
                raise DeadlineExceededError("the request was not served before its deadline")
            try:
                return batcher.submit(wave, mask, kind, remaining, self.request_audio_s)
            except OverloadedError:
                if not wait_for_room:
                    raise
                if await self.admission.gone():
                    raise client_gone() from None
                await asyncio.sleep(ROOM_POLL_S)

    async def classify(self, wave: torch.Tensor, task: str) -> Classification:
        """``wave [T]`` classified by the task's mask."""
        self._admit_audio(wave.shape[0] / SAMPLE_RATE)
        return classification_of(await self.serve(wave, task, "classify"))

    async def transcribe(self, piece: torch.Tensor, lang: str, decide: bool = True,
                         wait_for_room: bool = False) -> tuple[RoutedOutput, float | None]:
        """``piece [S]`` transcribed by ``lang``'s mask, and for ``auto`` the language-ID probability of the
        language it was transcribed in (``None`` otherwise). ``decide=False`` (a stream's partials) takes the
        language-ID mask's best label as is."""
        if lang != AUTO:
            return await self.serve(piece, lang, "ctc", wait_for_room), None
        settings = self.state.settings
        lid = classification_of(await self.serve(piece, settings.language_mask, "classify", wait_for_room))
        if not decide:
            return await self.serve(piece, lid.label, "ctc", wait_for_room), lid.probabilities[lid.label]
        picker, registry = settings.language_picker(), self.state.ready_engine()[0].registry
        usable: list[str] = []
        if picker.undecided(lid):  # only then does the rule read which masks are usable
            allowed = [label for label in lid.probabilities if self.admission.may_use(label)]
            usable = await run_in_threadpool(transcription_masks, registry, allowed)
        languages = picker.languages_to_transcribe(lid, usable)
        self.state.metrics.observe_language_id("decoding" if len(languages) > 1 else "mask")
        tasks = [asyncio.ensure_future(self.serve(piece, label, "ctc", wait_for_room)) for label in languages]
        try:
            outs = list(await asyncio.gather(*tasks))
        finally:  # one failed (or the request was cancelled): the others' items leave the queue
            for task in tasks:
                task.cancel()
        best = 0 if len(outs) == 1 else await run_in_threadpool(best_candidate, picker, registry, outs, lid)
        return outs[best], lid.probabilities[languages[best]]

    async def plan(self, wave: torch.Tensor) -> Plan:
        """The speech segments of ``wave [T]`` (counted in the segment and speech-ratio metrics): the whole
        clip when it fits one segment (none when the VAD hears no speech), else the VAD's segments, or fixed
        windows with the VAD off."""
        plan = await self._plan(wave)
        speech = sum(s.end - s.start for s in plan.segments) / max(1, wave.shape[0])  # share inside segments
        self.state.metrics.observe_segments(len(plan.segments), speech)
        return plan

    async def _plan(self, wave: torch.Tensor) -> Plan:
        settings, detector = self.state.settings, self.state.speech_detector
        total, longest = wave.shape[0], int(settings.segment_seconds * SAMPLE_RATE)
        if total <= longest:
            if detector is None:
                return Plan([Segment(0, total, None)], None)
            check = await run_in_threadpool(detector.check, wave)
            return Plan([Segment(0, total, check.no_speech_prob)] if check.has_speech else [], check.no_speech_prob)
        if detector is None:
            return Plan([Segment(start, end, None) for start, end in fixed_windows(total, longest)], None)
        found = await run_in_threadpool(detector.segments, wave, segment_settings(settings))
        return Plan([Segment(s.start, s.end, 1.0 - s.speech_prob) for s in found],
                    min((1.0 - s.speech_prob for s in found), default=1.0))

    async def segments(self, wave: torch.Tensor, lang: str, segments: list[Segment]) -> AsyncIterator[SegmentResult]:
        """Each segment's transcript, in order, as soon as it and those before it are done. At most
        ``max_batch_size`` segments of one request wait in the queue at a time; a full queue delays the
        segments of a long recording (admitted when it arrived), and refuses a one-segment clip (503)."""
        engine, _ = self.state.ready_engine()
        in_flight = asyncio.Semaphore(self.state.settings.max_batch_size)
        usable = [s for s in segments if s.end - s.start >= engine.backbone.min_samples]
        wait = len(usable) > 1
        self._admit_audio(sum(s.end - s.start for s in usable) / SAMPLE_RATE)

        async def one(segment: Segment) -> SegmentResult:
            async with in_flight:
                out, probability = await self.transcribe(wave[segment.start:segment.end], lang, wait_for_room=wait)
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

    def _admit_audio(self, audio_s: float) -> None:
        """The request's audio, once known: its items rank in the queue by it, and its first item is only
        enqueued if the queue ahead lets it be done in time (else 503 + Retry-After, at once)."""
        self.request_audio_s = audio_s

    def timing(self) -> dict[str, Any]:
        """Milliseconds: ``queue_ms`` and ``inference_ms`` summed over every item served (a ``lang=auto``
        piece is the language-ID item plus each candidate's; concurrent items overlap in time), ``items``,
        and ``total_ms`` since admission (reading and decoding the upload included)."""
        queue = sum((i.started_at or i.enqueued_at) - i.enqueued_at for i in self.items)
        inference = sum((i.finished_at or i.started_at or 0.0) - (i.started_at or 0.0) for i in self.items)
        return {"queue_ms": round(1000 * queue, 2), "inference_ms": round(1000 * inference, 2),
                "items": len(self.items), "total_ms": round(1000 * (time.monotonic() - self.admission.admitted_at), 2)}


def client_gone() -> ClientClosedRequestError:
    return ClientClosedRequestError("the client closed the request before its answer was ready")


def transcript_of(out: RoutedOutput) -> Transcript:
    if out.transcript is None:  # the batcher refuses outputs of the other kind; never a bare assert here
        raise MaskKindError(f"mask {out.mask_name!r} did not produce a transcript")
    return out.transcript


def classification_of(out: RoutedOutput) -> Classification:
    if out.classification is None:
        raise MaskKindError(f"mask {out.mask_name!r} did not produce a classification")
    return out.classification
