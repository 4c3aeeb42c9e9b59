"""A CTC mask's language model end to end: in the mask file, in the router, fitted by `s3router lm`."""

import json
import struct
from dataclasses import replace

import pytest
import soundfile as sf
import torch
from safetensors.torch import save as st_save

from helpers import add_masks, classify_spec, ctc_spec, tiny_backbone, tiny_model, waves
from router_core.backbone import load_backbone
from router_core.char_lm import train_char_lm
from router_core.ctc_beam import BeamSettings, LMDecoding, ctc_beam_decode
from router_core.decoding import ctc_greedy_decode
from router_core.errors import ChecksumMismatchError, InvalidInputError, MaskFormatError, MaskKindError
from router_core.mask_builder import random_mask
from router_core.mask_file import METADATA_KEY, _checksum, decode_mask, encode_mask
from router_core.registry import DirectoryStore
from router_core.router import Router
from router_core.training.evaluation import error_rates
from router_core.training.lm_builder import (
    _half_step,
    _neighbours,
    fit_weights,
    read_texts,
    with_language_model,
    with_refitted_weights,
)
from service.cli import main

TEXTS = ["hello", "a bad lad", "a cold hell", "hello old lad", "a bold deal"]


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def _ctc_mask(bb, name="fr"):
    return random_mask(bb.spec(), name, ctc_spec(), bb.default_layer_names(), 0.9, seed=3)


def _with_lm(mask, order=4, settings=None):
    settings = settings or BeamSettings(beam_width=8, alpha=0.7, beta=0.5)
    model = train_char_lm(TEXTS, order, [t for t in mask.head.vocab if t != "<pad>"])
    return replace(mask, lm=LMDecoding(model, settings, {"sentences": len(TEXTS)}))


def test_language_model_round_trips_through_the_mask_file(bb):
    mask = _with_lm(_ctc_mask(bb))
    back = decode_mask(encode_mask(mask))
    assert back.metadata() == mask.metadata()
    assert back.lm is not None and back.lm.settings == mask.lm.settings and back.lm.info == {"sentences": 5}
    assert back.lm.model.grams.keys() == mask.lm.model.grams.keys()
    state = back.lm.model.start
    for token in range(1, len(back.lm.model.tokens)):
        assert back.lm.model.score(state, token) == pytest.approx(mask.lm.model.score(state, token), rel=1e-6)
    for name, bits in mask.layer_bits.items():
        assert torch.equal(back.layer_bits[name], bits)
    assert decode_mask(encode_mask(_ctc_mask(bb))).lm is None


def test_version_2_files_without_a_language_model_still_load(bb):
    mask = _ctc_mask(bb)
    meta = {k: v for k, v in mask.metadata().items() if k != "lm"}
    meta["format_version"] = 2
    tensors = mask.tensors()
    meta["checksum"] = _checksum(meta, tensors)
    back = decode_mask(st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    assert back.lm is None and back.head == mask.head


def test_the_checksum_covers_the_language_model(bb):
    data = bytearray(encode_mask(_with_lm(_ctc_mask(bb))))
    (header_len,) = struct.unpack("<Q", data[:8])
    start, _ = json.loads(data[8 : 8 + header_len])["lm/logprob"]["data_offsets"]
    data[8 + header_len + start + 1] ^= 0x40  # one bit of one stored log probability
    with pytest.raises(ChecksumMismatchError):
        decode_mask(bytes(data))


def test_malformed_language_model_metadata_is_a_format_error(bb):
    mask = _with_lm(_ctc_mask(bb))
    meta, tensors = mask.metadata(), mask.tensors()
    meta["lm"]["order"] = 7  # the tensors hold order-4 n-grams
    meta["checksum"] = _checksum(meta, tensors)
    with pytest.raises(MaskFormatError, match="language model"):
        decode_mask(st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))


def test_router_decodes_with_the_masks_language_model_unless_told_greedy(bb, make_registry):
    registry = make_registry(bb)
    add_masks(registry, bb, ["de"])
    registry.put(encode_mask(_with_lm(_ctc_mask(bb, "fr"))))
    batch = waves(4000, 5200, 4800)
    names = ["fr", "de", "fr"]
    auto = Router(bb, registry).forward(batch, names)
    greedy = Router(bb, registry, decoder="greedy").forward(batch, names)
    lm = registry.get("fr").mask.lm
    spf = bb.seconds_per_frame
    for a, g, name in zip(auto, greedy, names, strict=True):
        assert torch.equal(a.logits, g.logits)
        assert g.transcript.text == ctc_greedy_decode(g.logits, registry.get(name).mask.head, spf).text
        expected = ctc_beam_decode(a.logits, registry.get(name).mask.head, spf, lm.model, lm.settings).text
        assert a.transcript.text == (expected if name == "fr" else g.transcript.text)
        assert (a.decoder, g.decoder) == ("beam+lm" if name == "fr" else "greedy", "greedy")
    with pytest.raises(InvalidInputError, match="decoder"):
        Router(bb, registry, decoder="beam")


