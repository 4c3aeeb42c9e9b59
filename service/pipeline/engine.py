"""Building the engine the service runs: backbone + registry + router, or the built-in demo model."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from router_core.backbone import Backbone, load_backbone
from router_core.decode_pool import DecodePool
from router_core.errors import BackboneError
from router_core.heads import HeadSpec
from router_core.kernels.backend import select_backend
from router_core.mask_builder import random_mask
from router_core.mask_file import encode_mask
from router_core.redis_store import RedisStore, RegistryWatcher
from router_core.registry import DirectoryStore, MaskRegistry
from router_core.router import RoutedOutput, Router
from router_core.stores import is_store_url, open_store, redact_url
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "masks"  # service/pipeline/engine.py -> the checkout
"""Where the bundled default model lies in a source checkout: ``masks/backbone`` (a HF checkpoint) and
``masks/registry`` (mask files). An installed package has no such folder beside it: the image names its copy
with ``S3R_BUNDLE_DIR``."""

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
    watcher: RegistryWatcher | None = None  # set for a Redis registry: hot reload across replicas
    decode_pool: DecodePool = field(default_factory=lambda: DecodePool(0))  # beam searches off the model thread

    @property
    def registry_degraded(self) -> bool:
        return self.watcher is not None and (self.watcher.degraded or self.watcher.store_reset)

    def run_batch(self, waves: list[torch.Tensor], mask_names: list[str]) -> list[RoutedOutput]:
        """The model thread's part of a batch: beam searches are left to :meth:`finish` when the pool has
        workers."""
        return self.router.forward(waves, mask_names, defer_beam=self.decode_pool.workers > 0)

    async def finish(self, out: RoutedOutput, deadline: float | None = None) -> RoutedOutput:
        """Run ``out``'s pending beam search in the decode pool (awaiting it, off the event loop), until
        ``deadline`` (``time.monotonic()``) at most."""
        if out.beam is not None:
            out.transcript = await asyncio.wrap_future(self.decode_pool.submit(out.beam, out.logits, deadline))
            out.beam = None
        return out

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.decode_pool.close()


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


def bundle_dir(configured: str | None) -> Path | None:
    """The bundled default model's folder: ``configured`` (``S3R_BUNDLE_DIR``), which must hold one, else the
    source checkout's ``masks/`` when it does; ``None`` when there is no bundle."""
    if configured is not None:
        folder = Path(configured).expanduser()
        if not (folder / "backbone" / "config.json").is_file():
            raise BackboneError(f"S3R_BUNDLE_DIR={configured} holds no bundled model (no backbone/config.json)")
        return folder
    return BUNDLE_DIR if (BUNDLE_DIR / "backbone" / "config.json").is_file() else None


def build_engine(settings: ServiceSettings) -> Engine:
    """Load what ``settings`` name. With no backbone configured, the bundled default model (its masks from
    ``S3R_REGISTRY`` when set, e.g. a Redis store seeded by ``s3router masks seed``), else the built-in demo."""
    dtype = getattr(torch, settings.dtype)
    budget = int(settings.mask_budget_mb * 2**20)
    backbone_source, registry_dir = settings.backbone, settings.registry
    bundle = bundle_dir(settings.bundle_dir) if backbone_source is None else None
    if bundle is not None:
        backbone_source = str(bundle / "backbone")
        registry_dir = registry_dir or str(bundle / "registry")
    if backbone_source is None and registry_dir is not None and is_store_url(registry_dir):
        raise BackboneError(f"S3R_REGISTRY={redact_url(registry_dir)} is a shared store, but no backbone is "
                            "configured and no bundled model was found: set S3R_BACKBONE or S3R_BUNDLE_DIR (the "
                            "random demo model never writes into a shared store)")
    if backbone_source is None:
        backbone = demo_backbone(settings.device, dtype)
        folder = registry_dir or tempfile.mkdtemp(prefix="s3router-demo-masks-")
        registry = MaskRegistry(DirectoryStore(folder), backbone.spec(), device=backbone.device, dtype=dtype,
                                budget_bytes=budget)
        layers = backbone.default_layer_names()
        speakers = HeadSpec(kind="classify", labels=[f"speaker{i}" for i in range(8)])
        for name, head, seed in (("en", HeadSpec(kind="ctc", vocab=DEMO_VOCAB), 1), ("speaker", speakers, 2)):
            registry.put(encode_mask(random_mask(backbone.spec(), name, head, layers, 0.9, seed)))
        description, is_demo = DEMO_DESCRIPTION, True
    else:
        backbone = load_backbone(backbone_source, device=settings.device, dtype=dtype,
                                 local_files_only=settings.offline)
        if registry_dir is None:
            raise BackboneError("S3R_BACKBONE is set, so S3R_REGISTRY must say where its masks are")
        store = open_store(registry_dir, settings.redis_prefix)
        registry = MaskRegistry(store, backbone.spec(), device=backbone.device, dtype=dtype, budget_bytes=budget)
        bundled = settings.backbone is None
        description = ("bundled default: tiny wav2vec2 (character-CTC pretrained on espeak-ng speech) + masks"
                       if bundled else f"{backbone.config.model_type} from {backbone_source}")
        is_demo = False
    # "auto" included: the settings are the only source
    backend = select_backend(backbone.device, settings.kernel, settings.kernel_cache_dir,
                             int(settings.materialized_mask_mb * 2**20))
    watcher = RegistryWatcher(registry, registry.store).start() if isinstance(registry.store, RedisStore) else None
    router = Router(backbone, registry, backend, settings.decoder)
    return Engine(backbone, registry, router, description, is_demo, watcher, DecodePool(settings.decode_workers))
