"""Test helpers shared by the suite: tiny wav2vec2-family backbones built in code (no downloads), masks,
registries, encoded audio, a tiny engine for the app, live servers. Fixtures stay in conftest.py."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

# Triton kernels run under the interpreter on CPU-only machines; this must be set before triton's
# kernels are created, i.e. before router_core.kernels.triton_masked is imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
import pytest  # noqa: E402
from transformers import (  # noqa: E402
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

import router_core.kernels.triton_masked  # noqa: E402,F401  (its kernels are created in the mode set above)
from router_core.backbone import Backbone  # noqa: E402
from router_core.heads import HeadSpec  # noqa: E402
from router_core.mask_builder import random_mask  # noqa: E402
from router_core.mask_file import encode_mask  # noqa: E402
from router_core.registry import DirectoryStore, MaskRegistry  # noqa: E402

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,  # not a multiple of 8: exercises partial bytes
    conv_dim=(16, 16, 16),
    conv_stride=(5, 4, 4),
    conv_kernel=(10, 4, 4),
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=4,
    vocab_size=12,
)

ARCHS = {
    "wav2vec2-group": (Wav2Vec2Config, Wav2Vec2Model, dict(feat_extract_norm="group")),
    "wav2vec2-layer": (Wav2Vec2Config, Wav2Vec2Model, dict(feat_extract_norm="layer", do_stable_layer_norm=True)),
    "hubert": (HubertConfig, HubertModel, {}),
    "wavlm": (WavLMConfig, WavLMModel, dict(num_buckets=16, max_bucket_distance=40)),
    "data2vec-audio": (
        Data2VecAudioConfig,
        Data2VecAudioModel,
        dict(conv_pos_kernel_size=5, num_conv_pos_embeddings=3),
    ),
}

CTC_VOCAB = ["<pad>", "|", "a", "b", "c", "d", "e", "l", "o", "h", "'", "x"]


def tiny_config(arch: str):
    config_cls, _, extra = ARCHS[arch]
    return config_cls(**{**TINY, **extra})


def tiny_model(arch: str = "wav2vec2-group", seed: int = 0):
    torch.manual_seed(seed)
    config_cls, model_cls, extra = ARCHS[arch]
    return model_cls(config_cls(**{**TINY, **extra}))


def tiny_backbone(arch: str = "wav2vec2-group", seed: int = 0) -> Backbone:
    return Backbone.from_model(tiny_model(arch, seed))


def ctc_spec() -> HeadSpec:
    return HeadSpec(kind="ctc", vocab=list(CTC_VOCAB), blank_id=0)


def classify_spec(n: int = 3) -> HeadSpec:
    return HeadSpec(kind="classify", labels=[f"label{i}" for i in range(n)])


def waves(*lengths: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen) for n in lengths]


def ctc_mask_bytes(bb: Backbone, name: str, seed: int = 0) -> bytes:
    """A random CTC mask file for ``bb`` (keep 0.9 of the default layers)."""
    return encode_mask(random_mask(bb.spec(), name, ctc_spec(), bb.default_layer_names(), 0.9, seed=seed))


def add_masks(registry: MaskRegistry, bb: Backbone, names: list[str], keep: float = 0.9, attention=False):
    """Random masks (seeded by position) written through the registry; returns them."""
    out = []
    for i, name in enumerate(names):
        spec = classify_spec() if name.startswith("cls") else ctc_spec()
        if name.startswith("cls_mix"):  # statistics pooling over a weighted mix of all hidden states
            spec.pooling, spec.layer_mix = "mean_std", True
        if name.startswith("cls_cat"):  # statistics pooling over all hidden states side by side
            spec.pooling, spec.layer_concat = "mean_std", True
        mask = random_mask(bb.spec(), name, spec, bb.default_layer_names(attention), keep, seed=100 + i)
        registry.put(encode_mask(mask))
        out.append(mask)
    return out


# --- service fixtures ------------------------------------------------------------------------------
ADMIN_TOKEN = "test-admin-token-123"
REDIS_URL = "redis://127.0.0.1:6379/0"  # the real Redis the suite runs against (make test starts one)


def audio_bytes(seconds: float = 1.0, rate: int = 16_000, channels: int = 1, fmt: str = "WAV", seed: int = 0) -> bytes:
    """Real encoded audio (noise + a tone) in WAV, FLAC, OGG or MP3."""
    import io

    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / rate) + 0.05 * rng.standard_normal(n)
    data = np.repeat(tone[:, None], channels, axis=1).astype("float32")
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def tiny_engine_factory(
    mask_names=("fr", "de", "cls_speaker"), run_delay: float = 0.0, more_masks=None, before_forward=None
):
    """An engine factory for create_app: tiny backbone, random masks, real registry in settings.registry;
    ``more_masks(backbone)``: mask files put after those (replacing masks of the same names);
    ``run_delay`` seconds or ``before_forward()`` before every forward pass (to hold a batch in it)."""
    from router_core.kernels.backend import select_backend
    from router_core.router import Router
    from service.pipeline.engine import Engine

    def factory(settings):
        bb = tiny_backbone()
        registry = MaskRegistry(DirectoryStore(settings.registry), bb.spec(), budget_bytes=64 * 2**20)
        add_masks(registry, bb, list(mask_names))
        for data in more_masks(bb) if more_masks is not None else []:
            registry.put(data)
        router = Router(bb, registry, select_backend("cpu", "cpu"))
        if run_delay or before_forward is not None:
            original = router.forward

            def slow_forward(*args, **kwargs):
                import time

                time.sleep(run_delay)
                if before_forward is not None:
                    before_forward()
                return original(*args, **kwargs)

            router.forward = slow_forward  # type: ignore[method-assign]
        return Engine(bb, registry, router, "tiny test engine")

    return factory


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, seconds: float = 120.0) -> None:
    """Poll ``url`` until it answers 200, or fail the test."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {seconds:g} s")


