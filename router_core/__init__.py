"""s3router's engine: one frozen wav2vec2-family backbone, per-language/task binary masks, mixed-mask batches.

Layers: ``kernels`` (masked matmul; no model code) <- ``maskable``/``backbone`` <- ``mask_file``/``heads``
<- ``registry`` <- ``router``. The service (``service/``) builds on :class:`Router`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, imported on first use (a decode worker needs none of transformers)
    from router_core.backbone import Backbone, BackboneSpec, load_backbone
    from router_core.decoding import Classification, Transcript, Word
    from router_core.heads import HeadSpec
    from router_core.kernels.backend import KernelBackend, select_backend
    from router_core.mask_builder import build_mask, random_mask, topk_keep
    from router_core.mask_file import RoutingMask, check_compatible, decode_mask, encode_mask
    from router_core.registry import DirectoryStore, LoadedMask, MaskRegistry, MaskStore
    from router_core.router import RoutedOutput, Router

_HOMES = {
    "Backbone": "backbone", "BackboneSpec": "backbone", "load_backbone": "backbone",
    "Classification": "decoding", "Transcript": "decoding", "Word": "decoding",
    "HeadSpec": "heads",
    "KernelBackend": "kernels.backend", "select_backend": "kernels.backend",
    "build_mask": "mask_builder", "random_mask": "mask_builder", "topk_keep": "mask_builder",
    "RoutingMask": "mask_file", "check_compatible": "mask_file", "decode_mask": "mask_file",
    "encode_mask": "mask_file",
    "DirectoryStore": "registry", "LoadedMask": "registry", "MaskRegistry": "registry", "MaskStore": "registry",
    "RoutedOutput": "router", "Router": "router",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'router_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f"router_core.{home}"), name)


__all__ = [
    "Backbone",
    "BackboneSpec",
    "Classification",
    "DirectoryStore",
    "HeadSpec",
    "KernelBackend",
    "LoadedMask",
    "MaskRegistry",
    "MaskStore",
    "RoutedOutput",
    "Router",
    "RoutingMask",
    "Transcript",
    "Word",
    "build_mask",
    "check_compatible",
    "decode_mask",
    "encode_mask",
    "load_backbone",
    "random_mask",
    "select_backend",
    "topk_keep",
]
