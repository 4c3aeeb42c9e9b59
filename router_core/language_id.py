"""Language identification by decoding: the language-ID mask proposes, the transcription masks decide.

A classification mask alone tells languages apart from pooled features; on voices it never heard it is
also overconfident (bundle v7: 0.90 on unheard voices, 17 of its 300 answers wrong at probability
>= 0.8). Transcribing with each candidate language's mask and asking how well the transcript explains
the audio, and how plausible its language model finds it, is far more reliable: the right language's
mask reads the audio into text its language model expects. Mixed-mask batches make that cheap to ask:
the candidates' masks run over the same audio in one batch, and the winner's transcript is the answer.

For candidate language ``l`` with transcript ``y_l`` of ``log_probs_l [T, V]`` (its mask's CTC output):

    score(l) = log p_ctc(y_l | x)  +  lm_weight * log P_lm_l(y_l)  +  length_bonus * |y_l|
               +  lid_weight * log P_lid(l | x)

``log p_ctc`` sums over every CTC alignment of ``y_l`` (the forward algorithm); ``log P_lm`` is the
mask's character language model over the characters it knows (0 without a model); ``|y_l|`` counts
characters, spaces included. The highest score wins. Candidates are the language-ID mask's ``top``
labels; when its best probability reaches ``confident`` it is taken as is and nothing else runs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from router_core.char_lm import CharNgramLM, sentence_tokens
from router_core.decoding import Classification, Transcript
from router_core.errors import InvalidInputError, MaskKindError, MaskNotFoundError
from router_core.heads import HeadSpec
from router_core.mask_file import RoutingMask
from router_core.registry import MaskRegistry
from router_core.router import RoutedOutput, Router


@dataclass(frozen=True)
class DecodingLanguageId:
    """How ``lang=auto`` picks a language (the weights of ``score(l)``, module docstring).

    The defaults are ``s3router fit-lid``'s best on the bundled model (v8) over its held-out-voice dev sets, a
    grid of 4,320 settings, for its language-ID head fitted by shrinkage LDA. That head's probabilities are
    sharp: on about 85% of those clips the best one rounds to exactly 1.0, so only the rest are decoded
    (``confident`` 1.0). For a softmax-probed head, whose probabilities rarely reach 1.0, 0.99 (with
    ``lid_weight`` 3) was the fit (docs/bundled-model.md)."""

    top: int = 3  # candidates tried by decoding; 1: the language-ID mask alone
    confident: float = 1.0  # the mask's best probability at which no candidate is decoded
    lm_weight: float = 1.0
    length_bonus: float = 3.0
    lid_weight: float = 0.3

    def __post_init__(self) -> None:
        if self.top < 1:
            raise InvalidInputError(f"language-ID candidates must be at least 1, not {self.top}")
        if not 0.0 < self.confident <= 1.0:
            raise InvalidInputError(f"the confident probability must be in (0, 1], not {self.confident}")

    def undecided(self, lid: Classification) -> bool:
        """Whether candidates should be decoded: ``top`` > 1 and the mask's best probability under ``confident``."""
        return self.top > 1 and lid.top(1)[0][1] < self.confident

    def candidates(self, lid: Classification, usable: Collection[str]) -> list[str]:
        """The labels to decode, best first: the mask's ``top`` labels among ``usable`` (the transcription
        masks the caller may use) when it is :meth:`undecided`, else ``[]``."""
        if not self.undecided(lid):
            return []
        return [label for label, _ in lid.top(len(lid.probabilities)) if label in usable][: self.top]

    def languages_to_transcribe(self, lid: Classification, usable: Collection[str]) -> list[str]:
        """The one rule of ``lang=auto``: the languages whose masks transcribe the clip. Two or more
        :meth:`candidates` all transcribe it, and :func:`best_candidate` picks the answer; one candidate is the
        answer; with none (the mask is confident, or nothing it proposes is usable) the mask's best label is.
        ``usable`` is only read when the mask is :meth:`undecided`."""
        candidates = self.candidates(lid, usable)
        return candidates if len(candidates) >= 2 else [candidates[0] if candidates else lid.label]


def ctc_log_likelihood(log_probs: torch.Tensor, text: str, spec: HeadSpec) -> float:
    """``log p(text | x)`` under CTC for ``log_probs [T, V]`` (log-softmaxed), summed over alignments.

    Characters outside the vocabulary are left out (they cannot have been emitted); an empty text is the
    all-blank path. ``-inf`` when the text cannot fit in ``T`` frames."""
    index = {token: i for i, token in enumerate(spec.vocab)}
    ids = [index[c] for c in sentence_tokens(text) if c in index]
    if not ids:
        return float(log_probs[:, spec.blank_id].sum())
    loss = F.ctc_loss(
        log_probs.float().unsqueeze(1),  # [T, 1, V]
        torch.tensor([ids]),
        torch.tensor([log_probs.shape[0]]),
        torch.tensor([len(ids)]),
        blank=spec.blank_id,
        reduction="sum",
    )
    return -float(loss)


