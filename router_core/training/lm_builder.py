"""Giving a CTC mask a character language model: train it on text, fit its weights on dev audio.

The model is estimated by :func:`router_core.char_lm.train_char_lm` over the mask's own alphabet.
``alpha`` and ``beta`` (see :mod:`router_core.ctc_beam`) are chosen for the lowest dev CER, with the
head's log posteriors computed once: a grid, then one refinement around its best point at half the
grid's spacing. The greedy CER of the same posteriors is kept beside it, so the mask's ``lm.info`` says
what the model buys. The dev audio may pool several sets (the bundle fits on its training voices and on
voices it never trained on: the bonus ``beta`` that suits the second is larger).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from router_core.char_lm import CharNgramLM, train_char_lm
from router_core.ctc_beam import BeamSettings, LMDecoding, ctc_beam_decode
from router_core.decoding import ctc_greedy_decode, is_special_token
from router_core.errors import InvalidInputError, MaskKindError
from router_core.heads import HeadSpec
from router_core.mask_file import RoutingMask
from router_core.training.evaluation import error_rates

ALPHAS = (0.4, 0.8, 1.2, 1.6)
BETAS = (0.0, 1.0, 2.0, 3.0)


def read_texts(path: str | Path) -> list[str]:
    """Sentences from a manifest (``.jsonl``: its ``text`` field; ``.tsv``: its ``text`` column) or
    from plain text (any other file: one sentence per line). Text is used as written: normalise it the
    way the mask's training transcripts were."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"text file {path} does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        try:
            texts = [str(json.loads(line).get("text") or "") for line in lines]
        except (json.JSONDecodeError, AttributeError) as exc:
            raise InvalidInputError(f"{path}: not a JSONL manifest with a 'text' field ({exc})") from exc
    elif path.suffix == ".tsv":
        header = lines[0].split("\t") if lines else []
        if "text" not in header:
            raise InvalidInputError(f"{path}: a TSV manifest needs a 'text' column")
        column = header.index("text")
        texts = [row.split("\t")[column] for row in lines[1:] if len(row.split("\t")) > column]
    else:
        texts = lines
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InvalidInputError(f"{path} holds no text")
    return texts


def fit_weights(
    log_probs: Sequence[torch.Tensor],
    references: Sequence[str],
    spec: HeadSpec,
    lm: CharNgramLM,
    base: BeamSettings,
    alphas: Sequence[float] = ALPHAS,
    betas: Sequence[float] = BETAS,
) -> tuple[BeamSettings, dict[str, float]]:
    """The ``(alpha, beta)`` with the lowest CER over ``log_probs`` (``[T_i, V]`` each), and the CERs:
    ``greedy``, ``beam_no_lm`` and ``beam_lm`` (at the chosen weights).

    Search: every point of ``alphas x betas``; then the four neighbours of the best one at half the
    grid's spacing (``alpha +- da/2``, ``beta +- db/2``, kept where ``alpha > 0`` and ``beta >= 0``).
    Ties go to the smaller weights."""
    if not log_probs or len(log_probs) != len(references):
        raise InvalidInputError("fitting language-model weights needs dev examples with references")

    def cer(settings: BeamSettings | None, model: CharNgramLM | None) -> float:
        if settings is None:
            hyps = [ctc_greedy_decode(x, spec, 1.0).text for x in log_probs]
        else:
            hyps = [ctc_beam_decode(x, spec, 1.0, model, settings).text for x in log_probs]
        return error_rates(references, hyps)["cer"]

    def best() -> tuple[float, float]:
        return min(results, key=lambda k: (results[k], k))

    results = {(a, b): cer(replace(base, alpha=a, beta=b), lm) for a in alphas for b in betas}
    alpha, beta = best()
    for a, b in _neighbours(alpha, beta, _half_step(alphas), _half_step(betas)):
        if (a, b) not in results:
            results[(a, b)] = cer(replace(base, alpha=a, beta=b), lm)
    alpha, beta = best()
    chosen = replace(base, alpha=alpha, beta=beta)
    return chosen, {"greedy": cer(None, None), "beam_no_lm": cer(base, None), "beam_lm": results[(alpha, beta)]}


def _half_step(grid: Sequence[float]) -> float:
    """Half the smallest spacing of a grid's values (0 for a single value: nothing to refine)."""
    values = sorted(set(grid))
    return min((b - a for a, b in zip(values, values[1:], strict=False)), default=0.0) / 2


def _neighbours(alpha: float, beta: float, da: float, db: float) -> list[tuple[float, float]]:
    """The points beside ``(alpha, beta)`` at distances ``da`` and ``db`` that are valid weights."""
    points = [(alpha - da, beta), (alpha + da, beta), (alpha, beta - db), (alpha, beta + db)]
    return [(round(a, 6), round(b, 6)) for a, b in points if a > 0 and b >= 0 and (a, b) != (alpha, beta)]


def with_language_model(
    mask: RoutingMask,
    texts: Sequence[str],
    order: int,
    min_count: int,
    settings: BeamSettings,
    dev: tuple[Sequence[torch.Tensor], Sequence[str]] | None = None,
) -> RoutingMask:
    """``mask`` with a character model of ``texts`` attached; with ``dev`` (log posteriors and their
    references), ``alpha``/``beta`` are fitted on it, else ``settings`` is kept as given."""
    if mask.kind != "ctc":
        raise MaskKindError(f"mask {mask.name!r} is a {mask.kind} mask; only CTC masks take a language model")
    alphabet = [t for t in mask.head.vocab if not is_special_token(t)]
    model = train_char_lm(texts, order, alphabet, min_count)
    info: dict[str, Any] = {"sentences": len(texts), "order": order, "min_count": min_count,
                            "ngrams": len(model.grams)}
    if dev is not None:
        settings, cers = fit_weights(dev[0], dev[1], mask.head, model, settings)
        info.update(_fit_info(cers, dev[1]))
    return replace(mask, lm=LMDecoding(model, settings, info))


def with_refitted_weights(mask: RoutingMask, dev: tuple[Sequence[torch.Tensor], Sequence[str]]) -> RoutingMask:
    """``mask`` with its language model kept and ``alpha``/``beta`` fitted anew on ``dev`` (log
    posteriors and their references), starting from its own search settings (beam width, pruning)."""
    lm = require_language_model(mask)
    settings, cers = fit_weights(dev[0], dev[1], mask.head, lm.model, lm.settings)
    return replace(mask, lm=LMDecoding(lm.model, settings, {**lm.info, **_fit_info(cers, dev[1])}))


def require_language_model(mask: RoutingMask) -> LMDecoding:
    """The language model ``mask`` carries; a mask without one cannot have its weights refitted."""
    if mask.lm is None:
        raise InvalidInputError(f"mask {mask.name!r} has no language model to refit: give --text to train one")
    return mask.lm


def _fit_info(cers: dict[str, float], references: Sequence[str]) -> dict[str, Any]:
    return {**{f"dev_cer_{k}": round(v, 4) for k, v in cers.items()}, "dev_examples": len(references)}
