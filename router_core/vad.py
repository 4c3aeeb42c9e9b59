"""Voice activity detection with silero-vad: a pretrained model whose weights ship inside its wheel (MIT),
so it works offline.

Maths: the model gives a speech probability ``p_w`` per 32 ms window ``w`` (512 samples at 16 kHz). A clip
holds speech when at least ``min_speech_windows`` consecutive windows have ``p_w >= threshold``; its
``no_speech_prob = 1 - max_w p_w``. Silence and noise give no such run, and the service answers them
with an empty transcript instead of whatever the CTC head makes of them.

Segmentation of long audio (:func:`speech_segments`, a pure function of the window probabilities): runs
of speech windows (``p_w >= threshold``) separated by less than ``min_silence_s`` of non-speech are one
segment; segments shorter than ``min_speech_s`` are dropped; a segment longer than ``max_segment_s`` is
split at its least speech-like window (lowest ``p_w``) between ``max_segment_s / 2`` and ``max_segment_s``
from its start, repeatedly; each segment is then widened by ``pad_s`` on both sides (never past its
neighbours' midpoints or the audio's ends).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from router_core.backbone import SAMPLE_RATE

WINDOW_SAMPLES = 512
WINDOW_SECONDS = WINDOW_SAMPLES / SAMPLE_RATE


@dataclass(frozen=True)
class SegmentSettings:
    """How long audio is cut into speech segments (seconds)."""

    min_silence_s: float = 0.3  # a pause at least this long ends a segment
    max_segment_s: float = 25.0  # longer speech is split at its least speech-like window
    pad_s: float = 0.2  # audio kept on each side of a segment's speech
    min_speech_s: float = 0.25  # shorter speech is dropped (clicks, breaths)


@dataclass(frozen=True)
class SpeechSegment:
    start: int  # first sample, at 16 kHz
    end: int  # one past the last sample
    speech_prob: float  # the highest window probability inside: 1 - its no-speech probability


def speech_segments(
    probs: torch.Tensor, samples: int, threshold: float, settings: SegmentSettings
) -> list[SpeechSegment]:
    """Speech segments of ``samples`` samples of audio from its window probabilities ``probs [W]`` (window
    ``w`` covers samples ``[512 w, 512 (w + 1))``); see the module docstring for the rules."""
    per_s = 1.0 / WINDOW_SECONDS
    runs = _speech_runs((probs >= threshold).tolist(), max(1, round(settings.min_silence_s * per_s)))
    runs = [r for r in runs if r[1] - r[0] >= max(1, round(settings.min_speech_s * per_s))]
    split: list[tuple[int, int]] = []
    longest = max(2, round(settings.max_segment_s * per_s))
    for start, end in runs:
        while end - start > longest:
            window = probs[start + longest // 2 : start + longest]  # [longest / 2]
            cut = start + longest // 2 + int(window.argmin())
            split.append((start, cut))
            start = cut
        split.append((start, end))
    pad = round(settings.pad_s * SAMPLE_RATE)
    bounds = [(s * WINDOW_SAMPLES, min(samples, e * WINDOW_SAMPLES)) for s, e in split]
    segments = []
    for i, (start, end) in enumerate(bounds):
        low = 0 if i == 0 else max((bounds[i - 1][1] + start) // 2, bounds[i - 1][1])
        high = samples if i == len(bounds) - 1 else min((end + bounds[i + 1][0]) // 2, bounds[i + 1][0])
        first, last = split[i]
        segments.append(SpeechSegment(max(low, start - pad), min(high, end + pad), float(probs[first:last].max())))
    return segments


def _speech_runs(speech: list[bool], bridge: int) -> list[tuple[int, int]]:
    """``[start, end)`` window runs of speech, joining runs separated by fewer than ``bridge`` windows."""
    runs: list[tuple[int, int]] = []
    for w, flag in enumerate(speech):
        if not flag:
            continue
        if runs and w - runs[-1][1] < bridge:
            runs[-1] = (runs[-1][0], w + 1)
        else:
            runs.append((w, w + 1))
    return runs


@dataclass(frozen=True)
class SpeechCheck:
    has_speech: bool
    no_speech_prob: float
    speech_ratio: float  # fraction of windows at or over the threshold


STATE_SIZE, CONTEXT_SAMPLES = 128, 64  # silero-vad's recurrent state [2, 1, 128]; samples of context per window


@dataclass
class VadState:
    """The detector's memory after the windows read so far: its recurrent state and the last samples."""

    recurrent: torch.Tensor  # [2, 1, 128]
    context: torch.Tensor  # [1, 64]


