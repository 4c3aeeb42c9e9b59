"""Voice activity detection with silero-vad: a pretrained model whose weights ship inside its wheel (MIT),
so it works offline.

Maths: the model gives a speech probability ``p_w`` per 32 ms window ``w`` (512 samples at 16 kHz). A clip
holds speech when at least ``min_speech_windows`` consecutive windows have ``p_w >= threshold``; its
``no_speech_prob = 1 - max_w p_w``. Silence and noise give no such run, and the service answers them
with an empty transcript instead of whatever the CTC head makes of them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from router_core.backbone import SAMPLE_RATE

WINDOW_SAMPLES = 512
WINDOW_SECONDS = WINDOW_SAMPLES / SAMPLE_RATE


@dataclass(frozen=True)
class SpeechCheck:
    has_speech: bool
    no_speech_prob: float
    speech_ratio: float  # fraction of windows at or over the threshold


class SpeechDetector:
    """silero-vad over whole clips. One model, used under a lock: it keeps a recurrent state per call."""

    def __init__(self, threshold: float = 0.5, min_speech_s: float = 0.25) -> None:
        from silero_vad import load_silero_vad

        self.threshold = threshold
        self.min_speech_windows = max(1, round(min_speech_s / WINDOW_SECONDS))
        self._model = load_silero_vad()
        self._lock = threading.Lock()

    def probabilities(self, wave: torch.Tensor) -> torch.Tensor:
        """Speech probability per 32 ms window: ``wave [T]`` at 16 kHz -> ``[ceil(T / 512)]`` (a clip
        shorter than one window is padded with silence: the model refuses it otherwise)."""
        wave = wave.float().cpu()  # [T]
        if wave.shape[0] < WINDOW_SAMPLES:
            wave = torch.nn.functional.pad(wave, (0, WINDOW_SAMPLES - wave.shape[0]))  # [512]
        with self._lock, torch.no_grad():
            return self._model.audio_forward(wave, SAMPLE_RATE)[0]  # [1, W] -> [W]

    def check(self, wave: torch.Tensor) -> SpeechCheck:
        probs = self.probabilities(wave)  # [W]
        if probs.numel() == 0:
            return SpeechCheck(False, 1.0, 0.0)
        speech = probs >= self.threshold  # [W]
        return SpeechCheck(
            has_speech=_longest_run(speech) >= self.min_speech_windows,
            no_speech_prob=float(1.0 - probs.max()),
            speech_ratio=float(speech.float().mean()),
        )


def _longest_run(flags: torch.Tensor) -> int:
    """Length of the longest run of ``True`` in a 1-D bool tensor."""
    longest = current = 0
    for flag in flags.tolist():
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return longest
