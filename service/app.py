"""``create_app(settings)``: the FastAPI application users deploy.

Start-up (lifespan) builds the engine in a worker thread, warms it up with one forward pass, and
starts the batcher; ``/readyz`` answers 503 with the reason until all of that is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router_core.errors import NotReadyError, S3RouterError
from router_core.vad import SpeechDetector
from service.api_docs import METRICS_RESPONSES
from service.api_keys import ApiKeyChecker, parse_api_keys
from service.batching import Batcher
from service.engine import Engine, build_engine
from service.errors import install_error_handlers
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
VERSION = "0.1.0"
RETRY_READY = {"Retry-After": "5"}  # /readyz while starting or cut off from the store


@dataclass
class AppState:
    """Everything the routes share; ``engine``/``batcher`` are set once start-up finished."""

    settings: ServiceSettings
    metrics: ServiceMetrics
    engine: Engine | None = None
    batcher: Batcher | None = None
    speech_detector: SpeechDetector | None = None  # settings.vad
    api_keys: ApiKeyChecker | None = None  # settings.api_keys
    warmed_up: bool = False
    startup_error: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def ready_engine(self) -> tuple[Engine, Batcher]:
        if self.engine is None or self.batcher is None or not self.warmed_up:
            raise NotReadyError(self.not_ready_reason() or "starting")
        return self.engine, self.batcher

    def not_ready_reason(self) -> str | None:
        if self.startup_error:
            return f"start-up failed: {self.startup_error}"
        if self.engine is None:
            return "loading the backbone"
        if not self.warmed_up or self.batcher is None:
            return "warming up"
        return None


def state_of(request: Request) -> AppState:
    return request.app.state.s3r


class RequestMetricsMiddleware:
    """Pure ASGI middleware (keeps disconnect detection intact): counts and times every HTTP request.

    Labels stay bounded: the route *template* (``/masks/{name}``) or ``unmatched``, and the mask name
    only once the handler found that mask (``scope["state"]["mask"]``), else ``-``.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            request_state = scope.get("state", {})
            mask = request_state.get("mask", "")
            self.metrics.observe_request(endpoint, mask, status[0], time.perf_counter() - started,
                                         request_state.get("api_key_id"))  # fmt: skip


def _warm_up(engine: Engine, settings: ServiceSettings) -> None:
    """Kernel tuning for every batch size the settings allow, then one forward pass per mask kind, so
    the first request pays no tuning, compile or allocation cost."""
    engine.router.prepare_kernels(settings.max_batch_size, settings.max_audio_seconds)
    wave = torch.zeros(16_000)
    for name in engine.registry.available()[:2]:
        try:
            engine.router.forward([wave], [name])
        except S3RouterError as exc:  # an unusable stored mask must not block start-up
            log.warning("warm-up skipped mask %s: %s", name, exc)


def create_app(
    settings: ServiceSettings, engine_factory: Callable[[ServiceSettings], Engine] = build_engine
) -> FastAPI:
    """The application for ``settings``; ``engine_factory`` lets tests inject a tiny engine."""
    holder: dict[str, AppState] = {}
    metrics = ServiceMetrics(lambda: holder["state"].engine.registry if holder["state"].engine else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = holder["state"]
        try:
            engine = await run_in_threadpool(engine_factory, settings)
            state.engine = engine
            if settings.vad:
                state.speech_detector = await run_in_threadpool(SpeechDetector, settings.vad_threshold)
            await run_in_threadpool(_warm_up, engine, settings)
            batcher = Batcher(
                engine.router.forward,
                max_batch=settings.max_batch_size,
                max_wait_s=settings.max_wait_ms / 1000.0,
                max_queue=settings.max_queue,
                on_batch=metrics.observe_batch,
            )
            batcher.start()
            state.batcher = batcher
            metrics.queue_length.set_function(lambda: batcher.queue_length)
            metrics.set_info(
                version=VERSION,
                backbone=engine.description,
                fingerprint=engine.backbone.fingerprint,
                kernel=engine.router.backend.name,
                device=str(engine.backbone.device),
            )
            state.warmed_up = True
        except Exception as exc:  # noqa: BLE001 - reported by /readyz instead of killing the process
            log.exception("start-up failed")
            state.startup_error = f"{type(exc).__name__}: {exc}"
        yield
        if state.batcher is not None:
            await state.batcher.stop()
        if state.engine is not None:
            state.engine.close()

    app = FastAPI(title="s3router", version=VERSION, lifespan=lifespan,
                  description="One frozen wav2vec2 backbone, many languages and tasks as binary masks.")  # fmt: skip
    state = AppState(settings=settings, metrics=metrics)
    if settings.api_keys is not None:
        state.api_keys = ApiKeyChecker(parse_api_keys(settings.api_keys.get_secret_value()))
    holder["state"] = state
    app.state.s3r = state

    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready: {ready: false, reason}"}})
    async def readyz() -> JSONResponse:
        reason = state.not_ready_reason()
        if reason is not None or state.engine is None:
            return JSONResponse({"ready": False, "reason": reason}, status_code=503, headers=RETRY_READY)
        engine = state.engine
        resident = len(engine.registry.resident())
        registry_status, available = ("degraded" if engine.registry_degraded else "ok"), None
        try:
            available = len(await asyncio.wait_for(run_in_threadpool(engine.registry.available), timeout=2.0))
        except Exception as exc:  # noqa: BLE001 - the store is down: serve what is resident
            registry_status = "degraded"
            if resident == 0:
                return JSONResponse({"ready": False, "reason": f"mask registry unreachable: {exc}"}, status_code=503,
                                    headers=RETRY_READY)  # fmt: skip
        return JSONResponse({
            "ready": True,
            "registry": registry_status,
            "model": engine.description,
            "demo": engine.is_demo,
            "fingerprint": engine.backbone.fingerprint,
            "kernel": engine.router.backend.name,
            "masks_available": available,
            "masks_resident": resident,
        })  # fmt: skip

    @app.get("/metrics", tags=["health"], response_class=Response, responses=METRICS_RESPONSES)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from service.masks_api import router as masks_router
    from service.speech_api import router as speech_router

    app.include_router(speech_router)
    app.include_router(masks_router)
    return app