@contextlib.contextmanager
def serve_in_thread(app, **config):
    """A real uvicorn server of ``app`` on a free loopback port, in a thread; yields its base URL once
    ``/readyz`` answers 200. ``config``: more ``uvicorn.Config`` arguments."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/readyz", 60)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def language_id_mask(bb: Backbone, bias: tuple[float, float]) -> bytes:
    """A ``language`` mask file over [fr, de] that gives every clip the probabilities ``softmax(bias)``."""
    lid = random_mask(bb.spec(), "language", HeadSpec(kind="classify", labels=["fr", "de"]),
                      bb.default_layer_names(), 0.9, seed=9)
    lid.head_weight.zero_()
    lid.head_bias.copy_(torch.tensor(bias))
    return encode_mask(lid)


def unsure_language_masks(bb: Backbone) -> list[bytes]:
    """Mask files for a language-ID test: ``language`` that leans to fr (p = 0.55) whatever it hears; a ``de``
    mask that hears silence in everything (all blank, an empty transcript that explains its output perfectly)
    and an ``fr`` mask that hears 'x' in everything (a transcript its flat output explains poorly). So
    decoding must pick de, and the mask alone fr."""
    files = [language_id_mask(bb, (0.1, -0.1))]
    for name, token, logit in (("de", "<pad>", 20.0), ("fr", "x", 1.0)):
        mask = random_mask(bb.spec(), name, ctc_spec(), bb.default_layer_names(), 0.9, seed=10)
        mask.head_weight.zero_()
        mask.head_bias.zero_()
        mask.head_bias[CTC_VOCAB.index(token)] = logit
        files.append(encode_mask(mask))
    return files


def dashboard_panels_without_data(prometheus_url: str, gpu: bool = False) -> list[str]:
    """Titles of the Grafana dashboard's panels whose queries return nothing from that Prometheus (GPU-only
    panels are left out unless ``gpu``)."""
    import json

    import httpx

    dashboard = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "s3router.json"
    missing = []
    for panel in json.loads(dashboard.read_text())["panels"]:
        if "gpu" in panel["title"].lower() and not gpu:
            continue  # GPU memory exists only on GPU replicas
        for target in panel["targets"]:
            r = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": target["expr"]}, timeout=10).json()
            if r["status"] != "success" or not r["data"]["result"]:
                missing.append(panel["title"])
    return missing
