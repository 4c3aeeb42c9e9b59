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
    """The model in backoff form, compact for serving: every token sequence is one integer.

    ``pack((i_1, ..., i_L))`` writes the ids oldest first as base-``2**bits`` digits ``i + 1`` (never 0,
    so a sequence's length is implicit and every sequence has its own integer; the newest id is the
    lowest digit). ``grams`` maps ``pack(context + (w,))`` to ``log P_n(w | context)``, ``contexts``
    maps ``pack(context)`` to ``log gamma(context)``. A state (the last ``order - 1`` tokens) is a
    packed integer too, so scoring backs off by masking low digits instead of building tuples: about
    half the memory of tuple keys, and a model loads from its tensors in a few vectorised steps.
    ``tokens[0]`` is ``<s>``.
    """

    order: int
    tokens: list[str]
    grams: dict[int, float]
    contexts: dict[int, float]

    def __post_init__(self) -> None:
        if not 1 <= self.order <= MAX_ORDER:
            raise InvalidInputError(f"language model order must be 1-{MAX_ORDER}, not {self.order}")
        if not self.tokens or self.tokens[0] != BOS or EOS not in self.tokens:
            raise InvalidInputError("language model tokens must start with <s> and contain </s>")
        if len(self.tokens) > MAX_TOKENS:
            raise InvalidInputError(f"a character language model holds at most {MAX_TOKENS} tokens")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.eos_id = self.index[EOS]
        self.bits = len(self.tokens).bit_length()  # digits 1..len(tokens)
        self._suffix = [(1 << (self.bits * n)) - 1 for n in range(self.order)]  # the last n digits

    @classmethod
    def from_tables(
        cls,
        order: int,
        tokens: list[str],
        logprob: dict[tuple[tuple[int, ...], int], float],
        backoff: dict[tuple[int, ...], float],
    ) -> CharNgramLM:
        """From tuple-keyed tables: ``{(context ids, id): log P}`` and ``{context ids: log gamma}``."""
        bits = len(tokens).bit_length()
        return cls(
            order,
            list(tokens),
            {_pack((*c, w), bits): p for (c, w), p in logprob.items()},
            {_pack(c, bits): b for c, b in backoff.items()},
        )

    def pack(self, ids: Sequence[int]) -> int:
        """The integer of a token-id sequence (a context or a state)."""
        return _pack(ids, self.bits)

    def unpack(self, key: int) -> tuple[int, ...]:
        """The token ids of a packed sequence, oldest first."""
        ids: list[int] = []
        digit_mask = (1 << self.bits) - 1
        while key:
            ids.append((key & digit_mask) - 1)
            key >>= self.bits
        return tuple(reversed(ids))

    @property
    def start(self) -> int:
        """The state before the first character: ``order - 1`` ``<s>``."""
        return self.pack((0,) * (self.order - 1))

    def score(self, state: int, token: int) -> float:
        """``log P(token | state)`` by backing off to shorter contexts (``state``: a packed context)."""
        total = 0.0
        digit = token + 1
        for length in range(-(-state.bit_length() // self.bits), -1, -1):  # the state's digits, then fewer
            context = state & self._suffix[length]
            stored = self.grams.get((context << self.bits) | digit)
            if stored is not None:
                return total + stored
            total += self.contexts.get(context, 0.0)
        raise InvalidInputError(f"token id {token} is not in the language model")  # unigram covers every token

    def advance(self, state: int, token: int) -> int:
        """The state after ``token``: the last ``order - 1`` tokens."""
        return ((state << self.bits) | (token + 1)) & self._suffix[self.order - 1]

    def sentence_logprob(self, text: str) -> float:
        """``log P(text </s>)``; characters outside the model's tokens raise."""
        state, total = self.start, 0.0
        for char in sentence_tokens(text):
            if char not in self.index:
                raise InvalidInputError(f"character {char!r} is not in the language model")
            total += self.score(state, self.index[char])
            state = self.advance(state, self.index[char])
        return total + self.score(state, self.eos_id)

    def ngram_table(self) -> dict[tuple[tuple[int, ...], int], float]:
        """``{(context ids, id): log P}``: the stored n-grams as tuples (for inspection and storage)."""
        return {(ids[:-1], ids[-1]): p for ids, p in ((self.unpack(g), p) for g, p in self.grams.items())}

    def backoff_table(self) -> dict[tuple[int, ...], float]:
        """``{context ids: log gamma}``: the stored backoff weights as tuples."""
        return {self.unpack(c): b for c, b in self.contexts.items()}

    # -- storage as tensors (the mask file keeps them beside the head) -----------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """``ngrams`` ``[M, order]`` (context left-padded with -1, token last) with ``logprob`` float32
        ``[M]``; ``contexts`` ``[C, max(order - 1, 1)]`` (left-padded) with ``backoff`` float32 ``[C]``.
        Ids are int8 for up to 127 tokens (an alphabet), int16 beyond."""
        width = max(self.order - 1, 1)
        ids = torch.int8 if len(self.tokens) <= 127 else torch.int16
        table, bows = self.ngram_table(), self.backoff_table()
        grams = sorted(table)
        ngrams = [[-1] * (self.order - 1 - len(c)) + list(c) + [w] for c, w in grams]
        contexts = sorted(bows)
        return {
            "ngrams": torch.tensor(ngrams, dtype=ids).reshape(len(grams), self.order),
            "logprob": torch.tensor([table[g] for g in grams], dtype=torch.float32),
            "contexts": torch.tensor([[-1] * (width - len(c)) + list(c) for c in contexts], dtype=ids).reshape(
                len(contexts), width
            ),
            "backoff": torch.tensor([bows[c] for c in contexts], dtype=torch.float32),
        }

    @classmethod
    def from_tensors(cls, order: int, tokens: list[str], tensors: dict[str, torch.Tensor]) -> CharNgramLM:
        try:
            ngrams, logprob = tensors["ngrams"], tensors["logprob"]
            contexts, backoff = tensors["contexts"], tensors["backoff"]
        except KeyError as exc:
            raise InvalidInputError(f"language model tensor {exc} is missing") from exc
        if len(ngrams) != len(logprob) or len(contexts) != len(backoff):
            raise InvalidInputError("language model tensors disagree in length")
        if tuple(ngrams.shape[1:]) != (order,) or tuple(contexts.shape[1:]) != (max(order - 1, 1),):
            raise InvalidInputError(f"language model tensors do not hold order-{order} n-grams")
        bits = len(tokens).bit_length()
        gram_keys = _pack_rows(ngrams, len(tokens), bits, "n-gram", empty_rows=False)
        context_keys = (
            _pack_rows(contexts, len(tokens), bits, "context", empty_rows=True) if order > 1 else [0] * len(backoff)
        )
        return cls(
            order,
            list(tokens),
            dict(zip(gram_keys, logprob.tolist(), strict=True)),
            dict(zip(context_keys, backoff.tolist(), strict=True)),
        )


def _pack(ids: Sequence[int], bits: int) -> int:
    key = 0
    for i in ids:
        key = (key << bits) | (i + 1)
    return key


def _pack_rows(rows: torch.Tensor, n_tokens: int, bits: int, what: str, empty_rows: bool) -> list[int]:
    """:func:`_pack` of every row of ``rows`` ``[M, W]`` (ids left-padded with -1), checked: ids below the
    number of tokens, padding only on the left, and (unless ``empty_rows``: the empty context) a last
    column that is an id, not padding."""
    rows = rows.long()  # [M, W]
    if rows.numel() and (
        bool((rows >= n_tokens).any())
        or bool((rows < -1).any())
        or bool(((rows[:, 1:] == -1) & (rows[:, :-1] != -1)).any())
        or (not empty_rows and bool((rows[:, -1] < 0).any()))
    ):
        raise InvalidInputError(f"language model {what} refers to a token it does not have")
    if bits * rows.shape[1] <= 62:  # fits int64: one vectorised pass
        shifts = bits * torch.arange(rows.shape[1] - 1, -1, -1)  # [W], the newest id lowest
        return ((rows + 1) << shifts).sum(dim=1).tolist()
    return [_pack([i for i in row if i >= 0], bits) for row in rows.tolist()]


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
    by_order = _counts_by_order(sentences, index, order)
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
    model = CharNgramLM.from_tables(order, tokens, logprob, backoff)
    if min_count > 1:
        _renormalize(model)
    return model


def _counts_by_order(
    sentences: list[list[str]], index: dict[str, int], order: int
) -> list[Counter[tuple[tuple[int, ...], int]]]:
    """``{(context ids, id): count}`` per order (list index = context length): raw counts at the highest
    order, continuation counts (distinct tokens seen before) below. Each sentence is padded on the left
    with ``order - 1`` ``<s>`` (id 0) and ends with ``</s>``; characters outside ``index`` are dropped."""
    top: Counter[tuple[tuple[int, ...], int]] = Counter()
    for sentence in sentences:
        ids = [0] * (order - 1) + [index[c] for c in sentence if c in index] + [index[EOS]]
        for i in range(order - 1, len(ids)):
            top[(tuple(ids[i - order + 1 : i]), ids[i])] += 1
    by_order: list[Counter[tuple[tuple[int, ...], int]]] = [Counter() for _ in range(order)]
    by_order[order - 1] = top
    for n in range(order - 1, 0, -1):
        for context, w in by_order[n]:
            by_order[n - 1][(context[1:], w)] += 1
    return by_order


def _renormalize(model: CharNgramLM) -> None:
    """Recompute every context's backoff weight from the n-grams still stored, shortest contexts
    first (each context's weight needs its lower orders final). Keys are packed (see
    :class:`CharNgramLM`): an n-gram's context is its key without the lowest digit, and a context
    without its oldest token keeps its lower digits."""
    bits, digit = model.bits, (1 << model.bits) - 1
    kept: dict[int, list[int]] = defaultdict(list)
    for key in model.grams:
        kept[key >> bits].append((key & digit) - 1)
    for context in sorted(model.contexts, key=int.bit_length):  # fewer digits first
        if not context:
            continue
        words = kept.get(context)
        if not words:  # all its n-grams pruned: every token backs off, with weight 1
            del model.contexts[context]
            continue
        shorter = context & model._suffix[-(-context.bit_length() // bits) - 1]  # without the oldest token
        numerator = 1.0 - sum(math.exp(model.grams[(context << bits) | (w + 1)]) for w in words)
        denominator = 1.0 - sum(math.exp(model.score(shorter, w)) for w in words)
        if numerator > 0.0 and denominator > 0.0:  # else every token is seen after it: nothing backs off
            model.contexts[context] = math.log(numerator / denominator)
