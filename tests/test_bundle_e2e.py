"""End to end on the bundled default model: a real `s3router serve`, speech synthesized inside the test.

Sentences are new (written here, not from the corpus); voices and speeds are as in training. Needs the
bundle in masks/ (built by `make bundle`) and espeak-ng.
"""

import re
import shlex
import subprocess
from pathlib import Path

import httpx
import jiwer
import pytest

from bench.serving import serving
from router_core.training.text_sources import normalize

BUNDLE = Path(__file__).resolve().parents[1] / "masks"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BUNDLE / "registry" / "fr.s3mask").is_file(), reason="bundle not built (make bundle)"),
]

SENTENCES = {
    "fr": [
        ("Le petit chat dort sur la chaise de la cuisine.", "m3", 160),
        ("Nous avons mangé une soupe chaude ce soir.", "f2", 150),
        ("Il faut toujours lire la documentation avant de commencer.", "m1", 170),
    ],
    "de": [
        ("Der Hund spielt jeden Morgen im großen Garten.", "f1", 160),
        ("Wir fahren morgen mit dem Zug nach Berlin.", "m5", 150),
        ("Das Wetter ist heute kalt und sehr windig.", "m2", 170),
    ],
}
VOICES = {"fr": "fr", "de": "de"}
# per language over the three sentences. Bundle v5 got fr 0.10, de 0.02 here with its language models
# (greedy: 0.13, 0.04); on the test sets fr 0.054, de 0.029 (greedy 0.119, 0.057)
CER_LIMIT = 0.18


def _speak(text: str, lang: str, speaker: str, speed: int) -> bytes:
    cmd = ["espeak-ng", "-v", f"{VOICES[lang]}+{speaker}", "-s", str(speed), "-p", "50", "--stdout", text]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def server():
    with serving() as url:
        yield url


@pytest.mark.parametrize("lang", ["fr", "de"])
def test_transcribe_with_an_explicit_language(server, lang):
    refs, hyps = [], []
    for text, speaker, speed in SENTENCES[lang]:
        body = httpx.post(f"{server}/transcribe?lang={lang}", content=_speak(text, lang, speaker, speed), timeout=60)
        given = body.json()
        assert given["mask"] == lang and given["words"] and given["words"][-1]["end"] <= given["duration"] + 0.05
        assert given["decoder"] == "beam+lm"  # the bundled CTC masks carry a character language model
        refs.append(normalize(text))
        hyps.append(given["text"])
    assert jiwer.cer(refs, hyps) <= CER_LIMIT, list(zip(refs, hyps, strict=True))


def test_lang_auto_detects_the_language_then_transcribes_with_its_mask(server):
    detected = []
    for lang, items in SENTENCES.items():
        for text, speaker, speed in items:
            wav = _speak(text, lang, speaker, speed)
            auto = httpx.post(f"{server}/transcribe?lang=auto", content=wav, timeout=60).json()
            given = httpx.post(f"{server}/transcribe?lang={auto['language']}", content=wav, timeout=60).json()
            assert auto["mask"] == auto["language"] and auto["text"] == given["text"]
            assert 0.0 < auto["language_probability"] <= 1.0
            detected.append(auto["language"] == lang)
    assert sum(detected) >= 5, detected  # the bundle gets 6/6 here; its test-set language-ID accuracy is 0.998


def test_classify_speaker_answers_with_the_bundled_voices(server):
    body = httpx.post(f"{server}/classify?task=speaker&top_k=11", content=_speak(*_first("fr")), timeout=60).json()
    labels = {item["label"] for item in body["labels"]}
    assert labels == {f"m{i}" for i in range(1, 8)} | {f"f{i}" for i in range(1, 5)}
    assert sum(item["probability"] for item in body["labels"]) == pytest.approx(1.0, abs=1e-3)


def test_classify_speaker_on_new_sentences(server):
    """One miss allowed: the bundled speaker mask scores 0.907 on its test set."""
    results = []
    for lang, items in SENTENCES.items():
        for text, speaker, speed in items:
            body = httpx.post(f"{server}/classify?task=speaker", content=_speak(text, lang, speaker, speed), timeout=60)
            results.append(body.json()["label"] == speaker)
    assert sum(results) >= len(results) - 1, results


def _first(lang: str) -> tuple[str, str, str, int]:
    text, speaker, speed = SENTENCES[lang][0]
    return text, lang, speaker, speed


def test_the_readme_first_request_gives_the_transcript_it_shows(server, tmp_path):
    """README.md's first example, run as written: its espeak-ng line, its curl's endpoint, its shown text."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```bash", 2)[2].split("```", 1)[0]
    speak = next(line for line in block.splitlines() if line.startswith("espeak-ng "))
    query = re.search(r"'localhost:8000(/transcribe\?lang=\w+)'", block)
    shown = re.search(r'^# \{"text":"([^"]*)"', block, re.M)
    assert query and shown, block
    argv = shlex.split(speak)
    wav = tmp_path / argv[argv.index("-w") + 1]
    argv[argv.index("-w") + 1] = str(wav)
    subprocess.run(argv, check=True)
    given = httpx.post(f"{server}{query.group(1)}", content=wav.read_bytes(), timeout=60).json()
    assert given["text"] == shown.group(1)
