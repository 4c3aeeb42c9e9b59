import numpy as np
import pytest
import torch

from router_core.kernels.bits import count_kept, pack_bits, packed_row_bytes, unpack_bits


def test_bit_order_is_msb_first_and_one_means_keep():
    keep = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1]], dtype=torch.bool)
    bits = pack_bits(keep)
    assert bits.dtype == torch.uint8
    assert bits.tolist() == [[0b10000001, 0b10100000]]  # trailing padding bits are 0


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 8), (4, 9), (37, 29), (2, 3072)])
def test_round_trip_and_numpy_agreement(shape):
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.4
    bits = pack_bits(keep)
    assert bits.shape == (shape[0], packed_row_bytes(shape[1]))
    assert torch.equal(unpack_bits(bits, shape[1]), keep)
    assert np.array_equal(bits.numpy(), np.packbits(keep.numpy(), axis=1, bitorder="big"))
    assert count_kept(bits) == int(keep.sum())


def test_unpack_refuses_wrong_width():
    with pytest.raises(ValueError):
        unpack_bits(torch.zeros(2, 3, dtype=torch.uint8), 30)
