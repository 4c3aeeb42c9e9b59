"""The espeak-ng corpus synthesizer on a handful of utterances (needs espeak-ng and the text packages)."""

import json
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from router_core.audio import decode_audio
from router_core.errors import InvalidInputError
from router_core.training.manifest import read_manifest
from router_core.training.synth import (
    AUGMENTED,
    DEV_VOICES,
    EVAL_PITCHES,
    OTHER_VOICES,
    SPEAKERS,
    TEST_VOICES,
    Utterance,
    clean_ipa,
    plan_corpus,
    read_plan,
    speaks_for_speaker_id,
    synth_corpus,
    synthesize,
    write_plan,
)
from router_core.training.text_sources import (
    ciphered_sentences,
    everyday_sentences,
    good_sentence,
    normalize,
    sentences,
)


def test_text_filters_refuse_what_espeak_reads_differently():
    assert good_sentence("The cat sat on the mat.", "en")
    assert not good_sentence("Chapter IX was the best.", "en")  # roman numeral
    assert not good_sentence("Call NASA at once please.", "en")  # abbreviation
    assert not good_sentence("It costs 12 dollars.", "en")  # digits
    assert not good_sentence("Written by Richard M. Stallman himself.", "en")  # initial
    assert not good_sentence("tab(:) allbox; c s s l l lx.", "fr")  # table markup
    assert normalize("L’été, c'est «super» !") == "l'été c'est super"
    assert clean_ipa("kɔmˌɑ̃ alˈevu sə- (en)wˈiːkˈɛnd(fr)\nbɔ̃ʒˈuʁ") == "kɔmˌɑ̃ alˈevu sə wˈiːkˈɛnd bɔ̃ʒˈuʁ"


def test_sentences_come_from_real_text_for_every_language():
    for lang in ("en", "fr", "de", "es", "it", "pt"):
        found = sentences(lang)
        assert len(found) > 500, lang
        assert all(good_sentence(s, lang) for s in found[:200])


def test_plan_is_deterministic_and_splits_are_disjoint():
    counts = {"train": 20, "dev": 5, "test": 5}
    a, b = plan_corpus(["fr"], counts, seed=3), plan_corpus(["fr"], counts, seed=3)
    assert a == b and a != plan_corpus(["fr"], counts, seed=4)
    by_split = {split: {u.sentence for u in a if u.split == split} for split in counts}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["dev"] & by_split["test"])


def test_synth_writes_16k_audio_and_manifests_train_reads(tmp_path):
    counts = {"train": 3, "dev": 1, "test": 1}
    result = synth_corpus(tmp_path, ["fr", "de"], counts, seed=0, workers=1, progress=False)
    assert result["fr_train"] == 6  # 3 planned + as many everyday sentences
    assert result["language_test"] == 2 and result["language_test_unheard"] == 2
    plan = {u.relpath: u for u in plan_corpus(["fr", "de"], counts, seed=0)}
    speaker_train = tmp_path / "speaker_train.jsonl"  # absent here: seed 0 puts none of the 6 at a test pitch
    speaker_rows = [json.loads(line) for line in speaker_train.open()] if speaker_train.exists() else []
    assert [r["audio"] for r in speaker_rows] == [  # the speaker-ID task's voices at the dev/test pitches
        path for path, u in plan.items() if u.split == "train" and speaks_for_speaker_id(u)]
    assert {r["audio"] for r in (json.loads(line) for line in (tmp_path / "speaker_test.jsonl").open())} == {
        path for path, u in plan.items() if u.split == "test"}
    rows = [json.loads(line) for line in (tmp_path / "fr_train.jsonl").read_text().splitlines()]
    info = sf.info(tmp_path / rows[0]["audio"])
    assert info.samplerate == 16000 and info.channels == 1 and info.duration > 0.5
    assert rows[0]["ipa"] and "(" not in rows[0]["ipa"] and rows[0]["text"] == normalize(rows[0]["sentence"])
    assert len(read_manifest(tmp_path / "fr_train.jsonl", "ctc")) == 6
    assert {e.target for e in read_manifest(tmp_path / "language_train.jsonl", "classify")} == {"fr", "de"}
    again = synth_corpus(tmp_path, ["fr", "de"], counts, seed=0, workers=1, progress=False)
    assert again == result  # resumable: existing utterances are reused


