"""Building masks from keep decisions: exact top-k selection and assembly into a :class:`RoutingMask`.

Top-k keep (the S3-Router rule): for a layer with scores ``s [N, K]`` and keep ratio ``r``, keep the
``k = round(r * N * K)`` weights with the largest ``|s|`` — exactly ``k``, ties broken by index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from router_core.backbone import BackboneSpec
from router_core.heads import HeadSpec
from router_core.kernels.bits import pack_bits
from router_core.mask_file import RoutingMask


def topk_keep(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Boolean mask of ``scores``' shape with exactly ``round(keep_ratio * numel)`` True entries."""
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must be in [0, 1], got {keep_ratio}")
    flat = scores.detach().abs().reshape(-1)
    k = round(keep_ratio * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    return keep.view_as(scores)


def build_mask(
    spec: BackboneSpec,
    name: str,
    head: HeadSpec,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    keep: Mapping[str, torch.Tensor],
    metrics: dict[str, Any] | None = None,
    head_layer_weights: torch.Tensor | None = None,
) -> RoutingMask:
    """Pack per-layer boolean keep masks (``[N, K]`` each) and a head into a :class:`RoutingMask`."""
    shapes = {layer: spec.layer_shapes[layer] for layer in keep}
    return RoutingMask(
        name=name,
        head=head,
        head_weight=head_weight.detach().float().cpu(),
        head_bias=head_bias.detach().float().cpu(),
        layer_bits={layer: pack_bits(k.cpu()) for layer, k in keep.items()},
        layer_shapes=shapes,
        fingerprint=spec.fingerprint,
        metrics=dict(metrics or {}),
        head_layer_weights=None if head_layer_weights is None else head_layer_weights.detach().float().cpu(),
    )


def random_mask(
    spec: BackboneSpec,
    name: str,
    head: HeadSpec,
    layers: Sequence[str],
    keep_ratio: float = 0.9,
    seed: int = 0,
) -> RoutingMask:
    """A mask with random scores (exact top-k per layer) and a random head: for tests and benchmarks."""
    gen = torch.Generator().manual_seed(seed)
    keep = {layer: topk_keep(torch.randn(spec.layer_shapes[layer], generator=gen), keep_ratio) for layer in layers}
    width = head.input_size(spec.hidden_size, spec.num_hidden_states)
    weight = torch.randn(head.num_outputs, width, generator=gen) * 0.1
    bias = torch.zeros(head.num_outputs)
    mix = torch.randn(spec.num_hidden_states, generator=gen) if head.layer_mix else None
    return build_mask(spec, name, head, weight, bias, keep, head_layer_weights=mix)
