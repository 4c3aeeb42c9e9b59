"""``create_app(settings)``: the FastAPI application users deploy. It only assembles: the shared state
(``service/pipeline/state.py``), start-up (``service/pipeline/lifespan.py``), error handlers (``service/errors.py``),
request metrics, the health routes here, and the speech and mask routes.

``/readyz`` answers 503 with the reason until start-up is done.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import masks, speech, stream
from service.api.docs import METRICS_RESPONSES
from service.errors import install_error_handlers
from service.metrics import ServiceMetrics
from service.pipeline.engine import build_engine
from service.pipeline.lifespan import VERSION, EngineFactory, make_lifespan
from service.pipeline.state import AppState
from service.settings import ServiceSettings

RETRY_READY = {"Retry-After": "5"}  # /readyz while starting or cut off from the store
CLIENT_CLOSED = 499  # nginx's "client closed request", as ClientClosedRequestError is answered


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
        sent = {"start": False, "end": False}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                sent["start"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                sent["end"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
            if sent["start"] and not sent["end"]:  # a streamed answer (SSE) whose client left before its end
                status[0] = CLIENT_CLOSED
        except ClientDisconnect:
            status[0] = CLIENT_CLOSED
            raise
        except Exception:
            if sent["start"] and not sent["end"]:  # failed after its status line was sent
                status[0] = 500
            raise
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            admission = scope.get("state", {}).get("admission")  # set by the admission step, if reached
            mask, key_id = (admission.mask, admission.key_id) if admission is not None else ("", None)
            self.metrics.observe_request(endpoint, mask, status[0], time.perf_counter() - started, key_id)


def create_app(settings: ServiceSettings, engine_factory: EngineFactory = build_engine) -> FastAPI:
    """The application for ``settings``; ``engine_factory`` lets tests inject a tiny engine."""
    state = AppState(settings)
    app = FastAPI(title="s3router", version=VERSION, lifespan=make_lifespan(state, engine_factory),
                  description="One frozen wav2vec2 backbone, many languages and tasks as binary masks.")
    app.state.s3r = state
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)

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
                                    headers=RETRY_READY)
        return JSONResponse({
            "ready": True,
            "registry": registry_status,
            "model": engine.description,
            "demo": engine.is_demo,
            "fingerprint": engine.backbone.fingerprint,
            "kernel": engine.router.backend.name,
            "masks_available": available,
            "masks_resident": resident,
        })

    @app.get("/metrics", tags=["health"], response_class=Response, responses=METRICS_RESPONSES)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(state.metrics.prom_registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(speech.api)
    app.include_router(stream.api)
    app.include_router(masks.api)
    return app
