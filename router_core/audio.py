"""Uploaded bytes -> 16 kHz mono float waveform (WAV, FLAC, OGG/Vorbis/Opus, MP3 via libsndfile).

Maths: channels are averaged (``x[t] = mean_c x[c, t]``) block by block as the file is decoded, and each
block is resampled to 16 kHz as it arrives (:class:`~router_core.resample.StreamingResampler`: torchaudio's
windowed-sinc polyphase filter, same result as on the whole signal), so only the 16 kHz mono signal is
ever held whole. Its cost grows with the reduced rate ratio ``(rate / g) : (16000 / g)``, ``g = gcd(rate, 16000)``,
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
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from router_core.backbone import SAMPLE_RATE
from router_core.errors import (
    DeadlineExceededError,
    EmptyAudioError,
    PayloadTooLargeError,
    UnsupportedAudioError,
)
from router_core.resample import ResamplerCache, StreamingResampler

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
            wave = _read_16k(handle, handle.frames if known else None, limit, max_seconds, deadline)  # [T']
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).rsplit(": ", 1)[-1]  # libsndfile's reason, without the in-memory file's repr
        raise UnsupportedAudioError(
            f"could not decode the upload as audio (WAV, FLAC, OGG or MP3 expected): {reason}"
        ) from exc
    if wave.shape[0] == 0:
        raise EmptyAudioError("the audio contains no samples")
    return torch.from_numpy(wave)


def effective_rate(rate: int) -> int:
    """The rate the resampler treats ``rate`` as: itself, or the nearest multiple of ``RATE_QUANTUM``."""
    return rate if rate % RATE_QUANTUM == 0 else max(RATE_QUANTUM, round(rate / RATE_QUANTUM) * RATE_QUANTUM)


def resampler_to_16k(rate: int) -> StreamingResampler | None:
    """A :class:`StreamingResampler` from ``rate`` (read as :func:`effective_rate`) to 16 kHz, its filter
    shared through a bounded cache; ``None`` when no resampling is needed. One per upload or stream."""
    effective = effective_rate(rate)
    return StreamingResampler(_RESAMPLERS.get(effective)) if effective != SAMPLE_RATE else None


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


def _read_16k(
    handle: sf.SoundFile, frames: int | None, limit: int, max_seconds: float, deadline: float | None
) -> np.ndarray:
    """The whole file as ``[T']`` float32 at 16 kHz, decoded, downmixed and resampled block by block. A known
    length is decoded into one array of the output's length (the 16 kHz signal is held once); with
    ``frames`` unknown, blocks are read until the end or until ``limit`` is passed (then refused), then
    joined."""
    stream = resampler_to_16k(handle.samplerate)
    size = None
    if frames is not None:
        size = frames if stream is None else math.ceil(stream.new * frames / stream.orig)
    output = _Output(size)
    for mono in _mono_blocks(handle, frames, limit, max_seconds, deadline):
        output.put(mono if stream is None else stream.push(mono))
    if stream is not None:
        output.put(stream.finish())
    return output.samples()


class _Output:
    """Decoded samples: written into one array when their number is known (so they are held once), else
    kept as blocks and joined at the end."""

    def __init__(self, size: int | None) -> None:
        self._array = np.empty(size, dtype=np.float32) if size is not None else None  # [T']
        self._blocks: list[np.ndarray] = []
        self._total = 0

    def put(self, piece: np.ndarray) -> None:
        if self._array is not None:
            piece = piece[: self._array.shape[0] - self._total]  # a file that decodes longer than its header says
            self._array[self._total : self._total + piece.shape[0]] = piece
        else:
            self._blocks.append(piece)
        self._total += piece.shape[0]

    def samples(self) -> np.ndarray:
        if self._array is not None:
            return self._array[: self._total]
        return np.concatenate(self._blocks) if self._blocks else np.zeros(0, dtype=np.float32)


def _mono_blocks(
    handle: sf.SoundFile, frames: int | None, limit: int, max_seconds: float, deadline: float | None
) -> Iterator[np.ndarray]:
    """Blocks of the file averaged over channels ``[b]`` at its own rate; refuses NaN, a length over
    ``limit`` source frames and a passed ``deadline``."""
    total = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceededError("decoding the audio took longer than the request's deadline")
        block, ended = _read_block(handle, unknown_length=frames is None)  # [b, C]
        if block.shape[0] == 0:
            return
        mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]  # [b]
        if not np.isfinite(mono).all():
            raise UnsupportedAudioError("the audio contains NaN or infinite samples")
        if frames is not None:
            mono = mono[: frames - total]
        total += mono.shape[0]
        if total > limit:
            raise PayloadTooLargeError(_too_long(total / handle.samplerate, max_seconds) + " or more")
        yield mono
        if ended or (frames is not None and total >= frames):
            return


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


_RESAMPLERS = ResamplerCache(RESAMPLER_CACHE_BYTES)


def load_audio_file(path: str | Path, max_seconds: float = 3600.0) -> torch.Tensor:
    """Read and decode an audio file from disk into a 16 kHz mono waveform."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnsupportedAudioError(f"cannot read audio file {path}: {exc.strerror or exc}") from exc
    return decode_audio(data, max_seconds)
