"""Training-audio augmentation for the synthesized corpus, with ``audiomentations`` (a maintained library).

espeak-ng speaks every sentence in a clean, dry, full-band studio voice; users send phone calls, rooms,
MP3s and noise. :func:`augment` degrades one utterance the way such audio is degraded, deterministically
for its ``seed``, and says which degradations it applied (stored in the manifest row):

- ``gain``: -12 … +6 dB;
- ``room``: reverberation from a simulated shoebox room (image source method, ``pyroomacoustics``);
- ``telephone``: band-limited to the 300-3400 Hz telephone band;
- ``mp3``: an MP3 round trip at 8-48 kbit/s;
- ``noise``: coloured noise (white … brown) at 5-30 dB SNR.

Each applies independently with its own probability, so most augmented utterances get one or two.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from router_core.backbone import SAMPLE_RATE


def _chain() -> list[tuple[str, Any]]:
    import audiomentations as am  # training-only dependency: imported when the corpus is built

    return [
        ("gain", am.Gain(min_gain_db=-12.0, max_gain_db=6.0, p=0.5)),
        ("room", am.RoomSimulator(leave_length_unchanged=True, p=0.3)),
        ("telephone", am.BandPassFilter(min_center_freq=1750.0, max_center_freq=1850.0,
                                        min_bandwidth_fraction=1.65, max_bandwidth_fraction=1.75, p=0.2)),
        ("mp3", am.Mp3Compression(min_bitrate=8, max_bitrate=48, backend="fast-mp3-augment", p=0.25)),
        ("noise", am.AddColorNoise(min_snr_db=5.0, max_snr_db=30.0, p=0.4)),
    ]


_CHAIN: list[tuple[str, Any]] | None = None


def augment(wave: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """``wave`` [T] float32 at 16 kHz, degraded as the module says; and the names of what was applied.

    The same ``seed`` gives the same result (audiomentations draws from ``random`` and ``np.random``,
    which are seeded here; this runs in the corpus's worker processes, one utterance at a time).
    The result is scaled down if it would clip, so that the 16-bit FLAC keeps it whole."""
    global _CHAIN
    if _CHAIN is None:
        _CHAIN = _chain()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    applied = []
    out = wave.astype(np.float32)
    for name, transform in _CHAIN:
        candidate = transform(samples=out, sample_rate=SAMPLE_RATE)
        if transform.parameters.get("should_apply"):
            applied.append(name)
            out = np.asarray(candidate, dtype=np.float32)[: len(wave)]
    if len(out) < len(wave):
        out = np.pad(out, (0, len(wave) - len(out)))
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak > 0.99:
        out = out * (0.99 / peak)
    return out, applied
