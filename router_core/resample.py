"""Resampling to 16 kHz block by block, as audio is decoded, so that a long upload at another rate is never
held whole at its own rate.

Maths (torchaudio's windowed-sinc polyphase resampler, whose filter is used as is): with ``o : n`` the
rate ratio reduced by ``g = gcd`` and ``w`` the filter's half-width, the input ``x`` is padded with ``w``
zeros on the left and ``w + o`` on the right, and output samples ``y[i n + p] = sum_k h[p, k]
x[i o - w + k]``, ``k < 2w + o``, for ``p < n``; the result is cut to ``ceil(n T / o)`` samples.
:class:`StreamingResampler` computes the same sums, in the same order, for each ``i`` as soon as its
window of input has arrived, and keeps only the window's tail between blocks: memory ``O(block + w + o)``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np
import torch
import torchaudio

from router_core.backbone import SAMPLE_RATE


class StreamingResampler:
    """Feed :meth:`push` blocks of mono samples at ``resampler``'s rate; each call returns the 16 kHz samples
    now complete, and :meth:`finish` the rest. Identical to ``resampler(whole_signal)``."""

    def __init__(self, resampler: torchaudio.transforms.Resample) -> None:
        self.orig = int(resampler.orig_freq) // resampler.gcd
        self.new = int(resampler.new_freq) // resampler.gcd
        self.width = int(resampler.width)
        self.kernel = resampler.kernel  # [n, 1, 2w + o]
        self._buffer = np.zeros(self.width, dtype=np.float32)  # input from absolute sample -w (the padding)
        self._start = -self.width  # absolute index of _buffer[0]
        self._next = 0  # next output frame i to compute
        self._seen = 0  # input samples pushed

    def push(self, block: np.ndarray) -> np.ndarray:
        """``block`` [b] float32 -> the output samples it completes [~b n / o]."""
        self._seen += block.shape[0]
        self._buffer = np.concatenate([self._buffer, block.astype(np.float32, copy=False)])
        return self._emit()

    def finish(self) -> np.ndarray:
        """The last output samples (the input's end padded with zeros, as the whole-signal resampler does)."""
        self._buffer = np.concatenate([self._buffer, np.zeros(self.width + self.orig, dtype=np.float32)])
        tail = self._emit()
        produced = self._next * self.new
        target = math.ceil(self.new * self._seen / self.orig)
        return tail[: max(0, tail.shape[0] - (produced - target))]

    def _emit(self) -> np.ndarray:
        taps = self.kernel.shape[-1]
        end = self._start + self._buffer.shape[0]  # absolute end of the input held
        last = (end + self.width - taps) // self.orig  # last frame i whose window [i o - w, i o - w + taps) is held
        count = last - self._next + 1
        if count <= 0:
            return np.zeros(0, dtype=np.float32)
        first = self._next * self.orig - self.width - self._start  # buffer offset of frame _next's window
        window = torch.from_numpy(self._buffer[first : first + (count - 1) * self.orig + taps])  # [L]
        with torch.no_grad():
            frames = torch.nn.functional.conv1d(window[None, None], self.kernel, stride=self.orig)  # [1, n, count]
        out = frames[0].T.reshape(-1).numpy()  # [count * n]
        self._next += count
        keep = self._next * self.orig - self.width - self._start  # the next frame's window starts here
        self._buffer = self._buffer[keep:].copy()
        self._start += keep
        return out


class ResamplerCache:
    """Resamplers to 16 kHz by source rate, least recently used first out, bounded by their filters' bytes
    (building the windowed-sinc filter costs far more than applying it)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[int, torchaudio.transforms.Resample] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return sum(filter_bytes(r) for r in self._items.values())

    def get(self, rate: int) -> torchaudio.transforms.Resample:
        with self._lock:
            if rate in self._items:
                self._items.move_to_end(rate)
                return self._items[rate]
        resampler = torchaudio.transforms.Resample(rate, SAMPLE_RATE)
        size = filter_bytes(resampler)
        with self._lock:
            if size <= self.budget_bytes:
                self._items[rate] = resampler
                while self.bytes > self.budget_bytes:
                    self._items.popitem(last=False)
        return resampler


def filter_bytes(resampler: torchaudio.transforms.Resample) -> int:
    kernel = resampler.kernel
    return kernel.numel() * kernel.element_size()