def lm_log_probability(lm: CharNgramLM | None, text: str) -> float:
    """``log P(text </s>)`` over the characters ``lm`` knows (others are skipped); 0 without a model."""
    if lm is None:
        return 0.0
    state, total = lm.start, 0.0
    for char in sentence_tokens(text):
        token = lm.index.get(char)
        if token is not None:
            total += lm.score(state, token)
            state = lm.advance(state, token)
    return total + lm.score(state, lm.eos_id)


@dataclass(frozen=True)
class CandidateTerms:
    """The terms of ``score(l)`` (module docstring) for one candidate language, before weighting."""

    ctc: float  # log p_ctc(y_l | x)
    lm: float  # log P_lm_l(y_l)
    length: int  # |y_l|, characters with single spaces
    lid: float  # log P_lid(l | x), floored at log 1e-12

    def score(self, settings: DecodingLanguageId) -> float:
        return (self.ctc + settings.lm_weight * self.lm + settings.length_bonus * self.length
                + settings.lid_weight * self.lid)


def candidate_terms(mask: RoutingMask, logits: torch.Tensor, text: str, lid_probability: float) -> CandidateTerms:
    """The score terms of one candidate: ``mask``'s CTC output ``logits [T, V]`` (raw or log-softmaxed), the
    transcript it gave, and the language-ID probability of its language."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [T, V]; idempotent on log posteriors
    lm = mask.lm.model if mask.lm is not None else None
    return CandidateTerms(
        ctc=ctc_log_likelihood(log_probs, text, mask.head),
        lm=lm_log_probability(lm, text),
        length=len(" ".join(text.split())),
        lid=math.log(max(lid_probability, 1e-12)),
    )


def decide(settings: DecodingLanguageId, lid: Classification, terms: Mapping[str, CandidateTerms]) -> str:
    """The language ``lang=auto`` answers for one clip, given the score terms of every language it may decode
    (``terms``, by language; the transcription masks usable for the clip): the language-ID answer when it is
    confident or nothing else can be decoded, else the best-scoring candidate (the first of equals). What
    :func:`identify_languages` and the service decide, as a pure function (fitting the settings uses it)."""
    languages = settings.languages_to_transcribe(lid, terms)
    return max(languages, key=lambda language: terms[language].score(settings)) if len(languages) > 1 else languages[0]


def identify_languages(
    router: Router, waves: Sequence[torch.Tensor], language_mask: str, settings: DecodingLanguageId
) -> list[tuple[str, float, Transcript | None]]:
    """``lang=auto`` for a list of clips in this thread (benchmarks, evaluation): each clip's language, its
    language-ID probability and its transcript (``None`` when the language has no transcription mask). The
    candidates of every clip run as one mixed-mask batch. (The service does the same through its batcher:
    ``service.pipeline.transcriber.Transcriber.transcribe``.)"""
    lids = router.classify(waves, [language_mask] * len(waves))
    usable = set(transcription_masks(router.registry, list(lids[0].probabilities))) if lids else set()
    jobs = [(i, label) for i, lid in enumerate(lids)
            for label in settings.languages_to_transcribe(lid, usable) if label in usable]
    outs = router.forward([waves[i] for i, _ in jobs], [label for _, label in jobs], "ctc")
    per_clip: list[list[RoutedOutput]] = [[] for _ in lids]
    for (i, _), out in zip(jobs, outs, strict=True):
        per_clip[i].append(out)
    results: list[tuple[str, float, Transcript | None]] = []
    for lid, found in zip(lids, per_clip, strict=True):
        if not found:
            results.append((lid.label, lid.probabilities[lid.label], None))
            continue
        out = found[best_candidate(settings, router.registry, found, lid) if len(found) > 1 else 0]
        results.append((out.mask_name, lid.probabilities[out.mask_name], out.transcript))
    return results


def best_candidate(
    settings: DecodingLanguageId, registry: MaskRegistry, outs: Sequence[RoutedOutput], lid: Classification
) -> int:
    """Which of ``outs`` (the candidate languages' transcriptions of one piece of audio, ``lid`` its
    language-ID answer) has the highest ``score(l)``; the first of equals."""
    scores = [candidate_terms_of(registry, out, lid).score(settings) for out in outs]
    return max(range(len(scores)), key=scores.__getitem__)


def candidate_terms_of(registry: MaskRegistry, out: RoutedOutput, lid: Classification) -> CandidateTerms:
    """:func:`candidate_terms` of one transcription output of a candidate language (``lid``: the clip's answer)."""
    if out.transcript is None:  # callers ask for "ctc" outputs; never a bare assert in the service's path
        raise MaskKindError(f"mask {out.mask_name!r} did not produce a transcript")
    return candidate_terms(registry.get(out.mask_name).mask, out.logits, out.transcript.text,
                           lid.probabilities[out.mask_name])


def transcription_masks(registry: MaskRegistry, labels: Sequence[str]) -> list[str]:
    """The ``labels`` that name a transcription mask in ``registry`` (loading them, as serving them would)."""
    found = []
    for label in labels:
        try:
            if registry.get(label).kind == "ctc":
                found.append(label)
        except MaskNotFoundError:
            continue
    return found
