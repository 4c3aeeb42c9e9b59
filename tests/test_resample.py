"""Block-by-block resampling against torchaudio's resampler on the whole signal (the oracle)."""

import numpy as np
import pytest
import torch
import torchaudio

from router_core.resample import StreamingResampler


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 32_000, 44_100, 48_000, 96_000, 16_025])
@pytest.mark.parametrize("length", [1, 7, 440, 1_001, 2 * 65_536 + 13])
def test_blocks_of_any_size_give_the_whole_signal_result(rate, length):
    rng = np.random.default_rng(length)
    resampler = torchaudio.transforms.Resample(rate, 16_000)
    signal = rng.standard_normal(length).astype(np.float32)  # [T]
    reference = resampler(torch.from_numpy(signal)).numpy()  # [ceil(T * 16000 / rate)]
    stream, pieces, at = StreamingResampler(resampler), [], 0
    while at < length:
        size = int(rng.integers(1, 50_000))
        pieces.append(stream.push(signal[at : at + size]))
        at += size
    pieces.append(stream.finish())
    out = np.concatenate(pieces)
    assert out.shape == reference.shape
    assert np.abs(out - reference).max() < 1e-5


def test_nothing_pushed_gives_nothing():
    stream = StreamingResampler(torchaudio.transforms.Resample(44_100, 16_000))
    assert stream.finish().shape == (0,)
