"""Pairwise mask similarity (the paper's analysis application).

For masks ``a``, ``b`` with dropped sets ``D_a``, ``D_b`` (weights whose bit is 0) over the layers both
mask: ``IoU = |D_a ∩ D_b| / |D_a ∪ D_b|`` (1 when both are empty) and
``Hamming = |D_a xor D_b| / (number of weights)``. Reported overall and per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from router_core.kernels.bits import unpack_bits
from router_core.mask_file import RoutingMask


def _dropped(mask: RoutingMask, layer: str) -> torch.Tensor:
    return ~unpack_bits(mask.layer_bits[layer].cpu(), mask.layer_shapes[layer][1])


def _pair(a: RoutingMask, b: RoutingMask) -> dict[str, Any]:
    layers = [n for n in a.layer_bits if n in b.layer_bits]
    inter = union = xor = total = 0
    per_layer = {}
    for layer in layers:
        da, db = _dropped(a, layer), _dropped(b, layer)
        i, u, x, n = int((da & db).sum()), int((da | db).sum()), int((da ^ db).sum()), da.numel()
        per_layer[layer] = {"iou": i / u if u else 1.0, "hamming": x / n}
        inter, union, xor, total = inter + i, union + u, xor + x, total + n
    return {
        "iou": inter / union if union else 1.0,
        "hamming": xor / total if total else 0.0,
        "layers": per_layer,
    }


def mask_similarity(masks: list[RoutingMask]) -> dict[str, Any]:
    """``{"names": [...], "iou": [[...]], "hamming": [[...]], "pairs": {"a|b": {...per layer}}}``."""
    names = [m.name for m in masks]
    iou = [[0.0] * len(masks) for _ in masks]
    hamming = [[0.0] * len(masks) for _ in masks]
    pairs = {}
    for i, a in enumerate(masks):
        for j, b in enumerate(masks):
            if j < i:
                iou[i][j], hamming[i][j] = iou[j][i], hamming[j][i]
                continue
            result = _pair(a, b)
            iou[i][j], hamming[i][j] = result["iou"], result["hamming"]
            if i != j:
                pairs[f"{a.name}|{b.name}"] = result
    return {"names": names, "iou": iou, "hamming": hamming, "pairs": pairs}


def similarity_table(result: dict[str, Any], metric: str = "iou") -> str:
    names = result["names"]
    width = max(8, *(len(n) for n in names))
    lines = [" " * width + "".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, result[metric], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}.3f}" for v in row))
    return "\n".join(lines)


def save_heatmap(result: dict[str, Any], path: str | Path, metric: str = "iou") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["names"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(names), 1.0 + 0.6 * len(names)))
    image = ax.imshow(result[metric], cmap="viridis", vmin=0.0, vmax=1.0 if metric == "iou" else None)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(result[metric]):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_title(f"mask similarity ({'IoU of dropped weights' if metric == 'iou' else 'Hamming distance'})")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
