"""The tile configs the Triton masked matmul is tuned over, the row buckets tuning is keyed on, and the
pruning that keeps the autotuner from compiling what cannot help (tiles taller than the rows, pipelines
larger than the device's shared memory)."""

from __future__ import annotations

import torch
import triton


def _config(bm: int, bn: int, bk: int, warps: int, stages: int, by_byte: int) -> triton.Config:
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "BITS_BY_BYTE": by_byte}
    return triton.Config(meta, num_warps=warps, num_stages=stages)


CONFIGS = [
    _config(32, 64, 32, 4, 3, 0),  # the fixed tiles of the first GPU runs: the pick is never slower
    _config(32, 64, 32, 4, 3, 1),
    _config(16, 64, 128, 4, 4, 1),  # few rows (short audio): more programs along N, long K steps
    _config(32, 32, 128, 4, 4, 1),
    _config(64, 64, 64, 4, 4, 1),
    _config(64, 128, 64, 4, 4, 1),
    _config(128, 64, 64, 4, 4, 1),
    _config(128, 128, 64, 8, 3, 0),
    _config(128, 128, 64, 8, 3, 1),
    _config(128, 256, 64, 8, 3, 1),
    _config(64, 256, 32, 4, 4, 1),
]
INTERPRETER_CONFIG = _config(16, 32, 16, 4, 1, 1)
"""Used under ``TRITON_INTERPRET=1``, where there is nothing to tune (small tiles keep it fast)."""

SHARED_MEMORY_FALLBACK = 232_448
"""Shared memory per block (bytes) assumed when the device cannot be asked: an H100's opt-in limit."""


def shared_memory_estimate(config: triton.Config, element_size: int) -> int:
    """Bytes of shared memory the pipelined loop needs: ``stages x (BM + BN) x BK`` elements (the x and
    W tiles of every stage in flight; the bit bytes add ~1/16 of the W tile, left out)."""
    meta = config.kwargs
    return config.num_stages * (meta["BLOCK_M"] + meta["BLOCK_N"]) * meta["BLOCK_K"] * element_size


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """Drop tiles taller than the row bucket (they would mostly multiply zero rows) and tiles whose
    pipeline cannot fit the device's shared memory (compiling them would only fail at launch)."""
    x = named_args["x_ptr"]
    limit = SHARED_MEMORY_FALLBACK
    if x.is_cuda:
        properties = torch.cuda.get_device_properties(x.device)
        limit = getattr(properties, "shared_memory_per_block_optin", SHARED_MEMORY_FALLBACK)  # (not in the stubs)
    fitting = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] <= max(16, named_args["m_bucket"])
        and shared_memory_estimate(c, x.element_size()) <= limit
    ]
    return fitting or configs[:1]
