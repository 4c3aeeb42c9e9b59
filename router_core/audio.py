"""Uploaded bytes -> 16 kHz mono float waveform (WAV, FLAC, OGG/Vorbis/Opus, MP3 via libsndfile).

Maths: channels are averaged (``x[t] = mean_c x[c, t]``), then resampled with torchaudio's windowed-sinc
resampler from the file's rate to 16 kHz.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import soundfile as sf
import torch
import torchaudio

from router_core.backbone import SAMPLE_RATE
from router_core.errors import EmptyAudioError, PayloadTooLargeError, UnsupportedAudioError


def decode_audio(data: bytes, max_seconds: float) -> torch.Tensor:
    """Decode ``data`` into a 1-D float32 tensor at 16 kHz; refuse garbage, empty and too-long audio."""
    if not data:
        raise EmptyAudioError("the request carries no audio (empty body)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            rate, frames = handle.samplerate, handle.frames
            if rate <= 0:
                raise UnsupportedAudioError("audio has no valid sample rate")
            if frames > 0 and frames / rate > max_seconds:
                raise PayloadTooLargeError(f"audio is {frames / rate:.1f} s long; the limit is {max_seconds:g} s")
            samples = handle.read(dtype="float32", always_2d=True)  # [T, C]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).rsplit(": ", 1)[-1]  # libsndfile's reason, without the in-memory file's repr
        raise UnsupportedAudioError(
            f"could not decode the upload as audio (WAV, FLAC, OGG or MP3 expected): {reason}"
        ) from exc
    if samples.shape[0] == 0:
        raise EmptyAudioError("the audio contains no samples")
    if samples.shape[0] / rate > max_seconds:  # streams whose length was unknown up front
        raise PayloadTooLargeError(f"audio is {samples.shape[0] / rate:.1f} s long; the limit is {max_seconds:g} s")
    wave = torch.from_numpy(samples).mean(dim=1)  # [T]
    if rate != SAMPLE_RATE:
        with torch.no_grad():
            wave = _resampler(rate)(wave)
    return wave.contiguous()


@functools.lru_cache(maxsize=16)
def _resampler(rate: int) -> torchaudio.transforms.Resample:
    """A cached resampler to 16 kHz: building the windowed-sinc kernel costs far more than applying it."""
    return torchaudio.transforms.Resample(rate, SAMPLE_RATE)


def load_audio_file(path: str | Path, max_seconds: float = 3600.0) -> torch.Tensor:
    """Read and decode an audio file from disk into a 16 kHz mono waveform."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnsupportedAudioError(f"cannot read audio file {path}: {exc.strerror or exc}") from exc
    return decode_audio(data, max_seconds)
