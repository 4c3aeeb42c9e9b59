import math
import random
from collections import Counter

import pytest
import torch

from router_core.char_lm import BOS, EOS, CharNgramLM, sentence_tokens, train_char_lm
from router_core.errors import InvalidInputError

TEXTS = ["le chat dort", "le chien dort", "la chatte mange", "un chat mange le pain", "le pain est bon",
         "il dort dans le lit", "elle mange un pain", "le lit est grand"]


def _kn_oracle(texts, order):
    """Interpolated Kneser-Ney written straight from its definition (recursive, no backoff form)."""
    tokens = [BOS, *sorted({c for t in texts for c in sentence_tokens(t)}), EOS]
    index = {t: i for i, t in enumerate(tokens)}
    top = Counter()
    for t in texts:
        ids = [0] * (order - 1) + [index[c] for c in sentence_tokens(t)] + [index[EOS]]
        for i in range(order - 1, len(ids)):
            top[tuple(ids[i - order + 1 : i + 1])] += 1
    counts = {order: top}
    for n in range(order - 1, 0, -1):  # continuation counts: distinct left extensions
        counts[n] = Counter(g[1:] for g in counts[n + 1])

    def discount(n):
        h = Counter(counts[n].values())
        return h[1] / (h[1] + 2 * h[2]) if h[1] and h[2] else 0.5

    def prob(context, w):
        n = len(context) + 1
        if n == 1:
            total = sum(counts[1].values())
            return max(counts[1][(w,)] - discount(1), 0) / total + discount(1) * len(counts[1]) / total / (
                len(tokens) - 1
            )
        seen = {g: c for g, c in counts[n].items() if g[:-1] == context}
        if not seen:
            return prob(context[1:], w)
        total = sum(seen.values())
        gamma = discount(n) * len(seen) / total
        return max(seen.get((*context, w), 0) - discount(n), 0) / total + gamma * prob(context[1:], w)

    return tokens, prob


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_backoff_form_equals_interpolated_kneser_ney(order):
    lm = train_char_lm(TEXTS, order)
    tokens, prob = _kn_oracle(TEXTS, order)
    assert lm.tokens == tokens
    rng = random.Random(order)
    contexts = [(0,) * (order - 1)] + [
        tuple(rng.randrange(len(tokens) - 1) for _ in range(order - 1)) for _ in range(15)
    ]
    contexts += [tuple(rng.randrange(len(tokens) - 1) for _ in range(n)) for n in range(order - 1)]  # shorter ones
    for text in TEXTS[:3]:  # contexts the text really has, reached by advancing the packed state
        state, ids = lm.start, [0] * (order - 1)
        for c in sentence_tokens(text):
            state, ids = lm.advance(state, lm.index[c]), (ids + [lm.index[c]])[1:] if order > 1 else []
            assert lm.unpack(state) == tuple(ids)
            contexts.append(tuple(ids))
    for context in contexts:
        assert lm.unpack(lm.pack(context)) == context
        for w in range(1, len(tokens)):
            assert lm.score(lm.pack(context), w) == pytest.approx(math.log(prob(context, w)), abs=1e-9)


@pytest.mark.parametrize("order,min_count", [(1, 1), (3, 1), (6, 1), (6, 2), (8, 3)])
def test_every_context_sums_to_one_with_and_without_pruning(order, min_count):
    lm = train_char_lm(TEXTS * 3 + ["le lit du chat"], order, min_count=min_count)
    rng = random.Random(0)
    seen = [(0,) * (order - 1 - len(c)) + c for c in lm.backoff_table() if len(c) == order - 1]
    unseen = [tuple(rng.randrange(len(lm.tokens) - 1) for _ in range(order - 1)) for _ in range(10)]
    for context in (seen[:40] + unseen) or [()]:
        total = sum(math.exp(lm.score(lm.pack(context), w)) for w in range(1, len(lm.tokens)))
        assert total == pytest.approx(1.0, abs=1e-9)


