"""Plain-torch masked linear: the reference, the CPU fallback, and the oracle of every fast kernel.

Maths. For input rows ``x [R, K]``, weight ``W [N, K]``, bias ``b [N]`` and a packed keep-mask
``bits [N, ceil(K/8)]`` (see :mod:`router_core.kernels.bits`) with unpacked mask ``M in {0,1}^[N, K]``::

    y = x @ (W * M)^T + b                                              # [R, N]

Segmented form (a batch whose rows belong to different masks, after Punica's SGMV): rows
``offsets[s] : offsets[s+1]`` use mask ``bits_stack[mask_ids[s]]``; ``mask_ids[s] == -1`` means no mask
(all weights kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from router_core.kernels.bits import unpack_bits

DENSE_SEGMENT = -1
"""``mask_ids`` value of a segment that uses the unmasked weight."""


@dataclass(frozen=True)
class Segments:
    """Row segmentation of a mixed-mask batch, on the host.

    ``offsets`` has ``S + 1`` increasing row offsets (first 0, last = number of rows); ``mask_ids[s]``
    indexes the stacked masks of segment ``s`` (or is :data:`DENSE_SEGMENT`).
    """

    offsets: tuple[int, ...]
    mask_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.mask_ids) + 1 or self.offsets[0] != 0:
            raise ValueError(f"bad segments: offsets={self.offsets} mask_ids={self.mask_ids}")
        if any(b < a for a, b in zip(self.offsets, self.offsets[1:], strict=False)):
            raise ValueError(f"segment offsets must not decrease: {self.offsets}")

    @property
    def total_rows(self) -> int:
        return self.offsets[-1]

    def scaled(self, rows_per_item: int) -> Segments:
        """The same segmentation over ``rows_per_item`` rows per original row (``[B, T] -> [B*T]``)."""
        return Segments(tuple(o * rows_per_item for o in self.offsets), self.mask_ids)

    def spans(self) -> list[tuple[int, int, int]]:
        """``(start, end, mask_id)`` of every non-empty segment."""
        return [(a, b, m) for a, b, m in zip(self.offsets, self.offsets[1:], self.mask_ids, strict=False) if b > a]


def masked_weight_reference(weight: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``W * M`` as a dense tensor ``[N, K]`` (unpack, then select)."""
    keep = unpack_bits(bits, weight.shape[1])  # [N, K] bool
    return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def masked_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor
) -> torch.Tensor:
    """``x @ (W * M)^T + b`` for ``x [..., K]``; returns ``[..., N]``."""
    return F.linear(x, masked_weight_reference(weight, bits), bias)


def segmented_masked_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits_stack: Sequence[torch.Tensor],
    segments: Segments,
) -> torch.Tensor:
    """Mixed-mask linear over ``x [R, K]`` -> ``[R, N]``; segment ``s`` uses ``bits_stack[mask_ids[s]]``."""
    out = x.new_empty(x.shape[0], weight.shape[0])  # [R, N]
    for start, end, mask_id in segments.spans():
        if mask_id == DENSE_SEGMENT:
            out[start:end] = F.linear(x[start:end], weight, bias)
        else:
            out[start:end] = masked_linear_reference(x[start:end], weight, bias, bits_stack[mask_id])
    return out
