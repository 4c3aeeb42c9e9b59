"""s3router's engine: one frozen wav2vec2-family backbone, per-language/task binary masks, mixed-mask batches.

Layers: ``kernels`` (masked matmul; no model code) <- ``maskable``/``backbone`` <- ``mask_file``/``heads``
<- ``registry`` <- ``router``. The service (``service/``) builds on :class:`Router`.
"""

from router_core.backbone import Backbone, BackboneSpec, load_backbone
from router_core.decoding import Classification, Transcript, Word
from router_core.heads import HeadSpec
from router_core.kernels.backend import KernelBackend, select_backend
from router_core.mask_builder import build_mask, random_mask, topk_keep
from router_core.mask_file import RoutingMask, check_compatible, decode_mask, encode_mask
from router_core.registry import DirectoryStore, LoadedMask, MaskRegistry, MaskStore
from router_core.router import RoutedOutput, Router

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
