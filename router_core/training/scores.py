"""Learnable scores and the straight-through top-k mask of S3-Router.

For a maskable weight ``W [N, K]`` with real-valued scores ``S [N, K]`` and keep ratio ``r``::

    M = topk(|S|, k = round(r * N * K))          # exactly k ones (router_core.mask_builder.topk_keep)
    W_eff = W * M                                 # forward
    dL/dS := dL/dM = (dL/dW_eff) * W              # backward: straight-through estimator

Score initialisations (as the paper's code): ``kaiming`` (kaiming-uniform, as nn.Linear),
``weight_rank`` (kaiming values re-ordered so the largest |W| get the largest |S|), ``weight_magnitude``
(S = top-k indicator of |W|).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from router_core.mask_builder import topk_keep

SCORE_INITS = ("weight_rank", "kaiming", "weight_magnitude")


class TopKStraightThrough(torch.autograd.Function):
    """``M = topk(|S|)`` forward; the identity for the gradient."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:  # type: ignore[override]
        return topk_keep(scores, keep_ratio).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def init_scores(weight: torch.Tensor, method: str, keep_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Initial scores for ``weight [N, K]`` (float32, on the weight's device)."""
    w = weight.detach().float().cpu()
    bound = 1.0 / math.sqrt(w.shape[1])  # kaiming_uniform(a=sqrt(5)) bound of nn.Linear
    kaiming = (torch.rand(w.shape, generator=generator) * 2 - 1) * bound
    if method == "kaiming":
        scores = kaiming
    elif method == "weight_rank":
        flat = torch.empty(w.numel())
        flat[w.abs().reshape(-1).argsort()] = kaiming.abs().reshape(-1).sort().values
        scores = flat.view_as(w)
    elif method == "weight_magnitude":
        scores = topk_keep(w, keep_ratio).float()
    else:
        raise ValueError(f"unknown score init {method!r}; choose one of {', '.join(SCORE_INITS)}")
    return scores.to(weight.device)


class ScoreMasks(nn.Module):
    """One score tensor per maskable layer; acts as the :class:`WeightTransform` while training."""

    def __init__(
        self, weights: dict[str, torch.Tensor], keep_ratio: float, init: str = "weight_rank", seed: int = 0
    ) -> None:
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
        self.keep_ratio = keep_ratio
        self.layer_names = list(weights)
        gen = torch.Generator().manual_seed(seed)
        self.scores = nn.ParameterDict(
            {self._key(n): nn.Parameter(init_scores(w, init, keep_ratio, gen)) for n, w in weights.items()}
        )

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def masked_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor | None:
        key = self._key(name)
        if key not in self.scores:
            return None
        mask = TopKStraightThrough.apply(self.scores[key], self.keep_ratio)
        return weight * mask.to(weight.dtype)

    def keep_masks(self) -> dict[str, torch.Tensor]:
        """The current binary keep masks, ``{layer: bool [N, K]}``."""
        return {n: topk_keep(self.scores[self._key(n)], self.keep_ratio) for n in self.layer_names}
