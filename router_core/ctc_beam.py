"""CTC prefix beam search with an optional character language model (shallow fusion).

For a prefix ``y`` after frame ``t`` the search keeps ``p_b(y)`` (paths ending in blank) and
``p_nb(y)`` (paths ending in ``y``'s last token), in logs (Hannun et al., 2014). With per-frame log
posteriors ``a[t, v]`` and ``p(y) = p_b(y) + p_nb(y)``:

* blank:                    ``p_b'(y)     += p(y) * a[t, blank]``
* repeat of the last token: ``p_nb'(y)    += p_nb(y) * a[t, last]``
* new token ``c``:          ``p_nb'(y + c) += (p_b(y) if c == last else p(y)) * a[t, c]``

Beams are ranked by ``log p(y) + alpha * log P_lm(y) + beta * |y|`` (``|y|`` counts characters,
word delimiters included) and the best ``beam_width`` survive each frame. At the end the language
model also scores ``</s>``. Per frame, only tokens within ``token_prune`` (log) of the frame's best
token, at most ``max_candidates`` of them, are tried. With no language model (``alpha = beta = 0``)
and an unbounded beam this is the exact most probable labelling; greedy decoding only approximates it.

A token spans from the frame that emitted it (the frame that created its prefix, moved later when a
later emission outweighs all the prefix held before) to the last frame where repeating it outweighed
a blank; a word ends one frame after its last token's span, as in greedy decoding.
"""

from __future__ import annotations

import functools
import heapq
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from router_core.char_lm import WORD_DELIMITER, CharNgramLM
from router_core.decoding import Transcript, is_special_token, transcript_from_emissions
from router_core.errors import DeadlineExceededError, InvalidInputError
from router_core.heads import HeadSpec

NEG_INF = float("-inf")


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


MAX_BEAM_WIDTH = 512  # a beam wider than this costs seconds per second of audio
MAX_CANDIDATES = 64
DEADLINE_CHECK_FRAMES = 8


@dataclass(frozen=True)
class BeamSettings:
    """Search width and language-model weights (``alpha`` scales ``log P_lm``, ``beta`` is a
    per-character bonus that offsets the model's preference for short outputs)."""

    beam_width: int = 32
    alpha: float = 0.8
    beta: float = 1.0
    token_prune: float = 8.0
    max_candidates: int = 8

    def __post_init__(self) -> None:
        if self.beam_width < 1 or self.max_candidates < 1 or self.token_prune <= 0:
            raise InvalidInputError(f"beam width, candidates and prune must be positive: {self}")
        if self.beam_width > MAX_BEAM_WIDTH or self.max_candidates > MAX_CANDIDATES:
            raise InvalidInputError(f"a beam of at most {MAX_BEAM_WIDTH} prefixes and {MAX_CANDIDATES} candidates "
                                    f"per frame is served (a wider one costs minutes per clip): {self}")


@dataclass
class LMDecoding:
    """What a CTC mask carries for beam search: its language model, the search settings tuned with
    it, and ``info`` (how it was built and what it measured, for people)."""

    model: CharNgramLM
    settings: BeamSettings
    info: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {"order": self.model.order, "tokens": self.model.tokens, **asdict(self.settings), "info": self.info}


class _Prefixes:
    """A trie of prefixes: node 0 is the empty prefix; each node stores its parent, token, the frames
    its token spans, its language-model state and its accumulated fusion score."""

    def __init__(self, lm_start: int) -> None:
        self.parent = [-1]
        self.token = [-1]
        self.frame = [0]
        self.until = [0]
        self.lm_state = [lm_start]
        self.fusion = [0.0]
        self.children: dict[tuple[int, int], int] = {}

    def child(self, node: int, token: int, frame: int, state: int, fusion: float) -> int:
        """Add the new prefix ``node + token``."""
        self.parent.append(node)
        self.token.append(token)
        self.frame.append(frame)
        self.until.append(frame)
        self.lm_state.append(state)
        self.fusion.append(fusion)
        self.children[(node, token)] = len(self.parent) - 1
        return len(self.parent) - 1

    def path(self, node: int) -> list[int]:
        nodes = []
        while node > 0:
            nodes.append(node)
            node = self.parent[node]
        return nodes[::-1]


