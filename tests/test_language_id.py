"""Language ID by decoding (router_core.language_id): the CTC likelihood against brute force, the language
model score, which candidates are tried, and the decision on a tiny router whose language-ID mask is wrong."""

import itertools
import json
import math

import pytest
import soundfile as sf
import torch

from helpers import CTC_VOCAB, ctc_spec, tiny_backbone, tiny_model, unsure_language_masks
from router_core.backbone import load_backbone
from router_core.char_lm import train_char_lm
from router_core.decoding import Classification
from router_core.errors import InvalidInputError
from router_core.kernels.backend import select_backend
from router_core.language_id import (
    CandidateTerms,
    DecodingLanguageId,
    ctc_log_likelihood,
    decide,
    identify_languages,
    lm_log_probability,
    transcription_masks,
)
from router_core.mask_file import decode_mask
from router_core.registry import DirectoryStore, MaskRegistry
from router_core.router import Router
from router_core.training.language_id_fit import (
    ClipTerms,
    DecisionGrid,
    collect_terms,
    fit_decision,
    mask_alone,
    score_decision,
)
from service.cli import main
from service.settings import ServiceSettings


def _collapse(path: tuple[int, ...], blank: int) -> list[int]:
    return [token for token, _ in itertools.groupby(path) if token != blank]


@pytest.mark.parametrize("text", ["", "a", "aa", "ab", "a b"])
def test_ctc_log_likelihood_sums_every_alignment(text):
    """Brute force over all V^T paths of a 5-frame, 4-token output: the paths that collapse to the text."""
    spec = ctc_spec()
    spec.vocab = ["<pad>", "|", "a", "b"]
    log_probs = torch.log_softmax(torch.randn(5, 4, generator=torch.Generator().manual_seed(3)), dim=-1)  # [T, V]
    target = [spec.vocab.index("|" if c == " " else c) for c in text]
    total = sum(math.exp(sum(float(log_probs[t, v]) for t, v in enumerate(path)))
                for path in itertools.product(range(4), repeat=5) if _collapse(path, 0) == target)
    assert ctc_log_likelihood(log_probs, text, spec) == pytest.approx(math.log(total), rel=1e-5)


def test_ctc_log_likelihood_leaves_out_characters_outside_the_vocabulary():
    spec = ctc_spec()
    log_probs = torch.log_softmax(torch.randn(8, len(CTC_VOCAB)), dim=-1)
    assert ctc_log_likelihood(log_probs, "ab€", spec) == pytest.approx(ctc_log_likelihood(log_probs, "ab", spec))


def test_lm_score_matches_the_model_and_skips_unknown_characters():
    lm = train_char_lm(["le chat dort", "le chien court", "la table"], order=4)
    assert lm_log_probability(lm, "le chat") == pytest.approx(lm.sentence_logprob("le chat"))
    assert lm_log_probability(lm, "le ch€at") == pytest.approx(lm.sentence_logprob("le chat"))
    assert lm_log_probability(None, "anything") == 0.0


def test_candidates_are_the_best_usable_labels_unless_the_mask_is_confident():
    lid = Classification("fr", {"fr": 0.5, "de": 0.3, "pt": 0.15, "it": 0.05})
    picker = DecodingLanguageId(top=2, confident=0.9)
    assert picker.candidates(lid, {"fr", "de", "pt", "it"}) == ["fr", "de"]
    assert picker.candidates(lid, {"fr", "pt", "it"}) == ["fr", "pt"]  # no de mask (or not allowed)
    assert DecodingLanguageId(top=1).candidates(lid, {"fr", "de"}) == []
    assert DecodingLanguageId(top=3, confident=0.5).candidates(lid, {"fr", "de"}) == []
    with pytest.raises(InvalidInputError):
        DecodingLanguageId(top=0)
    with pytest.raises(InvalidInputError):
        DecodingLanguageId(confident=0.0)


def test_lang_auto_has_one_rule_for_what_transcribes_a_clip():
    """Two or more candidates all transcribe the clip; one candidate is the answer; with none (confident, or
    nothing usable) the mask's best label is; the service, identify_languages and decide all ask this."""
    unsure = Classification("fr", {"fr": 0.5, "de": 0.3, "it": 0.2})
    sure = Classification("fr", {"fr": 1.0, "de": 0.0, "it": 0.0})
    picker = DecodingLanguageId(top=3, confident=0.99)
    assert picker.languages_to_transcribe(unsure, {"fr", "de", "it"}) == ["fr", "de", "it"]
    assert picker.languages_to_transcribe(unsure, {"de"}) == ["de"]  # e.g. the key may use de alone
    assert picker.languages_to_transcribe(unsure, set()) == ["fr"]
    assert picker.languages_to_transcribe(sure, {"fr", "de"}) == ["fr"]
    assert DecodingLanguageId(top=1).languages_to_transcribe(unsure, {"de", "it"}) == ["fr"]


