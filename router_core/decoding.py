"""Turning head outputs into answers: CTC greedy decoding with word times, and classification.

CTC greedy: ``path[t] = argmax_v logits[t, v]``; collapse repeats, drop blanks. A word is a maximal
run of non-delimiter characters; its start is the first frame of its first character and its end the
frame after its last character, times ``seconds_per_frame``. :mod:`router_core.ctc_beam` is the
beam-search decoder (with a mask's character language model); it returns the same types.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from router_core.heads import HeadSpec


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds
    end: float  # seconds
    probability: float | None = None  # exp(mean log posterior of its characters); None: not computed


@dataclass
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float | None = None  # mean log posterior of its characters (natural log)


@dataclass
class Classification:
    label: str
    probabilities: dict[str, float]

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]


def mean_logprob(words: list[Word]) -> float | None:
    """Mean log probability of the characters of ``words`` (each word weighted by its length), when known."""
    known = [(math.log(w.probability), len(w.text)) for w in words if w.probability]
    return sum(lp * n for lp, n in known) / sum(n for _, n in known) if known else None


def is_special_token(token: str) -> bool:
    return len(token) > 2 and token.startswith("<") and token.endswith(">")


def ctc_greedy_decode(logits: torch.Tensor, spec: HeadSpec, seconds_per_frame: float) -> Transcript:
    """Greedy CTC over ``logits [T, V]`` with word start/end times in seconds."""
    path = logits.argmax(dim=-1).tolist()  # [T]
    emissions: list[tuple[int, int, int]] = []
    frame = 0
    for token_id, run in itertools.groupby(path):  # a run of one token is one emission (repeats collapse)
        length = sum(1 for _ in run)
        if token_id != spec.blank_id:
            emissions.append((token_id, frame, frame + length))
        frame += length
    return transcript_from_emissions(emissions, spec, seconds_per_frame, torch.log_softmax(logits.float(), dim=-1))


def transcript_from_emissions(
    emissions: Iterable[tuple[int, int, int]], spec: HeadSpec, seconds_per_frame: float,
    log_probs: torch.Tensor | None = None,
) -> Transcript:
    """The words of decoded tokens ``(token id, first frame, end frame)`` (end exclusive), in order; greedy
    and beam search both end here. A word is a maximal run of characters between delimiters; special
    tokens are skipped; a word spans its first character's first frame to its last character's end frame.

    With the log posteriors ``log_probs [T, V]``: a character's confidence is ``c = max_t log p_t(token)``
    over its frames; a word's probability is ``exp(mean c)`` over its characters, and the transcript's
    ``avg_logprob`` the mean ``c`` over all of them."""
    words: list[Word] = []
    chars: list[str] = []
    confidences: list[float] = []  # of the current word's characters
    every: list[float] = []
    start = end = 0

    def close() -> None:
        probability = math.exp(sum(confidences) / len(confidences)) if confidences else None
        words.append(Word("".join(chars), start * seconds_per_frame, end * seconds_per_frame, probability))

    for token_id, first, until in emissions:
        token = spec.vocab[token_id]
        if token in (spec.word_delimiter, " "):
            if chars:
                close()
                chars, confidences = [], []
            continue
        if is_special_token(token):
            continue
        if not chars:
            start = first
        chars.append(token)
        end = until
        if log_probs is not None:
            confidences.append(float(log_probs[first : max(until, first + 1), token_id].max()))
            every.append(confidences[-1])
    if chars:
        close()
    average = sum(every) / len(every) if every else None
    return Transcript(" ".join(w.text for w in words), words, average)


def classify(logits: torch.Tensor, spec: HeadSpec) -> Classification:
    """Softmax over ``logits [L]`` -> best label and every label's probability."""
    probs = torch.softmax(logits.float(), dim=-1).tolist()
    table = dict(zip(spec.labels, probs, strict=True))
    best = max(range(len(probs)), key=probs.__getitem__)
    return Classification(spec.labels[best], table)