class SpeechDetector:
    """silero-vad. The model itself keeps no state between calls here: each caller holds its own
    :class:`VadState` (one per clip, one per stream), so calls from many threads run side by side."""

    def __init__(self, threshold: float = 0.5, min_speech_s: float = 0.25) -> None:
        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad  # its first import sets torch's threads to 1, process-wide

        torch.set_num_threads(threads)  # the backbone's batches need every thread they had
        self.threshold = threshold
        self.min_speech_windows = max(1, round(min_speech_s / WINDOW_SECONDS))
        self._network = load_silero_vad()._model  # the 16 kHz network: (window with context, state) -> (p, state)

    def start(self) -> VadState:
        """The state before the first window of a recording."""
        return VadState(torch.zeros(2, 1, STATE_SIZE), torch.zeros(1, CONTEXT_SAMPLES))

    def read(self, state: VadState, windows: torch.Tensor) -> torch.Tensor:
        """Speech probabilities of ``windows [n * 512]`` (whole windows, in order, at 16 kHz) -> ``[n]``,
        advancing ``state`` past them. Each window is read with the 64 samples before it, as silero-vad's
        own loop does: window for window the same numbers as its ``audio_forward``."""
        assert windows.shape[0] % WINDOW_SAMPLES == 0, "whole windows only"
        probs = []
        with torch.no_grad():
            for frame in windows.float().cpu().view(-1, WINDOW_SAMPLES):  # [512]
                x = torch.cat([state.context, frame[None]], dim=1)  # [1, 64 + 512]
                p, state.recurrent = self._network.forward(x, state.recurrent)
                state.context = x[:, -CONTEXT_SAMPLES:]
                probs.append(p.reshape(1))
        return torch.cat(probs) if probs else torch.zeros(0)

    def probabilities(self, wave: torch.Tensor) -> torch.Tensor:
        """Speech probability per 32 ms window: ``wave [T]`` at 16 kHz -> ``[ceil(T / 512)]`` (the last
        window padded with silence; a clip shorter than one window is one padded window)."""
        wave = wave.float().cpu()  # [T]
        padding = (-wave.shape[0]) % WINDOW_SAMPLES if wave.shape[0] else WINDOW_SAMPLES
        return self.read(self.start(), torch.nn.functional.pad(wave, (0, padding)))  # [W]

    def segments(self, wave: torch.Tensor, settings: SegmentSettings) -> list[SpeechSegment]:
        """Speech segments of ``wave [T]`` (16 kHz), in order."""
        return speech_segments(self.probabilities(wave), wave.shape[0], self.threshold, settings)

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


class StreamingVad:
    """Window probabilities of audio that arrives in pieces (a stream): each whole window is read once, in
    order, with the state carried over, so the probabilities are those of :meth:`SpeechDetector.probabilities`
    over the whole stream; a last partial window is read padded with silence on a copy of the state. The
    stream may :meth:`forget` its oldest windows once it no longer needs them."""

    def __init__(self, detector: SpeechDetector) -> None:
        self.detector = detector
        self.state = detector.start()
        self.kept = torch.zeros(0)  # [W] probabilities of the whole windows not forgotten
        self.partial = torch.zeros(0)  # [< 512] samples after the last whole window

    def push(self, samples: torch.Tensor) -> None:
        """Read ``samples [n]`` (16 kHz), the audio after what was pushed before."""
        pending = torch.cat([self.partial, samples.float().cpu()])
        whole = pending.shape[0] - pending.shape[0] % WINDOW_SAMPLES
        if whole:
            self.kept = torch.cat([self.kept, self.detector.read(self.state, pending[:whole])])
        self.partial = pending[whole:]

    def probabilities(self) -> torch.Tensor:
        """``[W]``: the kept windows', then the partial window's (padded), if any."""
        if not self.partial.shape[0]:
            return self.kept
        probe = VadState(self.state.recurrent.clone(), self.state.context.clone())
        padded = torch.nn.functional.pad(self.partial, (0, WINDOW_SAMPLES - self.partial.shape[0]))
        return torch.cat([self.kept, self.detector.read(probe, padded)])

    def forget(self, windows: int) -> None:
        """Drop the probabilities of the oldest ``windows`` whole windows."""
        self.kept = self.kept[windows:]
