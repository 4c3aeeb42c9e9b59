"""The speech gate on its own: silero-vad's pretrained model on espeak-ng speech, silence, noise, tiny clips."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from router_core.audio import decode_audio
from router_core.vad import WINDOW_SAMPLES, SpeechDetector, StreamingVad, _longest_run


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


def _probs(*spans, seconds=60.0, low=0.05):
    """Window probabilities: ``low`` everywhere, 0.9 in each ``(start_s, end_s)`` span."""
    from router_core.vad import WINDOW_SECONDS

    probs = torch.full((int(seconds / WINDOW_SECONDS),), low)
    for start, end in spans:
        probs[int(start / WINDOW_SECONDS) : int(end / WINDOW_SECONDS)] = 0.9
    return probs


def test_segments_follow_pauses_bridge_short_gaps_and_drop_clicks():
    from router_core.vad import SegmentSettings, speech_segments

    settings = SegmentSettings(min_silence_s=0.3, max_segment_s=25.0, pad_s=0.2, min_speech_s=0.25)
    probs = _probs((1.0, 3.0), (3.1, 5.0), (8.0, 9.5), (12.0, 12.1), seconds=20.0)
    got = [(s.start / 16000, s.end / 16000) for s in speech_segments(probs, 20 * 16000, 0.5, settings)]
    assert len(got) == 2  # 3.0-3.1 is bridged; the 0.1 s click at 12 s is dropped
    (a0, a1), (b0, b1) = got
    assert abs(a0 - 0.8) < 0.05 and abs(a1 - 5.2) < 0.05 and abs(b0 - 7.8) < 0.05 and abs(b1 - 9.7) < 0.05


def test_long_speech_is_split_at_its_least_speech_like_window_and_padding_never_overlaps():
    from router_core.vad import WINDOW_SECONDS, SegmentSettings, speech_segments

    probs = _probs((0.0, 60.0))
    dip = int(20.0 / WINDOW_SECONDS)
    probs[dip] = 0.55  # still speech, but the least speech-like point between 12.5 and 25 s
    segments = speech_segments(probs, 60 * 16000, 0.5, SegmentSettings(max_segment_s=25.0, pad_s=0.5))
    assert all(s.end - s.start <= 25 * 16000 + 16000 for s in segments)
    assert abs(segments[0].end / 16000 - 20.0) < 0.05  # cut at the dip (padding stops at the neighbour)
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:], strict=False))
    assert segments[0].start == 0 and segments[-1].end == 60 * 16000
    assert speech_segments(_probs(seconds=5.0), 5 * 16000, 0.5, SegmentSettings()) == []


def _spoken(text: str, voice: str = "en") -> torch.Tensor:
    audio = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    return decode_audio(audio, 60)  # [T] 16 kHz


def test_probabilities_are_silero_vads_own_window_for_window(detector):
    """The detector runs the network itself with a state per call (no shared model state, no lock): the
    numbers are those of silero-vad's own loop, ``audio_forward`` (the oracle)."""
    from silero_vad import load_silero_vad

    wave = _spoken("The kettle was still warm when we came home.")
    wave = wave[: wave.shape[0] - 100]  # a partial last window
    oracle = load_silero_vad().audio_forward(wave, 16_000)[0]
    assert torch.allclose(detector.probabilities(wave), oracle, atol=1e-6)


def test_detectors_share_nothing_between_threads(detector):
    """Clips read at once from several threads give what each gives alone (the model keeps no state)."""
    from concurrent.futures import ThreadPoolExecutor

    clips = [_spoken(text, voice) for text, voice in [("One two three four.", "en"), ("Un deux trois.", "fr"),
                                                      ("Eins zwei drei vier fünf.", "de")]]
    alone = [detector.probabilities(c) for c in clips]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(detector.probabilities, clips * 2))
    assert all(torch.equal(a, b) for a, b in zip(alone * 2, together, strict=True))


@pytest.mark.parametrize("piece", [320, 160 * 7, 4_000])
def test_a_stream_reads_each_window_once_and_gets_the_whole_recordings_probabilities(detector, piece):
    """A stream pushed in pieces (20 ms messages at 16 kHz, odd sizes, 0.25 s) has, after every push, the
    probabilities of all its audio so far read at once; pushing reads each whole window through the network
    exactly once, and asking for the probabilities reads at most the one partial window."""
    wave = _spoken("Le petit chat dort sur la chaise, et le chien joue dans le jardin.", "fr")
    stream = StreamingVad(detector)
    read = {"push": 0, "ask": 0}
    phase = ["push"]
    original = detector.read

    def counting(state, windows):
        read[phase[0]] += windows.shape[0] // WINDOW_SAMPLES
        return original(state, windows)

    detector.read = counting
    try:
        for i, start in enumerate(range(0, wave.shape[0], piece)):
            phase[0] = "push"
            stream.push(wave[start:start + piece])
            if i % 7 == 0:
                phase[0], asked_before = "ask", read["ask"]
                so_far = stream.probabilities()
                assert read["ask"] - asked_before <= 1
                assert torch.allclose(so_far, detector.probabilities(wave[:start + piece]), atol=1e-6)
                read["ask"] = asked_before + 1  # the oracle's reads above are not the stream's
    finally:
        del detector.read
    assert read["push"] == wave.shape[0] // WINDOW_SAMPLES
    stream.forget(10)
    assert torch.allclose(stream.probabilities(), detector.probabilities(wave)[10:], atol=1e-6)


def test_loading_the_detector_leaves_torchs_threads_alone():
    """silero-vad's first import calls torch.set_num_threads(1): every thread started after it (the model
    thread of the batcher) ran the backbone on one core. Loading the detector keeps the count."""
    probe = ("import threading, torch; before = torch.get_num_threads(); "
             "from router_core.vad import SpeechDetector; SpeechDetector(); seen = []; "
             "t = threading.Thread(target=lambda: seen.append(torch.get_num_threads())); t.start(); t.join(); "
             "print(before, torch.get_num_threads(), seen[0])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout.split()
    assert out == ["2", "2", "2"]
