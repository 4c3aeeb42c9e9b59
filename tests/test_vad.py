"""The speech gate on its own: silero-vad's pretrained model on espeak-ng speech, silence, noise, tiny clips."""

import subprocess

import numpy as np
import pytest
import torch

from router_core.audio import decode_audio
from router_core.vad import SpeechDetector, _longest_run


@pytest.fixture(scope="module")
def detector():
    return SpeechDetector()


def test_speech_is_speech_and_the_rest_is_not(detector):
    spoken = subprocess.run(["espeak-ng", "-v", "fr", "--stdout", "Le petit chat dort sur la chaise."],
                            capture_output=True, check=True).stdout
    speech = detector.check(decode_audio(spoken, 60))
    assert speech.has_speech and speech.no_speech_prob < 0.2 and speech.speech_ratio > 0.5
    rng = np.random.default_rng(0)
    for wave in (torch.zeros(80_000), torch.from_numpy(0.2 * rng.standard_normal(80_000)).float()):
        quiet = detector.check(wave)
        assert not quiet.has_speech and quiet.no_speech_prob > 0.5


@pytest.mark.parametrize("samples", [0, 1, 100, 511, 512, 513])
def test_clips_shorter_than_a_window_are_checked_not_refused(detector, samples):
    check = detector.check(torch.zeros(samples))
    assert not check.has_speech and 0.0 <= check.no_speech_prob <= 1.0


def test_longest_run():
    assert _longest_run(torch.tensor([], dtype=torch.bool)) == 0
    assert _longest_run(torch.tensor([True, False, True, True, True, False, True])) == 3
