"""What the routes share: the settings, metrics, and the engine and batcher once start-up finished."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from router_core.errors import NotReadyError
from router_core.registry import MaskRegistry
from router_core.vad import SpeechDetector
from service.metrics import ServiceMetrics
from service.pipeline.api_keys import ApiKeyChecker, parse_api_keys
from service.pipeline.batching import Batcher
from service.pipeline.engine import Engine
from service.settings import ServiceSettings


@dataclass
class AppState:
    """Everything the routes share; ``engine``/``batcher`` are set once start-up finished. The metrics
    and the API keys follow from the settings."""

    settings: ServiceSettings
    metrics: ServiceMetrics = field(init=False)
    api_keys: ApiKeyChecker | None = field(init=False)  # settings.api_keys
    engine: Engine | None = None
    batcher: Batcher | None = None
    speech_detector: SpeechDetector | None = None  # settings.vad, loaded at start-up
    warmed_up: bool = False
    startup_error: str | None = None
    started_at: float = field(default_factory=time.time)  # Unix seconds (OpenAI's model "created")
    open_streams: int = 0  # WebSocket streams being served

    def __post_init__(self) -> None:
        self.metrics = ServiceMetrics(self.mask_registry)
        self.metrics.streams_open.set_function(lambda: self.open_streams)
        keys = self.settings.api_keys
        self.api_keys = ApiKeyChecker(parse_api_keys(keys.get_secret_value())) if keys is not None else None

    def mask_registry(self) -> MaskRegistry | None:
        return self.engine.registry if self.engine is not None else None

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


def state_of(request: HTTPConnection) -> AppState:
    return request.app.state.s3r