def test_read_texts_from_manifests_and_plain_text(tmp_path):
    rows = ['{"audio": "x.flac", "text": "le chat"}', "", '{"audio": "y.flac", "text": "un pain"}']
    (tmp_path / "a.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "b.tsv").write_text("audio\ttext\nx.flac\tle chat\ny.flac\tun pain\n")
    (tmp_path / "c.txt").write_text("le chat\n  \nun pain\n")
    for name in ("a.jsonl", "b.tsv", "c.txt"):
        assert read_texts(tmp_path / name) == ["le chat", "un pain"]
    (tmp_path / "d.tsv").write_text("audio\tlabel\nx.flac\tm1\n")
    with pytest.raises(InvalidInputError, match="text"):
        read_texts(tmp_path / "d.tsv")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(InvalidInputError, match="no text"):
        read_texts(tmp_path / "e.txt")


def _close_calls(words, vocab, seed=0):
    """Log posteriors that spell each word, with every letter's frame giving a rival letter nearly
    as much: the acoustics alone get many letters wrong, the words' text gets them right."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for word in words:
        frames = []
        for char in word.replace(" ", "|"):
            row = torch.zeros(len(vocab))
            row[vocab.index(char)] = 6.0
            row[int(torch.randint(1, len(vocab), (1,), generator=g))] += 6.3
            frames += [row, torch.eye(len(vocab))[0] * 8.0]  # the letter, then a blank
        out.append(torch.log_softmax(torch.stack(frames), dim=-1))  # [T, V]
    return out


def test_fit_weights_finds_weights_that_beat_greedy():
    spec = ctc_spec()
    lm = train_char_lm(TEXTS * 4, 5, spec.vocab[1:])
    log_probs = _close_calls(TEXTS, spec.vocab)
    settings, cers = fit_weights(log_probs, TEXTS, spec, lm, BeamSettings(beam_width=8))
    assert cers["greedy"] > 0.2 and cers["beam_lm"] < cers["greedy"] / 2
    hyps = [ctc_beam_decode(x, spec, 1.0, lm, settings).text for x in log_probs]
    assert error_rates(TEXTS, hyps)["cer"] == pytest.approx(cers["beam_lm"])
    with pytest.raises(InvalidInputError, match="dev examples"):
        fit_weights([], [], spec, lm, settings)


def test_fit_weights_refines_around_the_grids_best_point():
    assert _half_step([0.4, 1.2, 0.8]) == pytest.approx(0.2) and _half_step([2.0]) == 0.0
    assert _neighbours(0.4, 0.0, 0.2, 0.5) == [(0.2, 0.0), (0.6, 0.0), (0.4, 0.5)]  # no negative bonus
    assert _neighbours(0.4, 1.0, 0.4, 0.0) == [(0.8, 1.0)]  # alpha stays positive; a zero step adds nothing
    spec = ctc_spec()
    lm = train_char_lm(TEXTS * 4, 5, spec.vocab[1:])
    log_probs = _close_calls(TEXTS, spec.vocab)

    def cer(alpha, beta):
        settings = BeamSettings(beam_width=8, alpha=alpha, beta=beta)
        return error_rates(TEXTS, [ctc_beam_decode(x, spec, 1.0, lm, settings).text for x in log_probs])["cer"]

    alphas, betas = (0.2, 4.0), (0.0, 6.0)
    grid = {(a, b): cer(a, b) for a in alphas for b in betas}
    grid_best = min(grid, key=lambda k: (grid[k], k))
    around = {k: cer(*k) for k in _neighbours(*grid_best, 1.9, 3.0)}
    settings, cers = fit_weights(log_probs, TEXTS, spec, lm, BeamSettings(beam_width=8), alphas, betas)
    expected = min({**grid, **around}.items(), key=lambda kv: (kv[1], kv[0]))
    assert (settings.alpha, settings.beta) == pytest.approx(expected[0]) and cers["beam_lm"] == expected[1]
    assert cers["beam_lm"] <= min(grid.values())


def test_refitting_keeps_the_model_and_fits_the_weights(bb):
    spec = ctc_spec()
    mask = _with_lm(_ctc_mask(bb), order=5, settings=BeamSettings(beam_width=8, alpha=3.0, beta=5.0))
    log_probs = _close_calls(TEXTS, spec.vocab)
    refitted = with_refitted_weights(mask, (log_probs, TEXTS))
    assert refitted.lm is not None and refitted.lm.model is mask.lm.model and refitted.lm.settings.beam_width == 8
    assert refitted.lm.info["sentences"] == 5 and refitted.lm.info["dev_examples"] == len(TEXTS)
    assert refitted.lm.info["dev_cer_beam_lm"] < refitted.lm.info["dev_cer_greedy"]
    with pytest.raises(InvalidInputError, match="no language model"):
        with_refitted_weights(_ctc_mask(bb), (log_probs, TEXTS))


def test_only_ctc_masks_take_a_language_model(bb):
    mask = random_mask(bb.spec(), "speaker", classify_spec(), bb.default_layer_names(), 0.9)
    with pytest.raises(MaskKindError, match="CTC"):
        with_language_model(mask, TEXTS, 4, 1, BeamSettings())


def test_cli_trains_fits_and_removes_a_masks_language_model(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "bb")
    bb = load_backbone(tmp_path / "bb", local_files_only=True)
    store = DirectoryStore(tmp_path / "reg")
    store.write("fr", encode_mask(_ctc_mask(bb)))
    rows = []
    for i, (text, wave) in enumerate(zip(TEXTS, waves(4000, 4400, 4800, 5200, 5600), strict=True)):
        sf.write(tmp_path / f"u{i}.wav", wave.numpy() * 0.1, 16_000)
        rows.append(json.dumps({"audio": f"u{i}.wav", "text": text}))
    (tmp_path / "dev.jsonl").write_text("\n".join(rows) + "\n")
    common = ["lm", "--registry", str(tmp_path / "reg"), "--mask", "fr"]
    args = [*common, "--text", str(tmp_path / "dev.jsonl"), "--order", "4", "--min-count", "1", "--beam-width", "4"]
    assert main([*args, "--dev", str(tmp_path / "dev.jsonl"), "--backbone", str(tmp_path / "bb"), "--offline"]) == 0
    report = json.loads(capsys.readouterr().out)
    mask = decode_mask(store.read("fr"))
    assert mask.lm is not None and mask.lm.info["sentences"] == 5 and mask.lm.settings.beam_width == 4
    assert {"dev_cer_greedy", "dev_cer_beam_lm", "dev_cer_beam_no_lm"} <= set(mask.lm.info)
    assert mask.lm.info["dev_cer_beam_lm"] <= mask.lm.info["dev_cer_beam_no_lm"] + 1e-9  # alpha = 0.4 is on the grid
    assert report["alpha"] == mask.lm.settings.alpha and report["order"] == 4
    assert main(["inspect", str(tmp_path / "reg" / "fr.s3mask")]) == 0
    assert json.loads(capsys.readouterr().out)["language_model"]["order"] == 4
    evaluate = ["eval", "--mask", "fr", "--backbone", str(tmp_path / "bb"), "--registry", str(tmp_path / "reg"),
                "--manifest", str(tmp_path / "dev.jsonl"), "--offline"]
    assert main(evaluate) == 0
    with_lm = json.loads(capsys.readouterr().out)
    assert main([*evaluate, "--decoder", "greedy"]) == 0
    greedy = json.loads(capsys.readouterr().out)
    assert with_lm["decoder"] == "beam+lm" and "greedy" not in greedy
    assert with_lm["greedy"]["cer"] == pytest.approx(greedy["cer"])
    assert greedy["cer"] == pytest.approx(mask.lm.info["dev_cer_greedy"], abs=1e-4)
    assert with_lm["cer"] == pytest.approx(mask.lm.info["dev_cer_beam_lm"], abs=1e-4)
    model_before = mask.lm.model.grams
    dev_args = ["--dev", str(tmp_path / "dev.jsonl"), "--dev", str(tmp_path / "dev.jsonl")]
    assert main([*common, *dev_args, "--backbone", str(tmp_path / "bb"), "--offline"]) == 0  # refit only
    capsys.readouterr()
    refitted = decode_mask(store.read("fr"))
    assert refitted.lm is not None and refitted.lm.model.grams == model_before
    assert refitted.lm.info["dev_examples"] == 10 and refitted.lm.info["dev_sets"] == ["dev.jsonl", "dev.jsonl"]
    assert refitted.lm.info["sentences"] == 5 and refitted.lm.settings.beam_width == 4
    assert main([*common, "--remove"]) == 0
    assert decode_mask(store.read("fr")).lm is None
    assert main([*common, *dev_args, "--backbone", str(tmp_path / "bb"), "--offline"]) == 1
    assert "no language model to refit" in capsys.readouterr().err
    assert main(common) == 1
    assert "needs --text, --dev" in capsys.readouterr().err
    assert main(["lm", "--registry", str(tmp_path / "reg"), "--mask", "fr", "--dev", str(tmp_path / "dev.jsonl"),
                 "--text", str(tmp_path / "dev.jsonl")]) == 1
    assert "needs --backbone" in capsys.readouterr().err
