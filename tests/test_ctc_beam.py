import itertools
import math
from collections import defaultdict

import pytest
import torch

from router_core.char_lm import train_char_lm
from router_core.ctc_beam import MAX_BEAM_WIDTH, MAX_CANDIDATES, BeamSettings, ctc_beam_decode
from router_core.decoding import ctc_greedy_decode
from router_core.errors import InvalidInputError
from router_core.heads import HeadSpec

SPEC = HeadSpec(kind="ctc", vocab=["<pad>", "<unk>", "|", "a", "b", "e", "h", "t"], blank_id=0)
WIDE = BeamSettings(beam_width=MAX_BEAM_WIDTH, token_prune=1e9, max_candidates=MAX_CANDIDATES)  # exact at 5 frames


def _collapse(path, blank=0):
    out, previous = [], None
    for token in path:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return tuple(out)


def _best_labelling(log_probs, spec):
    """Exact: sum every alignment's probability per labelling, return the best labelling's text."""
    totals = defaultdict(float)
    T, V = log_probs.shape
    for path in itertools.product(range(V), repeat=T):
        totals[_collapse(path, spec.blank_id)] += math.exp(sum(log_probs[t, v].item() for t, v in enumerate(path)))
    best = max(totals, key=totals.get)
    words = "".join(" " if spec.vocab[i] == "|" else spec.vocab[i] for i in best).split()
    return " ".join(words)


@pytest.mark.parametrize("seed", range(6))
def test_without_a_language_model_it_finds_the_exact_most_probable_labelling(seed):
    spec = HeadSpec(kind="ctc", vocab=["<pad>", "|", "a", "b"], blank_id=0)
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(5, 4, generator=g) * 1.5, dim=-1)  # [T, V]: 364 prefixes at most
    assert ctc_beam_decode(log_probs, spec, 0.02, None, WIDE).text == _best_labelling(log_probs, spec)


def _peaked(tokens, spec=SPEC, sharp=8.0):
    """Logits whose frame ``t`` strongly prefers ``tokens[t]`` (a vocabulary string)."""
    logits = torch.zeros(len(tokens), len(spec.vocab))
    for t, token in enumerate(tokens):
        logits[t, spec.vocab.index(token)] = sharp
    return logits  # [T, V]


def test_on_confident_frames_it_agrees_with_greedy_words_and_times():
    frames = ["<pad>", "t", "t", "h", "<pad>", "e", "|", "|", "b", "<pad>", "e", "e", "t", "<pad>"]
    logits = _peaked(frames)
    greedy = ctc_greedy_decode(logits, SPEC, 0.02)
    beam = ctc_beam_decode(logits, SPEC, 0.02, None, BeamSettings(beam_width=4))
    assert beam.text == greedy.text == "the bet"
    assert [(w.text, w.start, w.end) for w in beam.words] == [(w.text, w.start, w.end) for w in greedy.words]


def test_a_repeated_letter_needs_a_blank_between():
    logits = _peaked(["<pad>", "b", "<pad>", "e", "e", "<pad>", "e", "t"])  # "be" + blank + "et"
    assert ctc_beam_decode(logits, SPEC, 0.02, None, BeamSettings(beam_width=8)).text == "beet"


def _ambiguous():
    """'th?': at the third letter, 'a' is slightly ahead of 'e' acoustically."""
    logits = _peaked(["t", "h", "a", "<pad>"])
    logits[2, SPEC.vocab.index("e")] = 7.7
    return logits


def test_the_language_model_overrules_a_close_acoustic_call():
    lm = train_char_lm(["the bet", "the hat", "the the", "bet the"], 4, alphabet=SPEC.vocab[2:])
    logits = _ambiguous()
    assert ctc_greedy_decode(logits, SPEC, 0.02).text == "tha"
    assert ctc_beam_decode(logits, SPEC, 0.02, None, BeamSettings()).text == "tha"
    assert ctc_beam_decode(logits, SPEC, 0.02, lm, BeamSettings(alpha=1.0, beta=0.0)).text == "the"
    # with no weight on the model the acoustics win again
    assert ctc_beam_decode(logits, SPEC, 0.02, lm, BeamSettings(alpha=0.0, beta=0.0)).text == "tha"


def test_beta_rewards_length():
    logits = _peaked(["t", "h", "e", "<pad>"])
    logits[2, SPEC.vocab.index("<pad>")] = 7.0  # dropping the 'e' is nearly as likely acoustically
    lm = train_char_lm(["th", "the"], 3, alphabet=SPEC.vocab[2:])
    short = ctc_beam_decode(logits, SPEC, 0.02, lm, BeamSettings(alpha=1.0, beta=-5.0)).text
    long = ctc_beam_decode(logits, SPEC, 0.02, lm, BeamSettings(alpha=1.0, beta=5.0)).text
    assert (short, long) == ("th", "the")


def test_special_tokens_never_reach_the_text():
    logits = _peaked(["t", "<unk>", "<pad>", "h", "e"])
    lm = train_char_lm(["the"], 3, alphabet=SPEC.vocab[2:])
    assert ctc_beam_decode(logits, SPEC, 0.02, lm, BeamSettings()).text == "the"
    assert ctc_beam_decode(_peaked(["<pad>"] * 3), SPEC, 0.02, lm, BeamSettings()).text == ""


def test_bad_settings_are_refused():
    for bad in ({"beam_width": 0}, {"max_candidates": 0}, {"token_prune": 0.0}):
        with pytest.raises(InvalidInputError, match="positive"):
            BeamSettings(**bad)


def test_word_times_are_ordered_and_never_end_before_they_start():
    """A token's emitting frame can move later after its successors were emitted (a later path to the
    same prefix won); the words must still start before they end, and start and end in order. Random,
    flat posteriors with a language model make such paths common (seen on real speech: a word 0.14 s
    long that ended before it started)."""
    lm = train_char_lm(["the bet", "the hat", "a tab", "bet the hat"], 4, alphabet=SPEC.vocab[2:])
    checked = 0
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        logits = (0.8 * torch.randn(60, len(SPEC.vocab), generator=gen)).log_softmax(-1)  # [T, V]
        words = ctc_beam_decode(logits, SPEC, 0.02, lm, BeamSettings(alpha=1.0, beta=1.5)).words
        assert all(w.start < w.end for w in words), words
        pairs = list(zip(words, words[1:], strict=False))
        assert all(a.start <= b.start and a.end <= b.end for a, b in pairs), words
        checked += len(words)
    assert checked > 40
