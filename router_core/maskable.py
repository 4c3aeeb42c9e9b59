"""Maskable layers of a wav2vec2-family encoder and the per-forward routing plan they read.

Naming and order (stable; mask files refer to layers by these names). For transformer layer ``i``
of the encoder, in this order::

    encoder.layers.{i}.feed_forward.intermediate_dense   # fc1  [intermediate, hidden]
    encoder.layers.{i}.feed_forward.output_dense         # fc2  [hidden, intermediate]
    encoder.layers.{i}.attention.q_proj                  # only with attention masking
    encoder.layers.{i}.attention.k_proj
    encoder.layers.{i}.attention.v_proj
    encoder.layers.{i}.attention.out_proj

The two feed-forward linears are the default (the paper's ``fix_attn`` setting). Every one of these
linears is replaced by a :class:`MaskedLinear` that keeps the original ``weight``/``bias`` parameters
(state-dict keys are unchanged) and, while a :class:`RoutingPlan` is active, applies each batch
segment's mask through the selected kernel backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from router_core.errors import BackboneError
from router_core.kernels.backend import KernelBackend
from router_core.kernels.reference import DENSE_SEGMENT, Segments

FFN_SUFFIXES = ("feed_forward.intermediate_dense", "feed_forward.output_dense")
ATTENTION_SUFFIXES = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj")


def maskable_layer_names(num_layers: int, include_attention: bool = False) -> list[str]:
    """The documented names, in order, for an encoder of ``num_layers`` transformer layers."""
    suffixes = FFN_SUFFIXES + (ATTENTION_SUFFIXES if include_attention else ())
    return [f"encoder.layers.{i}.{s}" for i in range(num_layers) for s in suffixes]


@dataclass
class RoutingPlan:
    """Which mask each batch item uses, resolved per layer.

    ``segments`` cuts the batch (dim 0 of ``[B, T, D]``) into runs of items sharing a mask;
    ``layer_bits[name][j]`` is mask ``j``'s packed bits for layer ``name`` (``None``: not masked there).
    """

    segments: Segments
    layer_bits: dict[str, list[torch.Tensor | None]]
    backend: KernelBackend
    _per_layer: dict[str, tuple[list[torch.Tensor], Segments] | None] = field(default_factory=dict)
    _scaled: dict[tuple[Segments, int], Segments] = field(default_factory=dict)

    def for_layer(self, name: str) -> tuple[list[torch.Tensor], Segments] | None:
        """``(bits_stack, segments)`` for one layer, or ``None`` when no item masks it."""
        if name not in self._per_layer:
            self._per_layer[name] = self._resolve(name)
        return self._per_layer[name]

    def rows(self, segments: Segments, frames: int) -> Segments:
        """``segments`` over the ``B * frames`` rows of a ``[B, frames, K]`` input (built once per pass)."""
        key = (segments, frames)
        scaled = self._scaled.get(key)
        if scaled is None:
            scaled = self._scaled[key] = segments.scaled(frames)
        return scaled

    def _resolve(self, name: str) -> tuple[list[torch.Tensor], Segments] | None:
        per_mask = self.layer_bits.get(name)
        if per_mask is None or all(b is None for b in per_mask):
            return None
        stack: list[torch.Tensor] = []
        remap: dict[int, int] = {}
        for j, bits in enumerate(per_mask):
            if bits is not None:
                remap[j] = len(stack)
                stack.append(bits)
        ids = tuple(remap.get(m, DENSE_SEGMENT) for m in self.segments.mask_ids)
        return stack, Segments(self.segments.offsets, ids)


class WeightTransform(Protocol):
    """Training hook: the (differentiable) weight a maskable layer should use, or ``None`` to keep W."""

    def masked_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor | None: ...


_ACTIVE_PLAN: ContextVar[RoutingPlan | None] = ContextVar("s3router_routing_plan", default=None)
_ACTIVE_TRANSFORM: ContextVar[WeightTransform | None] = ContextVar("s3router_weight_transform", default=None)


@contextlib.contextmanager
def _activated(var: ContextVar, value: object) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def weight_transform(transform: WeightTransform) -> contextlib.AbstractContextManager[None]:
    """Route every maskable layer's weight through ``transform`` (mask learning) inside the block."""
    return _activated(_ACTIVE_TRANSFORM, transform)


def routing(plan: RoutingPlan) -> contextlib.AbstractContextManager[None]:
    """Activate ``plan`` for the forward passes inside the ``with`` block (this thread/context only)."""
    return _activated(_ACTIVE_PLAN, plan)


class MaskedLinear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is masked per batch segment by the active routing plan.

    ``y[b] = x[b] @ (W * M_{mask(b)})^T + bias`` for ``x [B, T, K]``; with no active plan (or no mask
    on this layer) it is exactly ``F.linear(x, W, bias)``.
    """

    def __init__(self, name: str, linear: nn.Linear) -> None:
        super().__init__()
        self.name = name
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight  # [N, K], shared with the original module
        self.bias = linear.bias  # [N] or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        transform = _ACTIVE_TRANSFORM.get()
        if transform is not None:
            weight = transform.masked_weight(self.name, self.weight)
            return F.linear(x, self.weight if weight is None else weight, self.bias)
        plan = _ACTIVE_PLAN.get()
        resolved = plan.for_layer(self.name) if plan is not None else None
        if plan is None or resolved is None:
            return F.linear(x, self.weight, self.bias)
        bits_stack, segments = resolved
        if x.dim() != 3 or x.shape[0] != segments.total_rows:
            raise RuntimeError(f"{self.name}: expected [B={segments.total_rows}, T, K], got {tuple(x.shape)}")
        batch, frames, _ = x.shape
        rows = x.reshape(batch * frames, self.in_features)  # [B*T, K]
        out = plan.backend.segmented_masked_linear(
            rows, self.weight, self.bias, bits_stack, plan.rows(segments, frames)
        )  # [B*T, N]
        return out.reshape(batch, frames, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.name}: in={self.in_features}, out={self.out_features}"


def install_masked_linears(base_model: nn.Module, num_layers: int) -> dict[str, MaskedLinear]:
    """Replace every maskable linear of ``base_model`` (FFN and attention) by a :class:`MaskedLinear`."""
    installed: dict[str, MaskedLinear] = {}
    for name in maskable_layer_names(num_layers, include_attention=True):
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = base_model.get_submodule(parent_name)
        except AttributeError as exc:
            raise BackboneError(f"backbone has no maskable layer {name!r}: {exc}") from exc
        module = getattr(parent, attr, None)
        if isinstance(module, MaskedLinear):
            installed[name] = module
            continue
        if not isinstance(module, nn.Linear):
            raise BackboneError(f"{name} is {type(module).__name__}, expected nn.Linear")
        wrapped = MaskedLinear(name, module)
        setattr(parent, attr, wrapped)
        installed[name] = wrapped
    return installed
