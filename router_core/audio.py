"""Uploaded bytes -> 16 kHz mono float waveform (WAV, FLAC, OGG/Vorbis/Opus, MP3 via libsndfile).

Maths: channels are averaged (``x[t] = mean_c x[c, t]``) block by block as the file is decoded, so only
the mono signal is ever held; then it is resampled to 16 kHz with torchaudio's windowed-sinc polyphase
filter. Its cost grows with the reduced rate ratio ``(rate / g) : (16000 / g)``, ``g = gcd(rate, 16000)``,
which is huge for rates such as 16,001 Hz (16001 : 16000). Rates that are not a multiple of
``RATE_QUANTUM`` (25 Hz, which every common rate is: 8k, 11.025k, 22.05k, 44.1k, 48k, 96k, ...) are
therefore read as the nearest multiple: ``g >= 25``, so at most 7,680 : 640 phases and a filter of at most
~5M taps (20 MB), and the audio plays at most 12.5 Hz / rate off speed (0.3% at 4 kHz). Rates outside
``MIN_RATE``-``MAX_RATE`` and more than ``MAX_CHANNELS`` channels are refused before anything is decoded.

Cost per request is bounded before decoding: a declared length over the limit is refused from the
header; a stream whose length is unknown (FLAC written to a pipe reports libsndfile's sentinel) is
decoded until the limit and refused past it; an optional deadline is checked between blocks.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from router_core.backbone import SAMPLE_RATE
from router_core.errors import (
    DeadlineExceededError,
    EmptyAudioError,
    PayloadTooLargeError,
    UnsupportedAudioError,
)

MIN_RATE = 4_000
MAX_RATE = 192_000
MAX_CHANNELS = 32
RATE_QUANTUM = 25
BLOCK_FRAMES = 1 << 16  # frames decoded (and downmixed) at a time
UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX (2^63 - 1) when a stream's length is unknown
RESAMPLER_CACHE_BYTES = 64 << 20


def decode_audio(data: bytes, max_seconds: float, deadline: float | None = None) -> torch.Tensor:
    """Decode ``data`` into a 1-D float32 tensor at 16 kHz; refuse garbage, empty, too-long audio and
    unsupported rates or channel counts. ``deadline`` (``time.monotonic()`` seconds) bounds the decoding."""
    if not data:
        raise EmptyAudioError("the request carries no audio (empty body)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            rate = _check_format(handle.samplerate, handle.channels)
            limit = math.floor(max_seconds * rate)  # most source frames accepted
            known = 0 < handle.frames < UNKNOWN_FRAMES
            if known and handle.frames > limit:
                raise PayloadTooLargeError(_too_long(handle.frames / rate, max_seconds))
            mono = _read_mono(handle, handle.frames if known else None, limit, max_seconds, deadline)  # [T]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).rsplit(": ", 1)[-1]  # libsndfile's reason, without the in-memory file's repr
        raise UnsupportedAudioError(
            f"could not decode the upload as audio (WAV, FLAC, OGG or MP3 expected): {reason}"
        ) from exc
    if mono.shape[0] == 0:
        raise EmptyAudioError("the audio contains no samples")
    wave = torch.from_numpy(mono)  # [T]
    effective = effective_rate(rate)
    if effective != SAMPLE_RATE:
        with torch.no_grad():
            wave = _RESAMPLERS.get(effective)(wave)  # [T * 16000 / rate]
    return wave.contiguous()


def effective_rate(rate: int) -> int:
    """The rate the resampler treats ``rate`` as: itself, or the nearest multiple of ``RATE_QUANTUM``."""
    return rate if rate % RATE_QUANTUM == 0 else max(RATE_QUANTUM, round(rate / RATE_QUANTUM) * RATE_QUANTUM)


def _check_format(rate: int, channels: int) -> int:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise UnsupportedAudioError(
            f"sample rate {rate} Hz is not supported: use {MIN_RATE}-{MAX_RATE} Hz (16000 Hz is native)"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise UnsupportedAudioError(f"{channels} channels is not supported: use 1-{MAX_CHANNELS}")
    return rate


def _too_long(seconds: float, max_seconds: float) -> str:
    return f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s"


def _read_mono(
    handle: sf.SoundFile, frames: int | None, limit: int, max_seconds: float, deadline: float | None
) -> np.ndarray:
    """Decode block by block, averaging channels as it goes: ``[T]`` float32 at the file's rate. A known
    length is decoded into one array of that length (the mono signal is held once); with ``frames``
    unknown, blocks are read until the end or until ``limit`` is passed (then refused), then joined."""
    out = np.empty(frames, dtype=np.float32) if frames is not None else None  # [T]
    blocks: list[np.ndarray] = []
    total = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceededError("decoding the audio took longer than the request's deadline")
        block, ended = _read_block(handle, unknown_length=frames is None)  # [b, C]
        if block.shape[0] == 0:
            break
        mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]  # [b]
        if not np.isfinite(mono).all():
            raise UnsupportedAudioError("the audio contains NaN or infinite samples")
        if out is not None:
            mono = mono[: out.shape[0] - total]  # a file that decodes longer than its header says
            out[total : total + mono.shape[0]] = mono
        else:
            blocks.append(mono)
        total += mono.shape[0]
        if total > limit:
            raise PayloadTooLargeError(_too_long(total / handle.samplerate, max_seconds) + " or more")
        if ended or (frames is not None and total >= frames):
            break
    if out is not None:
        return out[:total]
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def _read_block(handle: sf.SoundFile, unknown_length: bool) -> tuple[np.ndarray, bool]:
    """``(up to BLOCK_FRAMES frames [b, C] float32, whether the stream ended)``. In a stream of unknown
    length (piped FLAC) soundfile's seek past the block fails once the last block has been decoded, so
    the buffer is filled with NaN first and the rows decoded are the leading rows that are not NaN
    (decoded FLAC/OGG/MP3 samples are never NaN)."""
    if not unknown_length:
        block = handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        return block, block.shape[0] == 0
    out = np.full((BLOCK_FRAMES, handle.channels), np.nan, dtype=np.float32)
    failed = False
    try:
        handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True, fill_value=np.nan, out=out)
    except sf.LibsndfileError:
        failed = True
    decoded = ~np.isnan(out).all(axis=1)  # [BLOCK_FRAMES]
    count = BLOCK_FRAMES if decoded.all() else int(decoded.argmin())
    return out[:count], failed or count < BLOCK_FRAMES


class _ResamplerCache:
    """Resamplers to 16 kHz by source rate, least recently used first out, bounded by their filters' bytes
    (building the windowed-sinc filter costs far more than applying it)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[int, torchaudio.transforms.Resample] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return sum(_filter_bytes(r) for r in self._items.values())

    def get(self, rate: int) -> torchaudio.transforms.Resample:
        with self._lock:
            if rate in self._items:
                self._items.move_to_end(rate)
                return self._items[rate]
        resampler = torchaudio.transforms.Resample(rate, SAMPLE_RATE)
        size = _filter_bytes(resampler)
        with self._lock:
            if size <= self.budget_bytes:
                self._items[rate] = resampler
                while self.bytes > self.budget_bytes:
                    self._items.popitem(last=False)
        return resampler


def _filter_bytes(resampler: torchaudio.transforms.Resample) -> int:
    kernel = resampler.kernel
    return kernel.numel() * kernel.element_size()


_RESAMPLERS = _ResamplerCache(RESAMPLER_CACHE_BYTES)


def load_audio_file(path: str | Path, max_seconds: float = 3600.0) -> torch.Tensor:
    """Read and decode an audio file from disk into a 16 kHz mono waveform."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnsupportedAudioError(f"cannot read audio file {path}: {exc.strerror or exc}") from exc
    return decode_audio(data, max_seconds)
