"""Prometheus metrics (``s3router_`` prefix). Every update is guarded: metric code never fails a request.

Each app owns its own ``CollectorRegistry`` so several apps (tests, replicas in one process) never
collide. Registry-derived values (resident masks, bytes, hits/misses/evictions) are read at scrape
time by a custom collector, so they cannot drift from the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router_core.registry import MaskRegistry
from service.pipeline.batching import BatchReport

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
SEGMENT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            log.exception("metrics update failed")

    return wrapper


class _RegistryCollector(Collector):
    def __init__(self, get_registry: Callable[[], MaskRegistry | None]) -> None:
        self.get_registry = get_registry

    def collect(self) -> Iterator[Any]:
        registry = self.get_registry()
        if registry is None:
            return
        resident = registry.resident()
        yield GaugeMetricFamily("s3router_masks_resident", "Masks resident on the device", value=len(resident))
        yield GaugeMetricFamily(
            "s3router_mask_resident_bytes", "Bytes of resident masks", value=sum(m.nbytes for m in resident)
        )
        yield GaugeMetricFamily("s3router_mask_budget_bytes", "Resident-mask byte budget", value=registry.budget_bytes)
        stats = registry.stats
        for name, value, doc in (
            ("s3router_mask_cache_hits", stats.hits, "Mask lookups served from resident masks"),
            ("s3router_mask_cache_misses", stats.misses, "Mask lookups that loaded from the store"),
            ("s3router_mask_cache_evictions", stats.evictions, "Masks evicted to stay within the budget"),
            ("s3router_mask_loads", stats.loads, "Masks read from the store, validated and made resident"),
        ):
            yield CounterMetricFamily(name, doc, value=value)


class _GpuCollector(Collector):
    """``s3router_gpu_memory_allocated_bytes{device}`` on CUDA machines; nothing elsewhere."""

    def collect(self) -> Iterator[Any]:
        import torch

        if not torch.cuda.is_available():
            return
        family = GaugeMetricFamily(
            "s3router_gpu_memory_allocated_bytes", "GPU memory held by tensors", labels=["device"]
        )
        for index in range(torch.cuda.device_count()):
            family.add_metric([f"cuda:{index}"], torch.cuda.memory_allocated(index))
        yield family


class ServiceMetrics:
    """All metrics of one app."""

    def __init__(self, get_registry: Callable[[], MaskRegistry | None]) -> None:
        self.prom_registry = CollectorRegistry()
        r = self.prom_registry
        self.requests_by_key = Counter(
            "s3router_requests_by_key", "Requests by API key ID and status", ["key", "status"], registry=r
        )
        self.requests = Counter(
            "s3router_requests", "Requests by endpoint, mask and status", ["endpoint", "mask", "status"], registry=r
        )
        self.latency = Histogram(
            "s3router_request_duration_seconds",
            "Request latency",
            ["endpoint", "mask"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "s3router_queue_wait_seconds", "Time from enqueue to batch start", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("s3router_batch_size", "Requests per batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_masks = Histogram(
            "s3router_batch_masks", "Distinct masks per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "s3router_inference_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.audio_seconds = Counter(
            "s3router_audio_processed_seconds", "Seconds of audio processed (for real-time factor)", registry=r
        )
        self.inference_total = Counter(
            "s3router_inference_busy_seconds", "Seconds the model executor was busy", registry=r
        )
        self.queue_length = Gauge("s3router_queue_length", "Requests waiting for a batch", registry=r)
        self.decoding_pending = Gauge("s3router_decoding_pending", "Outputs waiting for a beam search (decode pool)",
                                      registry=r)
        self.streams_open = Gauge("s3router_streams_open", "Open WebSocket streams", registry=r)
        self.stream_audio = Counter("s3router_stream_audio_seconds", "Audio seconds received over streams",
                                    registry=r)
        self.segments = Histogram("s3router_segments_per_request", "Speech segments a transcription was cut into",
                                  buckets=SEGMENT_BUCKETS, registry=r)
        self.speech_ratio = Histogram("s3router_vad_speech_ratio", "Share of a recording inside speech segments",
                                      buckets=RATIO_BUCKETS, registry=r)
        self.language_id = Counter(
            "s3router_language_id", "lang=auto decisions: by the language-ID mask alone, or by decoding its candidates",
            ["decided_by"], registry=r,
        )
        for decided_by in ("mask", "decoding"):  # both series exist from the start (0, not "no data")
            self.language_id.labels(decided_by)
        self.info = Info("s3router_model", "Backbone and build information", registry=r)
        r.register(_RegistryCollector(get_registry))
        ProcessCollector(namespace="s3router", registry=r)
        r.register(_GpuCollector())

    @_guarded
    def observe_request(self, endpoint: str, mask: str, status: int, seconds: float, key_id: str | None = None) -> None:
        self.requests.labels(endpoint, mask or "-", str(status)).inc()
        if key_id is not None:  # the key's configured ID, never the key
            self.requests_by_key.labels(key_id, str(status)).inc()
        self.latency.labels(endpoint, mask or "-").observe(seconds)

    @_guarded
    def observe_segments(self, segments: int, speech_ratio: float) -> None:
        self.segments.observe(segments)
        self.speech_ratio.observe(speech_ratio)

    @_guarded
    def observe_language_id(self, decided_by: str) -> None:
        self.language_id.labels(decided_by).inc()

    @_guarded
    def observe_batch(self, report: BatchReport) -> None:
        self.batch_size.observe(report.size)
        self.batch_masks.observe(report.masks)
        self.inference.observe(report.inference_seconds)
        self.inference_total.inc(report.inference_seconds)
        self.audio_seconds.inc(report.audio_seconds)
        for wait in report.queue_waits:
            self.queue_wait.observe(wait)

    @_guarded
    def set_info(self, **labels: str) -> None:
        self.info.info(labels)
