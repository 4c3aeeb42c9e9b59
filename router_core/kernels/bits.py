"""Packed bitmasks: the storage format of one maskable layer's mask.

Bit order (format version 1), for a weight ``W`` of shape ``[N, K]`` (out_features, in_features):

* the mask is packed row by row along ``K`` into ``bits`` of shape ``[N, ceil(K / 8)]``, dtype ``uint8``;
* element ``W[n, k]`` is bit ``7 - (k % 8)`` of byte ``bits[n, k // 8]`` (most significant bit first,
  the same as ``numpy.packbits(..., bitorder="big")``);
* a set bit (1) means **keep** the weight, a clear bit (0) means drop it;
* the ``8 * ceil(K / 8) - K`` padding bits at the end of each row are 0.
"""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)  # [8]: 7, 6, ..., 0


def _shifts(device: torch.device) -> torch.Tensor:
    """The bit shifts on ``device``: made there, not copied (a host-to-device copy stalls the host)."""
    return _SHIFTS if device.type == "cpu" else torch.arange(7, -1, -1, dtype=torch.uint8, device=device)


def packed_row_bytes(in_features: int) -> int:
    """Bytes per packed row: ``ceil(K / 8)``."""
    return (in_features + 7) // 8


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Pack a boolean keep-mask ``[N, K]`` into ``uint8 [N, ceil(K/8)]`` (MSB first, 1 = keep)."""
    if keep.dim() != 2:
        raise ValueError(f"pack_bits expects a 2-D mask [N, K], got shape {tuple(keep.shape)}")
    n_rows, k = keep.shape
    kb = packed_row_bytes(k)
    padded = torch.zeros(n_rows, kb * 8, dtype=torch.uint8, device=keep.device)  # [N, 8*KB]
    padded[:, :k] = keep.to(torch.uint8)
    groups = padded.view(n_rows, kb, 8)  # [N, KB, 8]
    shifts = _shifts(keep.device)
    return (groups << shifts).sum(dim=-1, dtype=torch.uint8)  # bytes never overflow: distinct bits


def unpack_bits(bits: torch.Tensor, in_features: int) -> torch.Tensor:
    """Unpack ``uint8 [N, ceil(K/8)]`` into a boolean keep-mask ``[N, K]``."""
    if bits.dtype != torch.uint8 or bits.dim() != 2:
        raise ValueError(f"unpack_bits expects uint8 [N, KB], got {bits.dtype} {tuple(bits.shape)}")
    if bits.shape[1] != packed_row_bytes(in_features):
        raise ValueError(f"{bits.shape[1]} bytes per row cannot hold {in_features} bits")
    shifts = _shifts(bits.device)
    expanded = (bits.unsqueeze(-1) >> shifts) & 1  # [N, KB, 8]
    return expanded.reshape(bits.shape[0], -1)[:, :in_features].bool()  # [N, K]


def count_kept(bits: torch.Tensor) -> int:
    """Number of set bits (kept weights) in a packed mask; padding bits are 0 by construction."""
    table = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64, device=bits.device)
    return int(table[bits.long()].sum().item())


def check_packed_for(weight: torch.Tensor, bits: torch.Tensor) -> None:
    """The launchers' precondition on a mask: ``bits`` is uint8 ``[N, ceil(K/8)]`` (or ``[S, N, ceil(K/8)]``)
    for ``weight [N, K]``, on the weight's device, each row of bytes contiguous."""
    n_out, k = weight.shape
    assert bits.dtype == torch.uint8, f"packed bits must be uint8, not {bits.dtype}"
    assert tuple(bits.shape[-2:]) == (n_out, packed_row_bytes(k)), (
        f"bits {tuple(bits.shape)} do not pack a {n_out} x {k} weight"
    )
    assert bits.stride(-1) == 1 and bits.stride(-2) == bits.shape[-1], "each row of packed bits must be contiguous"
    assert bits.device == weight.device, f"bits on {bits.device}, weight on {weight.device}"
