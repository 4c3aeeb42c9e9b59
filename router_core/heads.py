"""Per-mask output heads, trained as ordinary weights on top of the masked backbone.

Input features ``h[t]`` of one item (``D`` wide) are either the last hidden states or, with
``layer_mix``, a learned softmax-weighted sum over every hidden state the encoder produces (its input
embeddings and each layer's output, ``S = layers + 1`` of them; SUPERB's weighted-layer sum):
``h[t] = sum_s softmax(a)_s * H_s[t]``. A classification head may instead read them side by side,
``layer_concat``: ``h[t] = [H_1[t] ; ... ; H_S[t]]`` (``S * D`` wide), which keeps what each layer knows
apart (speaker identity fades layer by layer in a backbone trained for transcription).

* CTC head: ``logits[t] = h[t] @ W^T + b`` over a vocabulary (``W [V, D]``), decoded with CTC.
* Classification head: pool the valid frames, ``p = softmax(pool(h) @ W^T + b)``, where ``pool`` is
  ``mean_t h[t]`` (``W [L, D]``) or, with ``pooling="mean_std"``, the statistics pooling
  ``[mean_t h[t] ; std_t h[t]]`` (``W [L, 2D]``) that speaker recognition needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import nn

from router_core.errors import InvalidInputError

MaskKind = Literal["ctc", "classify"]
MASK_KINDS: tuple[str, ...] = get_args(MaskKind)
POOLINGS: tuple[str, ...] = ("mean", "mean_std")
_STD_EPS = 1e-5


@dataclass
class HeadSpec:
    """What a head needs besides its weights: vocabulary (CTC) or label names (classification), and
    which features it reads (``layer_mix``) and how a classifier pools them (``pooling``)."""

    kind: MaskKind
    vocab: list[str] = field(default_factory=list)  # CTC: token strings in id order
    labels: list[str] = field(default_factory=list)  # classification: label names in id order
    blank_id: int = 0
    word_delimiter: str = "|"
    pooling: str = "mean"  # classification: "mean" | "mean_std"
    layer_mix: bool = False  # read a learned weighted sum of all hidden states, not the last one
    layer_concat: bool = False  # classification: read all hidden states side by side

    @property
    def num_outputs(self) -> int:
        return len(self.vocab) if self.kind == "ctc" else len(self.labels)

    @property
    def all_layers(self) -> bool:
        """Whether the head reads every hidden state (``Backbone.encode(..., all_layers=True)``)."""
        return self.layer_mix or self.layer_concat

    def input_size(self, hidden_size: int, num_hidden_states: int) -> int:
        """Width of the projection's input: ``D`` (``S * D`` with ``layer_concat``), twice that for
        statistics pooling."""
        width = hidden_size * (num_hidden_states if self.layer_concat else 1)
        return 2 * width if self.kind == "classify" and self.pooling == "mean_std" else width

    def validate(self) -> None:
        if self.kind not in MASK_KINDS:
            raise InvalidInputError(f"unknown head kind {self.kind!r}; expected one of {MASK_KINDS}")
        if self.num_outputs < 1:
            raise InvalidInputError(
                f"a {self.kind} head needs at least one {'token' if self.kind == 'ctc' else 'label'}"
            )
        if self.kind == "ctc" and not 0 <= self.blank_id < len(self.vocab):
            raise InvalidInputError(f"blank id {self.blank_id} is outside the vocabulary of {len(self.vocab)}")
        if self.pooling not in POOLINGS or (self.kind == "ctc" and self.pooling != "mean"):
            raise InvalidInputError(f"pooling {self.pooling!r} is not one of {POOLINGS} (classification heads only)")
        if self.layer_concat and (self.kind != "classify" or self.layer_mix):
            raise InvalidInputError(
                "layer_concat (--layer-concat) is for classification heads, and excludes layer_mix (--layer-mix)"
            )
        names = self.vocab if self.kind == "ctc" else self.labels
        if len(set(names)) != len(names):
            raise InvalidInputError(f"the {self.kind} head has duplicate entries")


def masked_mean(values: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``[B, T, C] -> [B, C]``: the mean over each item's first ``frames[b]`` frames (padding ignored)."""
    steps = torch.arange(values.shape[1], device=values.device)
    valid = (steps[None, :] < frames.to(values.device)[:, None]).to(values.dtype)[..., None]  # [B, T, 1]
    return (values * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


class OutputHead(nn.Module):
    """Optional layer mix, ``Linear(input_size, outputs)``, and pooling for classification."""

    input_shift: torch.Tensor | None  # [F] training-time standardisation of pooled inputs (standardize_inputs)
    input_scale: torch.Tensor | None  # [F]

    def __init__(self, spec: HeadSpec, hidden_size: int, num_hidden_states: int = 1) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        self.proj = nn.Linear(spec.input_size(hidden_size, num_hidden_states), spec.num_outputs)
        # [S] softmax logits over hidden states; zeros = equal weights
        self.layer_weights = nn.Parameter(torch.zeros(num_hidden_states)) if spec.layer_mix else None
        self.register_buffer("input_shift", None)
        self.register_buffer("input_scale", None)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The encoder output ``[B, T, D]``, or ``[S + 1, B, T, D]`` (all hidden states, then the encoder
        output; :meth:`Backbone.encode` with ``all_layers``) -> the head's input ``[B, T, D]`` (``[B, T, S * D]``
        with ``layer_concat``)."""
        if self.spec.layer_concat:
            width = self.proj.in_features // (2 if self.spec.pooling == "mean_std" else 1)
            if hidden.dim() != 4 or (hidden.shape[0] - 1) * hidden.shape[-1] != width:
                raise InvalidInputError(f"this head reads {width} features per frame; got {tuple(hidden.shape)}")
            s, b, t, d = hidden[:-1].shape
            return hidden[:-1].permute(1, 2, 0, 3).reshape(b, t, s * d)  # [B, T, S * D]
        if self.layer_weights is None:
            return hidden[-1] if hidden.dim() == 4 else hidden
        if hidden.dim() != 4 or hidden.shape[0] != self.layer_weights.shape[0] + 1:
            expected = self.layer_weights.shape[0]
            raise InvalidInputError(f"this head mixes {expected} hidden states; got {tuple(hidden.shape)}")
        weights = torch.softmax(self.layer_weights.float(), dim=0).to(hidden.dtype)  # [S]
        return torch.einsum("s,sbtd->btd", weights, hidden[:-1])

    def pooled(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Classification: what the projection sees, ``[B, D]`` (mean) or ``[B, 2D]`` (mean ‖ std)."""
        feats = self.features(hidden).to(self.proj.weight.dtype)  # [B, T, D]
        mean = masked_mean(feats, frames)  # [B, D]
        if self.spec.pooling == "mean":
            return mean
        var = masked_mean((feats - mean[:, None]) ** 2, frames)  # [B, D]
        return torch.cat([mean, torch.sqrt(var + _STD_EPS)], dim=-1)  # [B, 2D]

    def standardize_inputs(self, pooled: torch.Tensor) -> None:
        """Training only: feed the projection ``(p - mu) / sigma`` with ``mu``, ``sigma`` the statistics of
        the pooled features ``[N, F]`` of a sample of training items. Pooled statistics differ in scale by
        orders of magnitude across features; standardised, a linear head learns in far fewer steps.
        :func:`folded_projection` turns the result back into one plain ``Linear``."""
        self.input_shift = pooled.mean(dim=0).detach().to(self.proj.weight)  # [F]
        self.input_scale = pooled.std(dim=0).clamp_min(1e-4).detach().to(self.proj.weight)  # [F]

    def standardized(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(p - mu) / sigma`` over pooled features ``[B, F]`` while training a standardised head; else ``p``."""
        if self.input_shift is None or self.input_scale is None:
            return pooled
        return (pooled - self.input_shift) / self.input_scale

    def forward(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Hidden states of a batch (``[B, T, D]`` or ``[S + 1, B, T, D]``) and valid frames ``[B]`` ->
        CTC logits ``[B, T, V]`` (rows past ``frames[b]`` are padding) or class logits ``[B, L]``."""
        if self.spec.kind == "ctc":
            return self.proj(self.features(hidden).to(self.proj.weight.dtype))  # [B, T, V]
        return self.proj(self.standardized(self.pooled(hidden, frames)))  # [B, L]


def folded_projection(head_state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain ``(weight [O, F], bias [O])`` of a head's state dict, with any input standardisation
    folded in: ``W ((p - mu) / sigma) + b = (W / sigma) p + (b - (W / sigma) mu)``."""
    weight, bias = head_state["proj.weight"], head_state["proj.bias"]
    if "input_shift" not in head_state:
        return weight, bias
    scaled = weight / head_state["input_scale"][None, :]  # [O, F]
    return scaled, bias - scaled @ head_state["input_shift"]
