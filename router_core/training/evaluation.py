"""Dev/test metrics: CER and WER (jiwer) for transcription, accuracy for classification."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import jiwer
import torch

from router_core.heads import MaskKind
from router_core.training.manifest import Example

T = TypeVar("T")


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus-level character and word error rates (empty hypotheses count as full deletions)."""
    refs = [r if r.strip() else "-" for r in references]
    hyps = list(hypotheses)
    return {"cer": float(jiwer.cer(refs, hyps)), "wer": float(jiwer.wer(refs, hyps))}


def accuracy(references: Sequence[str], predictions: Sequence[str]) -> float:
    return sum(r == p for r, p in zip(references, predictions, strict=True)) / max(1, len(references))


def predict_in_batches(
    examples: Sequence[Example],
    predict: Callable[[list[torch.Tensor]], list[T]],
    load: Callable[[Example], torch.Tensor],
    batch_size: int = 8,
) -> list[T]:
    """``predict`` over the loaded audio of ``examples``, ``batch_size`` at a time; one result each."""
    results: list[T] = []
    for start in range(0, len(examples), batch_size):
        results.extend(predict([load(e) for e in examples[start : start + batch_size]]))
    return results


def evaluate_examples(
    examples: Sequence[Example],
    predict: Callable[[list[torch.Tensor]], list[str]],
    load: Callable[[Example], torch.Tensor],
    kind: MaskKind,
    batch_size: int = 8,
) -> dict[str, float]:
    """Run ``predict`` over ``examples`` in batches; CER/WER (ctc) or accuracy (classify)."""
    predictions = predict_in_batches(examples, predict, load, batch_size)
    references = [e.target for e in examples]
    if kind == "ctc":
        return {**error_rates(references, predictions), "examples": len(examples)}
    return {"accuracy": accuracy(references, predictions), "examples": len(examples)}