@pytest.fixture
def unsure_router(tmp_path):
    bb = tiny_backbone()
    registry = MaskRegistry(DirectoryStore(tmp_path), bb.spec(), budget_bytes=64 * 2**20)
    for data in unsure_language_masks(bb):
        registry.put(data)
    return Router(bb, registry, select_backend("cpu", "cpu"))


def test_decoding_overrules_a_language_id_mask_that_leans_the_wrong_way(unsure_router):
    waves = [torch.randn(16_000, generator=torch.Generator().manual_seed(i)) * 0.1 for i in range(3)]
    mask_alone = unsure_router.classify(waves, ["language"] * 3)
    assert [c.label for c in mask_alone] == ["fr"] * 3
    decided = identify_languages(unsure_router, waves, "language", DecodingLanguageId())
    assert [(label, text.text) for label, _, text in decided] == [("de", "")] * 3
    assert decided[0][1] == pytest.approx(mask_alone[0].probabilities["de"])
    alone = identify_languages(unsure_router, waves, "language", DecodingLanguageId(top=1))
    assert [(label, text.text) for label, _, text in alone] == [("fr", "x")] * 3


def test_a_language_without_a_transcription_mask_is_identified_and_not_transcribed(unsure_router):
    unsure_router.registry.delete("de")
    waves = [torch.randn(16_000, generator=torch.Generator().manual_seed(1)) * 0.1]
    assert [(label, text.text) for label, _, text in  # the one candidate left
            identify_languages(unsure_router, waves, "language", DecodingLanguageId())] == [("fr", "x")]
    unsure_router.registry.delete("fr")
    assert [(label, text) for label, _, text in
            identify_languages(unsure_router, waves, "language", DecodingLanguageId())] == [("fr", None)]


def test_only_transcription_masks_are_candidates(unsure_router):
    assert transcription_masks(unsure_router.registry, ["fr", "language", "xx", "de"]) == ["fr", "de"]


def _clips(n=3):
    return [torch.randn(16_000, generator=torch.Generator().manual_seed(i)) * 0.1 for i in range(n)]


@pytest.mark.parametrize("settings", [DecodingLanguageId(), DecodingLanguageId(top=1),
                                      DecodingLanguageId(confident=0.5), DecodingLanguageId(lid_weight=1e4)])
def test_the_pure_decision_is_what_identify_languages_answers(unsure_router, settings):
    """decide() over terms collected once (what fit-lid scores) answers as the router path does, which serves."""
    waves = _clips()
    clips = collect_terms(unsure_router, waves, ["de"] * 3, "language", batch_size=2)
    assert [sorted(c.terms) for c in clips] == [["de", "fr"]] * 3  # every transcription mask, not only candidates
    served = [label for label, _, _ in identify_languages(unsure_router, waves, "language", settings)]
    assert [decide(settings, c.lid, c.terms) for c in clips] == served
    assert served == (["fr"] * 3 if settings.top == 1 or settings.confident <= 0.55 or settings.lid_weight > 1e3
                      else ["de"] * 3)


def test_fitting_finds_the_decision_the_masks_need(unsure_router):
    """The language-ID mask says fr on every clip and decoding says de: labelled de, the fit must decode."""
    clips = collect_terms(unsure_router, _clips(), ["de"] * 3, "language")
    assert mask_alone(clips).accuracy == 0.0
    ranked = fit_decision(clips)
    assert len(ranked) == len(DecisionGrid()) and ranked[0].accuracy == 1.0 and ranked[0].decoded == 1.0
    assert ranked[0].settings.top == 2  # as right as 3 or 6 candidates, and fewer items decoded
    fitted = [label for label, _, _ in identify_languages(unsure_router, _clips(), "language", ranked[0].settings)]
    assert fitted == ["de"] * 3


def _terms(ctc_right: float, ctc_wrong: float) -> dict[str, CandidateTerms]:
    return {"fr": CandidateTerms(ctc_right, 0.0, 5, math.log(0.995)),
            "de": CandidateTerms(ctc_wrong, 0.0, 5, math.log(0.005))}


