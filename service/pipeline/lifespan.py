"""Start-up and shut-down of the service (the FastAPI lifespan): build the engine in a worker thread, load
the speech gate, tune the kernels and warm up one mask of each kind, start the batcher. Failures are
kept for ``/readyz`` instead of killing the process."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import metadata

import torch
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from router_core.backbone import SAMPLE_RATE
from router_core.errors import S3RouterError
from router_core.vad import SpeechDetector
from service.pipeline.batching import Batcher
from service.pipeline.engine import Engine
from service.pipeline.state import AppState
from service.settings import ServiceSettings

CPU_BATCH_AUDIO_S = 30.0  # on a CPU a batch costs about the sum of its items: small ones keep short waits short
log = logging.getLogger(__name__)
VERSION = metadata.version("s3router")

EngineFactory = Callable[[ServiceSettings], Engine]
WARM_UP_TRIES = 16  # masks loaded at most while looking for one of each kind
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def make_lifespan(state: AppState, engine_factory: EngineFactory) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await _start(state, engine_factory)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz instead of killing the process
            log.exception("start-up failed")
            state.startup_error = f"{type(exc).__name__}: {exc}"
        yield
        if state.batcher is not None:
            await state.batcher.stop()
        if state.engine is not None:
            state.engine.close()

    return lifespan


async def _start(state: AppState, engine_factory: EngineFactory) -> None:
    settings, metrics = state.settings, state.metrics
    started = time.perf_counter()
    engine = state.engine = await run_in_threadpool(engine_factory, settings)
    built = time.perf_counter()
    if settings.vad:
        state.speech_detector = await run_in_threadpool(SpeechDetector, settings.vad_threshold)
    gated = time.perf_counter()
    await run_in_threadpool(warm_up, engine, settings)
    log.info("start-up: engine %.1f s, speech gate %.1f s, kernels and warm-up %.1f s", built - started,
             gated - built, time.perf_counter() - gated)
    batcher = Batcher(
        engine.run_batch,
        finish=engine.finish,
        max_batch=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_queue=settings.max_queue,
        max_queue_wait_s=settings.max_queue_wait_s,
        max_batch_audio_s=settings.max_batch_audio_s or (CPU_BATCH_AUDIO_S if settings.device == "cpu" else None),
        on_batch=metrics.observe_batch,
    )
    batcher.start()
    state.batcher = batcher
    metrics.queue_length.set_function(lambda: batcher.queue_length)
    metrics.decoding_pending.set_function(lambda: batcher.finishing)
    metrics.set_info(
        version=VERSION,
        backbone=engine.description,
        fingerprint=engine.backbone.fingerprint,
        kernel=engine.router.backend.name,
        device=str(engine.backbone.device),
    )
    state.warmed_up = True


def warm_up(engine: Engine, settings: ServiceSettings) -> list[str]:
    """Kernel tuning for every batch size the settings allow, then one forward pass with one mask of each
    kind among the first ``WARM_UP_TRIES`` in the store, so that the first request pays no tuning, compile or
    allocation cost. Returns the masks it ran."""
    started = time.perf_counter()
    engine.router.prepare_kernels(settings.max_batch_size, settings.max_audio_seconds)
    log.info("kernels prepared in %.1f s", time.perf_counter() - started)
    wave = torch.zeros(SAMPLE_RATE)  # [16000]: one second
    warmed: dict[str, str] = {}
    for name in engine.registry.available()[:WARM_UP_TRIES]:  # a store of 1,000 CTC masks loads 16, not all
        try:
            kind = engine.registry.get(name).kind
            if kind not in warmed:
                engine.router.forward([wave], [name])
                warmed[kind] = name
        except S3RouterError as exc:  # an unusable stored mask must not block start-up
            log.warning("warm-up skipped mask %s: %s", name, exc)
        if len(warmed) == 2:  # ctc and classify
            break
    _start_decode_workers(engine, warmed.get("ctc"), wave)
    return list(warmed.values())


def _start_decode_workers(engine: Engine, ctc_mask: str | None, wave: torch.Tensor) -> None:
    """One beam search per decode worker at once, so every worker process is started (and has imported
    torch) before the first request, not on it."""
    if ctc_mask is None or engine.decode_pool.workers == 0:
        return
    outs = [engine.router.forward([wave], [ctc_mask], defer_beam=True)[0] for _ in range(engine.decode_pool.workers)]
    jobs = [engine.decode_pool.submit(out.beam, out.logits) for out in outs if out.beam is not None]
    for job in jobs:
        job.result()