def test_train_split_takes_what_is_left_when_text_runs_out():
    available = len(sentences("pt"))
    plan = plan_corpus(["pt"], {"train": available + 50, "dev": 7, "test": 9}, seed=0)
    sizes = {split: sum(u.split == split for u in plan) for split in ("train", "dev", "test")}
    assert sizes == {"train": available - 16 + len(everyday_sentences("pt")), "dev": 7, "test": 9}
    own = [u for u in plan if u.split in sizes]  # the unheard splits speak dev and test again
    assert len({u.sentence for u in own}) == len(own)
    with pytest.raises(InvalidInputError, match="pt: "):
        plan_corpus(["pt"], {"train": 10, "dev": available, "test": 1}, seed=0)


def test_no_training_split_plans_only_the_evaluation_sets():
    """``--train 0`` plans evaluation sets only (it used to fail with a KeyError)."""
    counts = {"train": 0, "dev": 4, "test": 5}
    plan = plan_corpus(["es"], counts, seed=2)
    sizes = {split: sum(u.split == split for u in plan) for split in ("train", "dev", "test", "dev_unheard")}
    assert sizes == {"train": 0, "dev": 4, "test": 5, "dev_unheard": 4}
    dev, test = ({u.sentence for u in plan if u.split == split} for split in ("dev", "test"))
    assert len(dev) == 4 and len(test) == 5 and not dev & test


def test_a_written_plan_speaks_the_same_corpus_elsewhere(tmp_path):
    plan = plan_corpus(["de"], {"train": 2, "dev": 1, "test": 1}, seed=5)
    write_plan(plan, tmp_path / "plan.jsonl")
    assert read_plan(tmp_path / "plan.jsonl") == plan
    from_plan = synth_corpus(tmp_path / "a", [], {}, workers=1, progress=False, plan=read_plan(tmp_path / "plan.jsonl"))
    planned = synth_corpus(tmp_path / "b", ["de"], {"train": 2, "dev": 1, "test": 1}, seed=5, workers=1, progress=False)
    assert from_plan == planned
    assert (tmp_path / "a/de_train.jsonl").read_text() == (tmp_path / "b/de_train.jsonl").read_text()
    (tmp_path / "bad.jsonl").write_text('{"lang": "de"}\n')
    with pytest.raises(InvalidInputError, match="not a corpus plan"):
        read_plan(tmp_path / "bad.jsonl")


@pytest.mark.slow
def test_parallel_workers_speak_the_same_corpus_with_one_torch_thread_each(tmp_path):
    import torch

    from router_core.training.synth import worker_pool

    with worker_pool(2) as pool:
        assert {pool.submit(torch.get_num_threads).result() for _ in range(4)} == {1}
    counts = {"train": 3, "dev": 1, "test": 1}
    serial = synth_corpus(tmp_path / "a", ["it"], counts, seed=2, workers=1, progress=False)
    parallel = synth_corpus(tmp_path / "b", ["it"], counts, seed=2, workers=2, progress=False)
    assert parallel == serial
    assert (tmp_path / "a/it_train.jsonl").read_text() == (tmp_path / "b/it_train.jsonl").read_text()


def test_every_clause_is_spoken_cleanly_and_labelled(tmp_path):
    """Regression: with ``--ipa --stdout`` espeak-ng wrote the second clause's phonemes into the WAV data,
    which shifted every later sample by a byte (noise from the comma on) and cut the IPA label short."""
    utt = Utterance("de", "test", 0, "Sicher ist, daß nichts sicher ist.", "f1", 185, 44)
    row = synthesize(utt, tmp_path)
    assert row is not None and "zˈɪçɜ ɪst" in row["ipa"] and "nˈɪçts" in row["ipa"]
    cmd = ["espeak-ng", "-v", "de+f1", "-s", "185", "-p", "44", "-w", str(tmp_path / "ref.wav"), utt.sentence]
    subprocess.run(cmd, check=True, capture_output=True)
    reference = decode_audio((tmp_path / "ref.wav").read_bytes(), max_seconds=60.0)  # [S] at 16 kHz
    spoken, rate = sf.read(tmp_path / utt.relpath, dtype="float32")
    assert rate == 16_000 and spoken.shape == reference.shape
    assert torch.allclose(torch.from_numpy(spoken), reference, atol=2 / 32768)  # FLAC stores 16-bit samples
    assert not list(tmp_path.rglob("*.espeak.wav"))
    # an utterance an older synthesizer wrote is spoken again, not reused
    meta = (tmp_path / utt.relpath).with_suffix(".json")
    meta.write_text(json.dumps({**row, "ipa": "stale", "synth_version": 1}), encoding="utf-8")
    assert synthesize(utt, tmp_path) == row and json.loads(meta.read_text(encoding="utf-8")) == row


