import torch

from helpers import CTC_VOCAB, classify_spec, ctc_spec
from router_core.decoding import classify, ctc_greedy_decode
from router_core.heads import HeadSpec


def _logits(path):
    out = torch.full((len(path), len(CTC_VOCAB)), -5.0)
    for t, token in enumerate(path):
        out[t, CTC_VOCAB.index(token)] = 5.0
    return out


def test_greedy_collapses_repeats_keeps_blank_separated_doubles_and_times_words():
    path = ["<pad>", "h", "h", "e", "l", "<pad>", "l", "o", "|", "|", "<pad>", "b", "e", "<pad>", "e"]
    result = ctc_greedy_decode(_logits(path), ctc_spec(), seconds_per_frame=0.02)
    assert result.text == "hello bee"
    assert [w.text for w in result.words] == ["hello", "bee"]
    hello, bee = result.words
    assert (round(hello.start, 3), round(hello.end, 3)) == (0.02, 0.16)  # frames 1..7
    assert (round(bee.start, 3), round(bee.end, 3)) == (0.22, 0.3)  # frames 11..14


def test_a_run_of_special_tokens_does_not_stretch_the_word_before_it():
    """Special tokens are skipped, however many frames they last: ``<unk>`` held after "he" used to move
    the word's end to the end of the run when it lasted two frames or more (one frame did not)."""
    spec = HeadSpec(kind="ctc", vocab=[*CTC_VOCAB, "<unk>"])
    for held in (1, 3):
        path = ["h", "e", *["<unk>"] * held, "<pad>", "|", "o", "x"]
        logits = torch.full((len(path), len(spec.vocab)), -5.0)
        for t, token in enumerate(path):
            logits[t, spec.vocab.index(token)] = 5.0
        he, ox = ctc_greedy_decode(logits, spec, seconds_per_frame=0.02).words
        assert (he.text, round(he.end, 3), ox.text) == ("he", 0.04, "ox"), held


def test_all_blank_gives_empty_transcript():
    result = ctc_greedy_decode(_logits(["<pad>"] * 5), ctc_spec(), 0.02)
    assert result.text == "" and result.words == []


def test_classification_probabilities_sum_to_one_and_pick_the_best():
    result = classify(torch.tensor([0.1, 2.0, -1.0]), classify_spec(3))
    assert result.label == "label1"
    assert abs(sum(result.probabilities.values()) - 1.0) < 1e-6
    assert result.top(2)[0][0] == "label1"


def test_word_probabilities_and_avg_logprob_come_from_the_posteriors():
    """A character's confidence is its best posterior over its frames; a word's probability the geometric
    mean of its characters'; avg_logprob the mean log confidence."""
    import math

    import pytest

    spec = HeadSpec(kind="ctc", vocab=["<pad>", "|", "a", "b"], blank_id=0)
    probs = torch.full((6, 4), 0.1)
    for t, token, p in [(0, 2, 0.7), (1, 3, 0.7), (2, 1, 0.7), (3, 2, 0.4), (4, 0, 0.7), (5, 2, 0.7)]:
        probs[t, token] = p
    transcript = ctc_greedy_decode(probs.log(), spec, 0.02)
    assert transcript.text == "ab aa"
    first, second = transcript.words
    softmax = probs.log().log_softmax(-1)
    assert first.probability == pytest.approx(math.exp((softmax[0, 2] + softmax[1, 3]).item() / 2))
    assert second.probability == pytest.approx(math.exp((softmax[3, 2] + softmax[5, 2]).item() / 2))
    assert second.probability < first.probability < 1
    expected = (softmax[0, 2] + softmax[1, 3] + softmax[3, 2] + softmax[5, 2]).item() / 4
    assert transcript.avg_logprob == pytest.approx(expected)
