"""Language ID by decoding (router_core.language_id): the CTC likelihood against brute force, the language
model score, which candidates are tried, and the decision on a tiny router whose language-ID mask is wrong."""

import itertools
import math

import pytest
import torch

from helpers import CTC_VOCAB, ctc_spec, tiny_backbone, unsure_language_masks
from router_core.char_lm import train_char_lm
from router_core.decoding import Classification
from router_core.errors import InvalidInputError
from router_core.kernels.backend import select_backend
from router_core.language_id import (
    DecodingLanguageId,
    ctc_log_likelihood,
    identify_languages,
    lm_log_probability,
    transcription_masks,
)
from router_core.registry import DirectoryStore, MaskRegistry
from router_core.router import Router


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