def test_voices_held_out_for_dev_and_test_never_speak_training_audio():
    plan = plan_corpus(["en", "es"], {"train": 400, "dev": 20, "test": 20}, seed=1)
    voices = {split: {u.speaker for u in plan if u.split == split}
              for split in ("train", "dev", "test", "dev_unheard", "test_unheard")}
    assert voices["dev"] | voices["test"] <= set(SPEAKERS)  # the seen-voice sets, as synth version 2 spoke them
    assert voices["dev_unheard"] <= set(DEV_VOICES) and voices["test_unheard"] <= set(TEST_VOICES)
    assert voices["train"] <= set(SPEAKERS) | set(OTHER_VOICES)
    assert not (set(OTHER_VOICES) | set(SPEAKERS)) & (set(DEV_VOICES) | set(TEST_VOICES))
    assert not set(DEV_VOICES) & set(TEST_VOICES)
    assert len(voices["train"] - set(SPEAKERS)) > 30  # many more voices than the speaker task's 11
    for unheard, seen in (("dev_unheard", "dev"), ("test_unheard", "test")):
        assert [u.sentence for u in plan if u.split == unheard] == [u.sentence for u in plan if u.split == seen]
    train = [u for u in plan if u.split == "train"]
    assert abs(sum(u.augment for u in train) / len(train) - AUGMENTED) < 0.1
    assert not any(u.augment for u in plan if u.split != "train")
    assert max(u.speed for u in train) > 190 and min(u.pitch for u in train) < 35  # wider than dev/test


def test_rot13_ciphertext_is_left_out_and_everyday_prose_only_trains():
    ciphered = ciphered_sentences("es")
    assert len(ciphered) > 100 and not ciphered_sentences("en")
    assert "Cvrafna dhr ynf rfgáa rfphpunaqb." in ciphered
    plan = plan_corpus(["es"], {"train": 3000, "dev": 100, "test": 100}, seed=0)
    assert not {u.sentence for u in plan} & ciphered
    everyday = set(everyday_sentences("es"))
    assert everyday and everyday <= {u.sentence for u in plan if u.split == "train"}
    assert not everyday & {u.sentence for u in plan if u.split != "train"}


def test_augmented_training_audio_says_how_it_was_degraded(tmp_path):
    utt = Utterance("it", "train", 0, "I bambini giocano in giardino.", "Mario", 200, 70, augment=True)
    row = synthesize(utt, tmp_path)
    plain = synthesize(Utterance("it", "train", 1, utt.sentence, "Mario", 200, 70), tmp_path)
    assert row is not None and plain is not None and plain["augment"] == []
    assert set(row["augment"]) <= {"gain", "room", "telephone", "mp3", "noise"}
    degraded, _ = sf.read(tmp_path / utt.relpath, dtype="float32")
    clean, _ = sf.read(tmp_path / plain["audio"], dtype="float32")
    assert degraded.shape == clean.shape and np.abs(degraded).max() <= 1.0
    if row["augment"]:
        assert not np.allclose(degraded, clean, atol=1e-3)


def test_the_everyday_test_sentences_are_in_no_training_or_language_model_text():
    """bench_quality's sentences (what users meet) must be new to the masks and to their language models,
    which learn from the training transcripts: every text source of the corpus is checked."""
    from bench.speech_corpus import SENTENCES

    for lang, written in SENTENCES.items():
        known = {normalize(s) for s in sentences(lang) + everyday_sentences(lang)}
        assert not {normalize(s) for s in written} & known, lang


