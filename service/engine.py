"""Building the engine the service runs: backbone + registry + router, or the built-in demo model."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from router_core.backbone import Backbone, load_backbone
from router_core.heads import HeadSpec
from router_core.kernels.backend import select_backend
from router_core.mask_builder import random_mask
from router_core.mask_file import encode_mask
from router_core.registry import DirectoryStore, MaskRegistry
from router_core.router import Router
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

DEMO_DESCRIPTION = (
    "built-in demo: a tiny wav2vec2 with random weights and random masks 'en' (ctc) and 'speaker' "
    "(classify); it answers with well-formed nonsense. Set S3R_BACKBONE and S3R_REGISTRY for a real model."
)
DEMO_VOCAB = ["<pad>", "|", *"abcdefghijklmnopqrstuvwxyz'"]


@dataclass
class Engine:
    backbone: Backbone
    registry: MaskRegistry
    router: Router
    description: str
    is_demo: bool = False


def demo_backbone(device: str = "cpu", dtype: torch.dtype = torch.float32) -> Backbone:
    """A deterministic tiny wav2vec2 (hidden 64, 2 layers) built in code: no weights to download."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        conv_dim=(64,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    return Backbone.from_model(Wav2Vec2Model(config), device=device, dtype=dtype)


def build_engine(settings: ServiceSettings) -> Engine:
    """Load what ``settings`` name; with no backbone configured, the built-in demo model."""
    dtype = getattr(torch, settings.dtype)
    budget = int(settings.mask_budget_mb * 2**20)
    if settings.backbone is None:
        backbone = demo_backbone(settings.device, dtype)
        folder = Path(tempfile.mkdtemp(prefix="s3router-demo-masks-"))
        registry = MaskRegistry(DirectoryStore(folder), backbone.spec(), device=backbone.device, dtype=dtype,
                                budget_bytes=budget)  # fmt: skip
        layers = backbone.default_layer_names()
        speakers = HeadSpec(kind="classify", labels=[f"speaker{i}" for i in range(8)])
        for name, head, seed in (("en", HeadSpec(kind="ctc", vocab=DEMO_VOCAB), 1), ("speaker", speakers, 2)):
            registry.put(encode_mask(random_mask(backbone.spec(), name, head, layers, 0.9, seed)))
        description, is_demo = DEMO_DESCRIPTION, True
    else:
        backbone = load_backbone(settings.backbone, device=settings.device, dtype=dtype,
                                 local_files_only=settings.offline)  # fmt: skip
        registry = MaskRegistry(DirectoryStore(settings.registry), backbone.spec(), device=backbone.device,
                                dtype=dtype, budget_bytes=budget)  # fmt: skip
        description, is_demo = f"{backbone.config.model_type} from {settings.backbone}", False
    backend = select_backend(backbone.device, None if settings.kernel == "auto" else settings.kernel)
    return Engine(backbone, registry, Router(backbone, registry, backend), description, is_demo)
