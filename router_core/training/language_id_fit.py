"""Fitting ``lang=auto``'s decision (:class:`~router_core.language_id.DecodingLanguageId`) to a set of masks.

How far to trust the language-ID mask, and how to weigh a candidate's CTC likelihood, language-model score,
length and language-ID probability, depends on the masks: a head fitted by shrinkage LDA gives probabilities
that round to 1.0 on most clips, a softmax-probed one rarely does. So the settings are fitted on labelled
clips of voices the masks were not trained on:

1. :func:`collect_terms`: every clip is classified by the language-ID mask and transcribed once by *every*
   transcription mask among its labels (one mixed-mask batch per chunk of clips); the unweighted terms of
   ``score(l)`` are kept per clip and language.
2. :func:`fit_decision`: every setting of a grid is scored by :func:`~router_core.language_id.decide`, the
   very function the service's decision matches, over those terms. Nothing is decoded again, so a grid of
   thousands of settings costs seconds.

The best setting has the highest accuracy; among equals, the one that decodes the fewest candidates (each
decoded clip costs ``top`` transcription items), then the first in grid order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from router_core.decoding import Classification
from router_core.errors import InvalidInputError
from router_core.language_id import (
    CandidateTerms,
    DecodingLanguageId,
    candidate_terms_of,
    decide,
    transcription_masks,
)
from router_core.router import Router


@dataclass(frozen=True)
class ClipTerms:
    """One labelled clip: its language-ID answer and the score terms of every language it could be decoded in."""

    truth: str
    lid: Classification
    terms: dict[str, CandidateTerms]  # by language: every transcription mask among the language-ID labels


@dataclass(frozen=True)
class DecisionGrid:
    """The settings tried: every combination of these values."""

    top: tuple[int, ...] = (2, 3, 6)
    confident: tuple[float, ...] = (0.99, 0.999, 0.9999, 1.0)
    lm_weight: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    length_bonus: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
    lid_weight: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3, 1.0, 2.0, 3.0, 5.0)

    def settings(self) -> Iterator[DecodingLanguageId]:
        for top, confident, lm_weight, length_bonus, lid_weight in itertools.product(
            self.top, self.confident, self.lm_weight, self.length_bonus, self.lid_weight
        ):
            yield DecodingLanguageId(top, confident, lm_weight, length_bonus, lid_weight)

    def __len__(self) -> int:
        return len(self.top) * len(self.confident) * len(self.lm_weight) * len(self.length_bonus) * len(self.lid_weight)


@dataclass(frozen=True)
class DecisionScore:
    """How a setting did over a set of clips."""

    settings: DecodingLanguageId
    accuracy: float
    decoded: float  # share of clips whose candidates were decoded

    def as_dict(self) -> dict[str, object]:
        s = self.settings
        return {"top": s.top, "confident": s.confident, "lm_weight": s.lm_weight, "length_bonus": s.length_bonus,
                "lid_weight": s.lid_weight, "accuracy": self.accuracy, "decoded": self.decoded}


def collect_terms(
    router: Router, waves: Sequence[torch.Tensor], truths: Sequence[str], language_mask: str, batch_size: int = 8,
    progress: bool = False,
) -> list[ClipTerms]:
    """Each clip classified by ``language_mask`` and transcribed by every transcription mask among its labels,
    ``batch_size`` clips at a time (``batch_size`` x languages items per batch): step 1 of the module
    docstring. ``truths``: each clip's language; ``progress``: a progress bar (clips)."""
    from tqdm.auto import tqdm

    if len(waves) != len(truths):
        raise InvalidInputError(f"{len(waves)} clips but {len(truths)} labels")
    clips: list[ClipTerms] = []
    bar = tqdm(total=len(waves), disable=not progress, desc="clips transcribed in every language")
    for start in range(0, len(waves), batch_size):
        chunk = list(waves[start:start + batch_size])
        lids = router.classify(chunk, [language_mask] * len(chunk))
        languages = transcription_masks(router.registry, list(lids[0].probabilities))
        outs = router.forward([w for w in chunk for _ in languages], [lang for _ in chunk for lang in languages], "ctc")
        # (no transcription mask among the labels: no outputs, and every clip is answered by the mask alone)
        for i, lid in enumerate(lids):
            mine = outs[i * len(languages):(i + 1) * len(languages)]
            terms = {out.mask_name: candidate_terms_of(router.registry, out, lid) for out in mine}
            clips.append(ClipTerms(truths[start + i], lid, terms))
        bar.update(len(chunk))
    bar.close()
    return clips


def score_decision(settings: DecodingLanguageId, clips: Sequence[ClipTerms]) -> DecisionScore:
    """Accuracy of ``settings`` over ``clips``, and the share of clips it decodes."""
    if not clips:
        raise InvalidInputError("no clips to score the language-ID decision on")
    right = sum(decide(settings, c.lid, c.terms) == c.truth for c in clips)
    decoded = sum(len(settings.candidates(c.lid, set(c.terms))) > 1 for c in clips)
    return DecisionScore(settings, right / len(clips), decoded / len(clips))


def fit_decision(clips: Sequence[ClipTerms], grid: DecisionGrid | None = None) -> list[DecisionScore]:
    """Every setting of ``grid`` scored over ``clips``, best first (see the module docstring for the order)."""
    scores = [score_decision(settings, clips) for settings in (grid or DecisionGrid()).settings()]

    def rank(i: int) -> tuple[float, float, int]:  # accuracy first, then candidates decoded per clip, then grid order
        return -scores[i].accuracy, scores[i].decoded * scores[i].settings.top, i

    order = sorted(range(len(scores)), key=rank)
    return [scores[i] for i in order]


def mask_alone(clips: Sequence[ClipTerms]) -> DecisionScore:
    """The language-ID mask's own answers (``top`` 1: nothing decoded)."""
    return score_decision(DecodingLanguageId(top=1), clips)