def test_language_model_text_leaves_out_the_everyday_test_sentences(tmp_path):
    """The bundle's language models also learn from `s3router lm-text` sentences: build_bundle.sh hands it
    bench_quality's sentences to leave out, written as that script writes them."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from bench.speech_corpus import SENTENCES

    script = (Path(__file__).resolve().parents[1] / "scripts" / "build_bundle.sh").read_text()
    snippet = re.search(r"-c '(from bench.speech_corpus import SENTENCES.*?)'", script, re.S)
    assert snippet and '--exclude "$RUNS/everyday_eval.txt"' in script
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", snippet.group(1)], capture_output=True, text=True, check=True,
                         cwd=root).stdout
    assert out.splitlines() == [s for written in SENTENCES.values() for s in written]


def test_speaker_id_examples_are_its_voices_at_the_pitches_it_is_tested_at():
    plan = plan_corpus(["es"], {"train": 300, "dev": 20, "test": 20}, seed=0)
    train = [u for u in plan if u.split == "train" and u.speaker in SPEAKERS]
    kept = [u for u in train if speaks_for_speaker_id(u)]
    assert 0 < len(kept) < len(train)  # training pitches are wider and degraded: those are left out
    assert all(EVAL_PITCHES[0] <= u.pitch <= EVAL_PITCHES[1] and not u.augment for u in kept)
    assert any(u.augment and EVAL_PITCHES[0] <= u.pitch <= EVAL_PITCHES[1] for u in train)  # and left out
    assert all(speaks_for_speaker_id(u) for u in plan if u.split in ("dev", "test"))
    assert not any(speaks_for_speaker_id(u) for u in plan if u.split.endswith("_unheard") or u.speaker in OTHER_VOICES)


def test_everyday_dev_sentences_are_new_and_spoken_by_seen_and_held_out_voices():
    """The written ``dev_everyday`` sentences choose the language models' weights: they must pass the corpus
    filter, be no corpus or bench_quality sentence, and leave every other split as it was planned."""
    from bench.speech_corpus import SENTENCES
    from router_core.training.everyday_dev import DEV_EVERYDAY

    for lang, written in DEV_EVERYDAY.items():
        assert len({normalize(s) for s in written}) == len(written) == 20, lang
        assert all(good_sentence(s, lang) for s in written), lang
        known = {normalize(s) for s in sentences(lang) + everyday_sentences(lang) + SENTENCES.get(lang, [])}
        assert not {normalize(s) for s in written} & known, lang
    counts = {"train": 30, "dev": 5, "test": 5}
    without = plan_corpus(["fr", "pt"], counts, seed=1)
    plan = plan_corpus(["fr", "pt"], {**counts, "dev_everyday": 7}, seed=1)
    assert [u for u in plan if u.split != "dev_everyday"] == without
    for lang in ("fr", "pt"):
        spoken = [u for u in plan if u.split == "dev_everyday" and u.lang == lang]
        assert [u.index for u in spoken] == list(range(21))
        triples = [spoken[i : i + 3] for i in range(0, 21, 3)]
        assert [t[0].sentence for t in triples] == DEV_EVERYDAY[lang][:7]
        for first, *unheard in triples:
            assert {u.sentence for u in unheard} == {first.sentence} and first.speaker in SPEAKERS
            assert {u.speaker for u in unheard} <= set(DEV_VOICES) and len({u.speaker for u in unheard}) == 2
    everyday_dev = {u.sentence for u in plan if u.split == "dev_everyday"}
    assert everyday_dev and not everyday_dev & {u.sentence for u in plan if u.split == "train"}


def test_language_model_text_leaves_out_every_held_out_split(tmp_path):
    """`s3router lm-text` drops the sentences of every dev and test manifest, the everyday dev set's too."""
    from router_core.training.lm_text import held_out_transcripts

    for split, text in (("dev", "Une phrase du dev."), ("test_unheard", "Une phrase du test."),
                        ("dev_everyday", "Il va pleuvoir plus tard dans la journée"), ("train", "Un exemple.")):
        (tmp_path / f"fr_{split}.jsonl").write_text(json.dumps({"audio": "a.flac", "text": text}) + "\n")
    assert held_out_transcripts(tmp_path, "fr") == {
        "une phrase du dev", "une phrase du test", "il va pleuvoir plus tard dans la journée"}


def test_an_everyday_dev_sentence_never_trains_even_if_a_text_package_ships_it(monkeypatch):
    import router_core.training.synth as synth

    counts = {"train": 40, "dev": 3, "test": 3}
    before = [u.sentence for u in plan_corpus(["es"], counts, seed=0) if u.split == "train"]
    shipped = [before[5], everyday_sentences("es")[0]]  # one fortune, one typing-tutor sentence
    monkeypatch.setattr(synth, "DEV_EVERYDAY", {"es": [s.upper() for s in shipped]})  # matched as transcripts
    after = [u.sentence for u in plan_corpus(["es"], counts, seed=0) if u.split == "train"]
    assert shipped[0] in before and shipped[1] in before
    assert not set(shipped) & set(after) and set(after) < set(before) | set(everyday_sentences("es"))