def test_among_equally_right_settings_the_fit_decodes_least():
    """A mask right at p = 0.995 and transcription scores that lean wrong: trusting the mask at 0.99 is right
    and decodes nothing; decoding everything is right only with a heavy language-ID weight, so it ranks after."""
    lid = Classification("fr", {"fr": 0.995, "de": 0.005})
    clips = [ClipTerms("fr", lid, _terms(-20.0, -10.0 - i)) for i in range(4)]
    grid = DecisionGrid(top=(3, 2), confident=(1.0, 0.99), lm_weight=(1.0,), length_bonus=(0.0,), lid_weight=(0.0, 5.0))
    ranked = fit_decision(clips, grid)
    assert [(s.settings.top, s.settings.confident, s.settings.lid_weight, s.accuracy, s.decoded) for s in ranked] == [
        (3, 0.99, 0.0, 1.0, 0.0), (3, 0.99, 5.0, 1.0, 0.0), (2, 0.99, 0.0, 1.0, 0.0), (2, 0.99, 5.0, 1.0, 0.0),
        (2, 1.0, 5.0, 1.0, 1.0), (3, 1.0, 5.0, 1.0, 1.0), (2, 1.0, 0.0, 0.0, 1.0), (3, 1.0, 0.0, 0.0, 1.0),
    ]
    with pytest.raises(InvalidInputError):
        score_decision(DecodingLanguageId(), [])


def test_clips_without_a_transcription_mask_are_answered_by_the_mask_alone(unsure_router):
    unsure_router.registry.delete("de")
    unsure_router.registry.delete("fr")
    clips = collect_terms(unsure_router, _clips(2), ["fr", "de"], "language")
    assert [c.terms for c in clips] == [{}, {}]
    scored = score_decision(DecodingLanguageId(), clips)
    assert (scored.accuracy, scored.decoded) == (0.5, 0.0)


def test_collect_terms_refuses_unlabelled_clips(unsure_router):
    with pytest.raises(InvalidInputError, match="3 clips but 2 labels"):
        collect_terms(unsure_router, _clips(), ["de", "de"], "language")


def _unsure_files(tmp_path) -> list[str]:
    """The unsure masks' backbone and registry on disk, and manifest rows of clips labelled de."""
    tiny_model().save_pretrained(tmp_path / "bb")
    bb = load_backbone(tmp_path / "bb", local_files_only=True)
    store = DirectoryStore(tmp_path / "reg")
    for data in unsure_language_masks(bb):
        store.write(decode_mask(data).name, data)
    rows = []
    for i, wave in enumerate(_clips()):
        sf.write(tmp_path / f"c{i}.wav", wave.numpy(), 16_000)
        rows.append(json.dumps({"audio": f"c{i}.wav", "label": "de"}))
    return rows


@pytest.mark.parametrize("environment, accuracy", [({}, 1.0), ({"S3R_LID_CANDIDATES": "1"}, 0.0)])
def test_eval_decide_decides_with_the_services_settings(tmp_path, capsys, monkeypatch, environment, accuracy):
    """``s3router eval --decide`` answers as the service would with the same S3R_LID_* settings: by default
    decoding picks de; with one candidate the mask alone answers fr."""
    (tmp_path / "dev.jsonl").write_text("\n".join(_unsure_files(tmp_path)) + "\n")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(["eval", "--backbone", str(tmp_path / "bb"), "--registry", str(tmp_path / "reg"), "--offline",
                 "--mask", "language", "--decide", "--manifest", str(tmp_path / "dev.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == accuracy


def test_fit_lid_cli_prints_settings_the_service_takes(tmp_path, capsys):
    rows = _unsure_files(tmp_path)
    (tmp_path / "dev.jsonl").write_text("\n".join(rows[:2]) + "\n")  # two sets, pooled
    (tmp_path / "dev_everyday.jsonl").write_text("\n".join(rows[2:]) + "\n")
    assert main(["fit-lid", "--backbone", str(tmp_path / "bb"), "--registry", str(tmp_path / "reg"), "--offline",
                 "--manifest", str(tmp_path / "dev.jsonl"), "--manifest", str(tmp_path / "dev_everyday.jsonl"),
                 "--show", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips"] == 3 and report["mask_alone"] == 0.0 and len(report["best"]) == 3
    assert report["best"][0]["accuracy"] == 1.0 and report["defaults"]["accuracy"] == 1.0
    fitted = {name.removeprefix("S3R_").lower(): value for name, value in report["settings"].items()}
    picker = ServiceSettings(**fitted).language_picker()  # every name is a real setting
    assert picker == ranked_settings(report["best"][0])


def ranked_settings(row: dict) -> DecodingLanguageId:
    return DecodingLanguageId(row["top"], row["confident"], row["lm_weight"], row["length_bonus"], row["lid_weight"])