def ctc_beam_decode(
    logits: torch.Tensor,
    spec: HeadSpec,
    seconds_per_frame: float,
    lm: CharNgramLM | None = None,
    settings: BeamSettings | None = None,
    deadline: float | None = None,
) -> Transcript:
    """Prefix beam search over ``logits [T, V]`` (raw or log-softmaxed), fused with ``lm`` if given, until
    ``deadline`` at most (:func:`_check_deadline`)."""
    settings = settings or BeamSettings()
    alpha, beta = (settings.alpha, settings.beta) if lm is not None else (0.0, 0.0)
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [T, V]
    lm_ids = _lm_ids(spec, lm)
    trie = _Prefixes(lm.start if lm is not None else 0)  # (a packed LM state; 0 without a model)
    lm_cache: dict[tuple[int, int], float] = {}
    blank = spec.blank_id
    beams: dict[int, tuple[float, float]] = {0: (0.0, NEG_INF)}  # node -> (log p_b, log p_nb)
    top_values, top_ids = log_probs.topk(min(settings.max_candidates + 1, log_probs.shape[1]), dim=-1)
    rows = zip(log_probs.tolist(), top_values.tolist(), top_ids.tolist(), strict=True)
    for t, (frame, values, ids) in enumerate(rows):
        _check_deadline(deadline, t, log_probs.shape[0])
        candidates = _candidates(values, ids, blank, settings)
        # prefix -> [log p_b, log p_nb] after this frame; a prefix not in the trie yet is keyed by
        # (parent, token) and becomes a node only if it survives the cut (most never do)
        step: dict[int | tuple[int, int], list[float]] = {}
        pending: dict[tuple[int, int], tuple[int, float]] = {}  # -> (LM state, fusion score)

        def add(key: int | tuple[int, int], which: int, value: float, step: dict = step) -> None:
            entry = step.setdefault(key, [NEG_INF, NEG_INF])
            entry[which] = _logaddexp(entry[which], value)

        for node, (p_b, p_nb) in beams.items():
            total = _logaddexp(p_b, p_nb)
            add(node, 0, total + frame[blank])
            last = trie.token[node]
            if last >= 0:
                add(node, 1, p_nb + frame[last])
                if p_nb + frame[last] > total + frame[blank]:
                    trie.until[node] = t  # the last token is held through this frame
            for value, token in candidates:
                emitted = (p_b if token == last else total) + value
                child = trie.children.get((node, token))
                if child is None:  # (each beam reaches each of its children once per frame)
                    pending[(node, token)] = _fused(trie, node, token, lm, lm_ids, lm_cache, alpha, beta)
                    add((node, token), 1, emitted)
                    continue
                held = beams.get(child)
                if held is None or emitted > _logaddexp(*held):
                    trie.frame[child] = trie.until[child] = t  # its best path emits the token now
                add(child, 1, emitted)

        beams = {}
        ranked = heapq.nlargest(settings.beam_width, step.items(), key=functools.partial(_rank, trie, pending))
        for key, (p_b, p_nb) in ranked:
            node = key if isinstance(key, int) else trie.child(*key, t, *pending[key])
            beams[node] = (p_b, p_nb)

    best = max(beams, key=lambda node: _final_score(node, beams[node], trie, lm, alpha))
    return _transcript(trie, best, spec, seconds_per_frame, log_probs)


def _check_deadline(deadline: float | None, frame: int, frames: int) -> None:
    """:class:`DeadlineExceededError` once ``deadline`` (``time.monotonic()``, one clock for every process
    of the machine) has passed, looked at every :data:`DEADLINE_CHECK_FRAMES` frames: a search nobody waits
    for any more stops instead of holding its worker."""
    if deadline is not None and frame % DEADLINE_CHECK_FRAMES == 0 and time.monotonic() > deadline:
        raise DeadlineExceededError(f"the beam search passed its deadline at frame {frame} of {frames}")


def _rank(trie: _Prefixes, pending: dict, item: tuple) -> float:
    """How a prefix after this frame ranks for the cut: its probability plus its language-model fusion."""
    key, (p_b, p_nb) = item
    return _logaddexp(p_b, p_nb) + (trie.fusion[key] if isinstance(key, int) else pending[key][1])


def _candidates(values: list[float], ids: list[int], blank: int, settings: BeamSettings) -> list[tuple[float, int]]:
    """A frame's tokens worth trying: ``(log p, id)`` of its best non-blank tokens within ``token_prune``
    of its best token, at most ``max_candidates`` (``values``/``ids``: its top tokens, best first)."""
    floor = values[0] - settings.token_prune
    return [(v, c) for v, c in zip(values, ids, strict=True) if c != blank and v >= floor][: settings.max_candidates]


def _final_score(
    node: int, probs: tuple[float, float], trie: _Prefixes, lm: CharNgramLM | None, alpha: float
) -> float:
    """A surviving prefix's score at the end: ``log p(y) + fusion + alpha * log P_lm(</s> | y)``."""
    end = alpha * lm.score(trie.lm_state[node], lm.eos_id) if lm is not None else 0.0
    return _logaddexp(*probs) + trie.fusion[node] + end


def _lm_ids(spec: HeadSpec, lm: CharNgramLM | None) -> list[int | None]:
    """The language model's id for each vocabulary token (``None``: special tokens, unknown chars)."""
    if lm is None:
        return [None] * len(spec.vocab)
    out: list[int | None] = []
    for token in spec.vocab:
        key = WORD_DELIMITER if token in (spec.word_delimiter, " ") else token
        out.append(None if is_special_token(token) else lm.index.get(key))
    return out


def _fused(
    trie: _Prefixes,
    node: int,
    token: int,
    lm: CharNgramLM | None,
    lm_ids: list[int | None],
    cache: dict[tuple[int, int], float],
    alpha: float,
    beta: float,
) -> tuple[int, float]:
    """The language-model state and fusion score of the prefix ``node + token``."""
    state = trie.lm_state[node]
    fusion = trie.fusion[node]
    lm_token = lm_ids[token]
    if lm is not None and lm_token is not None:  # a token the model cannot score (<unk>) keeps state, no bonus
        key = (state, lm_token)
        score = cache.get(key)
        if score is None:
            score = cache[key] = lm.score(state, lm_token)
        fusion += alpha * score + beta
        state = lm.advance(state, lm_token)
    return state, fusion


def _transcript(
    trie: _Prefixes, node: int, spec: HeadSpec, seconds_per_frame: float, log_probs: torch.Tensor
) -> Transcript:
    """The prefix ``node`` as words: each token spans its emitting frame through the last frame it held.

    A token's emitting frame can move later after its successors were emitted (a later path to the same
    prefix won), so times are made consistent from the end backwards: a token starts no later than the
    next one, and ends after it starts and no later than the next one starts (never a word ending before
    it begins)."""
    emissions: list[tuple[int, int, int]] = []
    next_start = None
    for n in reversed(trie.path(node)):
        first, end = trie.frame[n], trie.until[n] + 1
        if next_start is not None:
            first, end = min(first, next_start), min(end, max(next_start, first + 1))
        end = max(end, first + 1)
        emissions.append((trie.token[n], first, end))
        next_start = first
    return transcript_from_emissions(emissions[::-1], spec, seconds_per_frame, log_probs)
