"""Training-audio augmentation: deterministic per seed, every degradation reachable, never clipping."""

import numpy as np

from router_core.training.augment import augment


def _speechlike(seconds: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
            ).astype(np.float32)  # [T]


def test_the_same_seed_gives_the_same_audio_and_other_seeds_differ():
    wave = _speechlike()
    first, names = augment(wave, 7)
    again, names_again = augment(wave, 7)
    assert names == names_again and np.array_equal(first, again)
    outcomes = [augment(wave, seed) for seed in range(40)]
    assert len({tuple(names) for _, names in outcomes}) > 5


def test_every_degradation_is_applied_to_some_seeds_and_nothing_clips():
    wave = _speechlike()
    seen = set()
    for seed in range(60):
        out, names = augment(wave, seed)
        seen |= set(names)
        assert out.shape == wave.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and np.abs(out).max() <= 0.99 + 1e-6
        if not names:
            assert np.array_equal(out, wave)
    assert seen == {"gain", "room", "telephone", "mp3", "noise"}


def test_telephone_band_removes_low_and_high_frequencies():
    t = np.arange(16_000) / 16_000
    lows_and_highs = (0.3 * np.sin(2 * np.pi * 100 * t) + 0.3 * np.sin(2 * np.pi * 6_000 * t)).astype(np.float32)
    for seed in range(200):
        out, names = augment(lows_and_highs, seed)
        if names == ["telephone"]:
            assert np.sqrt(np.mean(out**2)) < 0.25 * np.sqrt(np.mean(lows_and_highs**2))
            return
    raise AssertionError("no seed in 200 applied the telephone band alone")
