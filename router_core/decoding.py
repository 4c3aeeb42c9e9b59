"""Turning head outputs into answers: CTC greedy decoding with word times, and classification.

CTC greedy: ``path[t] = argmax_v logits[t, v]``; collapse repeats, drop blanks. A word is a maximal
run of non-delimiter characters; its start is the first frame of its first character and its end the
frame after its last character, times ``seconds_per_frame``. :mod:`router_core.ctc_beam` is the
beam-search decoder (with a mask's character language model); it returns the same types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from router_core.heads import HeadSpec


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds
    end: float  # seconds


@dataclass
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)


@dataclass
class Classification:
    label: str
    probabilities: dict[str, float]

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]


class CTCDecoder(Protocol):
    def __call__(self, logits: torch.Tensor, spec: HeadSpec, seconds_per_frame: float) -> Transcript: ...


def is_special_token(token: str) -> bool:
    return len(token) > 2 and token.startswith("<") and token.endswith(">")


def ctc_greedy_decode(logits: torch.Tensor, spec: HeadSpec, seconds_per_frame: float) -> Transcript:
    """Greedy CTC over ``logits [T, V]`` with word start/end times in seconds."""
    path = logits.argmax(dim=-1).tolist()  # [T]
    words: list[Word] = []
    chars: list[str] = []
    start = end = 0
    previous = -1

    def flush() -> None:
        if chars:
            words.append(Word("".join(chars), start * seconds_per_frame, end * seconds_per_frame))
            chars.clear()

    for t, token_id in enumerate(path):
        if token_id == previous:
            if chars and token_id != spec.blank_id and not is_special_token(spec.vocab[token_id]):
                end = t + 1  # a repeated character extends the current word
            continue
        previous = token_id
        if token_id == spec.blank_id:
            continue
        token = spec.vocab[token_id]
        if token in (spec.word_delimiter, " "):
            flush()
            continue
        if is_special_token(token):
            continue
        if not chars:
            start = t
        chars.append(token)
        end = t + 1
    flush()
    return Transcript(" ".join(w.text for w in words), words)


def classify(logits: torch.Tensor, spec: HeadSpec) -> Classification:
    """Softmax over ``logits [L]`` -> best label and every label's probability."""
    probs = torch.softmax(logits.float(), dim=-1).tolist()
    table = dict(zip(spec.labels, probs, strict=True))
    best = max(range(len(probs)), key=probs.__getitem__)
    return Classification(spec.labels[best], table)