def test_pruning_drops_rare_ngrams_and_keeps_frequent_ones():
    full, pruned = train_char_lm(TEXTS, 5).ngram_table(), train_char_lm(TEXTS, 5, min_count=2)
    kept = pruned.ngram_table()
    assert len(kept) < len(full) and set(kept) <= set(full)
    assert {g for g in full if len(g[0]) < 2} <= set(kept)  # unigrams and bigrams stay
    le = tuple(pruned.index[c] for c in "le|")
    assert (le[:2], le[2]) in kept or ((0, *le[:2]), le[2]) in kept


def test_the_model_prefers_text_like_its_training_text():
    lm = train_char_lm(TEXTS, 6)
    assert lm.sentence_logprob("le chat dort") > lm.sentence_logprob("le chta dort")
    assert lm.sentence_logprob("le pain") > lm.sentence_logprob("el pian")


def test_alphabet_fixes_the_tokens():
    lm = train_char_lm(TEXTS, 3, alphabet=["|", "a", "e", "l", "z"])
    assert lm.tokens == [BOS, "a", "e", "l", "z", "|", EOS]  # sorted: "|" after the letters
    z = lm.score(lm.start, lm.index["z"])  # never in the text: the uniform share only
    assert -math.inf < z < lm.score(lm.start, lm.index["l"])
    with pytest.raises(InvalidInputError, match="not in the language model"):
        lm.sentence_logprob("chat")


@pytest.mark.parametrize("alphabet_size,dtype", [(40, torch.int8), (300, torch.int16)])
def test_tensors_round_trip_exactly(alphabet_size, dtype):
    alphabet = ["|", *"abcdefghijklmnopqrstuvwxyz"] + [chr(0x400 + i) for i in range(alphabet_size - 27)]
    lm = train_char_lm(TEXTS, 4, alphabet=alphabet, min_count=2)
    tensors = lm.to_tensors()
    assert tensors["ngrams"].dtype == dtype and tensors["ngrams"].shape == (len(lm.grams), 4)
    back = CharNgramLM.from_tensors(4, lm.tokens, tensors)
    assert back.contexts.keys() == lm.contexts.keys() and back.grams.keys() == lm.grams.keys()
    assert () in lm.backoff_table()  # the empty context (all padding in the tensor) round-trips too
    for key, value in lm.grams.items():
        assert back.grams[key] == pytest.approx(value, rel=1e-6)  # stored as float32
    unigram = CharNgramLM.from_tensors(1, *(lambda m: (m.tokens, m.to_tensors()))(train_char_lm(TEXTS, 1)))
    assert unigram.score(0, unigram.index["e"]) == pytest.approx(train_char_lm(TEXTS, 1).score(0, unigram.index["e"]))


def test_bad_orders_text_and_tensors_are_refused():
    with pytest.raises(InvalidInputError, match="order"):
        train_char_lm(TEXTS, 0)
    with pytest.raises(InvalidInputError, match="order"):
        train_char_lm(TEXTS, 13)
    with pytest.raises(InvalidInputError, match="no text"):
        train_char_lm(["", "  "], 3)
    lm = train_char_lm(TEXTS, 3)
    tensors = lm.to_tensors()
    with pytest.raises(InvalidInputError, match="order-4"):
        CharNgramLM.from_tensors(4, lm.tokens, tensors)
    with pytest.raises(InvalidInputError, match="does not have"):
        CharNgramLM.from_tensors(3, lm.tokens[:5], tensors)
    with pytest.raises(InvalidInputError, match="missing"):
        CharNgramLM.from_tensors(3, lm.tokens, {"ngrams": tensors["ngrams"]})
    # ids the packing could not tell apart: padding inside a row, a padded token, ids below -1
    for where, bad in ((("ngrams", 5, 1), -1), (("ngrams", 5, 2), -1), (("contexts", 7, 1), -3)):
        (name, row, col), value = where, bad
        broken = {k: v.clone() for k, v in tensors.items()}
        broken[name][row] = torch.tensor([1, 2, 3][: broken[name].shape[1]], dtype=broken[name].dtype)
        broken[name][row, col] = value
        with pytest.raises(InvalidInputError, match="does not have"):
            CharNgramLM.from_tensors(3, lm.tokens, broken)
    with pytest.raises(InvalidInputError, match="<s>"):
        CharNgramLM(3, ["a", EOS], {}, {})
