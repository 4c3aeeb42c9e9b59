"""A character n-gram language model for CTC beam search: interpolated Kneser-Ney, stored in backoff form.

Tokens are single characters of the CTC vocabulary, with the word delimiter (``|``) standing for a
space, plus ``</s>`` (end of sentence). Each sentence is padded on the left with ``order - 1`` ``<s>``.

Estimation (Chen & Goodman's interpolated Kneser-Ney, one discount per order). For order ``n`` and a
context ``h`` of ``n - 1`` tokens, with ``h'`` the context without its first token:

    P_n(w | h) = max(c_n(h w) - D_n, 0) / c_n(h .) + gamma(h) * P_{n-1}(w | h')
    gamma(h)   = D_n * N1+(h .) / c_n(h .)

``c_n`` is the raw count at the highest order and the continuation count (how many distinct tokens
precede ``h w``) below it; ``N1+(h .)`` is the number of distinct tokens seen after ``h``;
``D_n = n1 / (n1 + 2 n2)`` from the count-of-counts of order ``n``. ``P_0`` is uniform over the
vocabulary. A context never seen at order ``n`` leaves ``P_n = P_{n-1}``.

Backoff form (as in ARPA files): every seen ``h w`` stores ``log P_n(w | h)`` and every seen context
``h`` stores ``log gamma(h)``; then ``log P(w | h) = stored(h w)`` if present, else
``log gamma(h) + log P(w | h')`` (``log gamma = 0`` for an unseen context). That is exact for
interpolated Kneser-Ney, so ``sum_w P(w | h) = 1`` for every context. Logs are natural.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from router_core.errors import InvalidInputError

BOS = "<s>"
EOS = "</s>"
WORD_DELIMITER = "|"
MAX_ORDER = 12
MAX_TOKENS = 32767  # ids are stored as int16 at most


def sentence_tokens(text: str) -> list[str]:
    """``"le chat"`` -> ``["l", "e", "|", "c", "h", "a", "t"]`` (whitespace runs become one delimiter)."""
    return [WORD_DELIMITER if c == " " else c for c in " ".join(text.split())]


@dataclass
class CharNgramLM:
    """The model in backoff form: ``tokens`` (id order; ``tokens[0]`` is ``<s>``), ``logprob`` keyed by
    ``(context ids, token id)`` and ``backoff`` keyed by context ids (contexts of 0..order-1 tokens)."""

    order: int
    tokens: list[str]
    logprob: dict[tuple[tuple[int, ...], int], float]
    backoff: dict[tuple[int, ...], float]

    def __post_init__(self) -> None:
        if not 1 <= self.order <= MAX_ORDER:
            raise InvalidInputError(f"language model order must be 1-{MAX_ORDER}, not {self.order}")
        if not self.tokens or self.tokens[0] != BOS or EOS not in self.tokens:
            raise InvalidInputError("language model tokens must start with <s> and contain </s>")
        if len(self.tokens) > MAX_TOKENS:
            raise InvalidInputError(f"a character language model holds at most {MAX_TOKENS} tokens")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.eos_id = self.index[EOS]

    @property
    def start(self) -> tuple[int, ...]:
        """The state before the first character: ``order - 1`` ``<s>``."""
        return (0,) * (self.order - 1)

    def score(self, state: tuple[int, ...], token: int) -> float:
        """``log P(token | state)`` by backing off to shorter contexts."""
        total = 0.0
        for cut in range(len(state) + 1):
            context = state[cut:]
            stored = self.logprob.get((context, token))
            if stored is not None:
                return total + stored
            total += self.backoff.get(context, 0.0)
        raise InvalidInputError(f"token id {token} is not in the language model")  # unigram covers every token

    def advance(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        return (*state, token)[1:] if self.order > 1 else ()

    def sentence_logprob(self, text: str) -> float:
        """``log P(text </s>)``; characters outside the model's tokens raise."""
        state, total = self.start, 0.0
        for char in sentence_tokens(text):
            if char not in self.index:
                raise InvalidInputError(f"character {char!r} is not in the language model")
            total += self.score(state, self.index[char])
            state = self.advance(state, self.index[char])
        return total + self.score(state, self.eos_id)

    # -- storage as tensors (the mask file keeps them beside the head) -----------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """``ngrams`` ``[M, order]`` (context left-padded with -1, token last) with ``logprob`` float32
        ``[M]``; ``contexts`` ``[C, max(order - 1, 1)]`` (left-padded) with ``backoff`` float32 ``[C]``.
        Ids are int8 for up to 127 tokens (an alphabet), int16 beyond."""
        width = max(self.order - 1, 1)
        ids = torch.int8 if len(self.tokens) <= 127 else torch.int16
        grams = sorted(self.logprob)
        ngrams = [[-1] * (self.order - 1 - len(c)) + list(c) + [w] for c, w in grams]
        contexts = sorted(self.backoff)
        return {
            "ngrams": torch.tensor(ngrams, dtype=ids).reshape(len(grams), self.order),
            "logprob": torch.tensor([self.logprob[g] for g in grams], dtype=torch.float32),
            "contexts": torch.tensor([[-1] * (width - len(c)) + list(c) for c in contexts], dtype=ids).reshape(
                len(contexts), width
            ),
            "backoff": torch.tensor([self.backoff[c] for c in contexts], dtype=torch.float32),
        }

    @classmethod
    def from_tensors(cls, order: int, tokens: list[str], tensors: dict[str, torch.Tensor]) -> CharNgramLM:
        def unpad(row: list[int]) -> tuple[int, ...]:
            return tuple(i for i in row if i >= 0)

        try:
            ngrams, logprob = tensors["ngrams"].tolist(), tensors["logprob"].tolist()
            contexts, backoff = tensors["contexts"].tolist(), tensors["backoff"].tolist()
        except KeyError as exc:
            raise InvalidInputError(f"language model tensor {exc} is missing") from exc
        if len(ngrams) != len(logprob) or len(contexts) != len(backoff):
            raise InvalidInputError("language model tensors disagree in length")
        width = (max(order - 1, 1),)
        if tuple(tensors["ngrams"].shape[1:]) != (order,) or tuple(tensors["contexts"].shape[1:]) != width:
            raise InvalidInputError(f"language model tensors do not hold order-{order} n-grams")
        if any(i >= len(tokens) for row in ngrams for i in row):
            raise InvalidInputError("language model n-gram refers to a token it does not have")
        table = {(unpad(row[:-1]), row[-1]): p for row, p in zip(ngrams, logprob, strict=True)}
        bows = {unpad(row) if order > 1 else (): b for row, b in zip(contexts, backoff, strict=True)}
        return cls(order, list(tokens), table, bows)


def _discount(counts: Iterable[int]) -> float:
    histogram = Counter(c for c in counts if c <= 2)
    n1, n2 = histogram[1], histogram[2]
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


def train_char_lm(
    texts: Sequence[str], order: int, alphabet: Sequence[str] | None = None, min_count: int = 1
) -> CharNgramLM:
    """Estimate an interpolated Kneser-Ney character model of ``order`` from ``texts``.

    ``min_count`` > 1 prunes n-grams of three or more tokens whose (raw or continuation) count is
    below it, then recomputes the backoff weights of their contexts so that every context still
    sums to one (SRILM's count cutoffs): ``gamma(h) = (1 - sum_kept P(w | h)) / (1 - sum_kept P(w | h'))``.

    ``alphabet`` (for example the CTC vocabulary's characters) fixes the tokens: characters outside it
    are dropped from the text, and characters in it that the text never shows still get the uniform
    share of probability. Without it the tokens are the characters the text shows.
    """
    if not 1 <= order <= MAX_ORDER:
        raise InvalidInputError(f"language model order must be 1-{MAX_ORDER}, not {order}")
    sentences = [sentence_tokens(t) for t in texts]
    seen = sorted({c for s in sentences for c in s})
    chars = sorted(set(alphabet)) if alphabet is not None else seen
    chars = [c for c in chars if c not in (BOS, EOS)]
    tokens = [BOS, *chars, EOS]
    index = {t: i for i, t in enumerate(tokens)}
    if not any(sentences):
        raise InvalidInputError("no text to train a language model on")
    # raw counts of the highest order: {(context, w): count}
    top: Counter[tuple[tuple[int, ...], int]] = Counter()
    for sentence in sentences:
        ids = [0] * (order - 1) + [index[c] for c in sentence if c in index] + [index[EOS]]
        for i in range(order - 1, len(ids)):
            top[(tuple(ids[i - order + 1 : i]), ids[i])] += 1
    # counts per order (index = context length): raw at the top, continuation counts below
    by_order: list[Counter[tuple[tuple[int, ...], int]]] = [Counter() for _ in range(order)]
    by_order[order - 1] = top
    for n in range(order - 1, 0, -1):
        for context, w in by_order[n]:
            by_order[n - 1][(context[1:], w)] += 1
    vocab = len(tokens) - 1  # every token but <s> can be predicted
    logprob: dict[tuple[tuple[int, ...], int], float] = {}
    backoff: dict[tuple[int, ...], float] = {}
    lower: dict[tuple[tuple[int, ...], int], float] = {}  # P_{n-1} of the entries above, filled per order
    for n, counts in enumerate(by_order):
        discount = _discount(counts.values())
        totals: dict[tuple[int, ...], int] = defaultdict(int)
        kinds: dict[tuple[int, ...], int] = defaultdict(int)
        for (context, _), c in counts.items():
            totals[context] += c
            kinds[context] += 1
        gammas = {h: discount * kinds[h] / totals[h] for h in totals}
        probs = {}
        for (context, w), c in counts.items():
            # every lower-order entry of a seen n-gram is seen too, so ``lower`` always has it
            below = 1.0 / vocab if n == 0 else lower[(context[1:], w)]
            probs[(context, w)] = max(c - discount, 0) / totals[context] + gammas[context] * below
        if n == 0:  # tokens the text never shows keep the uniform share
            for w in range(1, len(tokens)):
                probs.setdefault(((), w), gammas[()] / vocab)
        lower = probs
        logprob.update({g: math.log(p) for g, p in probs.items()})
        backoff.update({h: math.log(g) for h, g in gammas.items() if g > 0})
        if min_count > 1 and n >= 2:
            pruned = [g for g, c in counts.items() if c < min_count]
            for g in pruned:
                del logprob[g]
    model = CharNgramLM(order, tokens, logprob, backoff)
    if min_count > 1:
        _renormalize(model)
    return model


def _renormalize(model: CharNgramLM) -> None:
    """Recompute every context's backoff weight from the n-grams still stored, shortest contexts
    first (each context's weight needs its lower orders final)."""
    kept: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for context, w in model.logprob:
        kept[context].append(w)
    for context in sorted(model.backoff, key=len):
        if not context:
            continue
        words = kept.get(context)
        if not words:  # all its n-grams pruned: every token backs off, with weight 1
            del model.backoff[context]
            continue
        numerator = 1.0 - sum(math.exp(model.logprob[(context, w)]) for w in words)
        denominator = 1.0 - sum(math.exp(model.score(context[1:], w)) for w in words)
        if numerator > 0.0 and denominator > 0.0:  # else every token is seen after it: nothing backs off
            model.backoff[context] = math.log(numerator / denominator)
