"""Per-mask output heads, trained as ordinary weights on top of the masked backbone.

* CTC head: ``logits[t] = h[t] @ W^T + b`` over a vocabulary (``W [V, D]``), decoded with CTC.
* Classification head: mean-pool the valid frames, ``p = softmax(mean_t(h[t]) @ W^T + b)`` (``W [L, D]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from router_core.errors import InvalidInputError

MaskKind = Literal["ctc", "classify"]
MASK_KINDS: tuple[str, ...] = ("ctc", "classify")


@dataclass
class HeadSpec:
    """What a head needs besides its weights: vocabulary (CTC) or label names (classification)."""

    kind: MaskKind
    vocab: list[str] = field(default_factory=list)  # CTC: token strings in id order
    labels: list[str] = field(default_factory=list)  # classification: label names in id order
    blank_id: int = 0
    word_delimiter: str = "|"

    @property
    def num_outputs(self) -> int:
        return len(self.vocab) if self.kind == "ctc" else len(self.labels)

    def validate(self) -> None:
        if self.kind not in MASK_KINDS:
            raise InvalidInputError(f"unknown head kind {self.kind!r}; expected one of {MASK_KINDS}")
        if self.num_outputs < 1:
            raise InvalidInputError(
                f"a {self.kind} head needs at least one {'token' if self.kind == 'ctc' else 'label'}"
            )
        if self.kind == "ctc" and not 0 <= self.blank_id < len(self.vocab):
            raise InvalidInputError(f"blank id {self.blank_id} is outside the vocabulary of {len(self.vocab)}")
        names = self.vocab if self.kind == "ctc" else self.labels
        if len(set(names)) != len(names):
            raise InvalidInputError(f"the {self.kind} head has duplicate entries")


class OutputHead(nn.Module):
    """``Linear(hidden, outputs)``; pooling for classification happens in :meth:`forward`."""

    def __init__(self, spec: HeadSpec, hidden_size: int) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        self.proj = nn.Linear(hidden_size, spec.num_outputs)

    def forward(self, hidden: torch.Tensor, frames: int) -> torch.Tensor:
        """``hidden [T, D]`` of one item (first ``frames`` valid) -> CTC logits ``[frames, V]`` or ``[L]``."""
        valid = hidden[:frames].to(self.proj.weight.dtype)  # [T_i, D]
        if self.spec.kind == "ctc":
            return self.proj(valid)  # [T_i, V]
        return self.proj(valid.mean(dim=0))  # [L]
