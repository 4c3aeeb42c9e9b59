"""The trainable part of mask learning: scores + head over a frozen backbone, and their losses.

CTC loss: ``L = CTC(log_softmax(h W^T + b), y)`` over each item's valid frames (blank = ``blank_id``).
Classification: ``L = CE(pool(h) W^T + b, y)`` over the valid frames (pooling in :mod:`router_core.heads`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from router_core.backbone import Backbone, PretrainedCTCHead
from router_core.char_lm import WORD_DELIMITER, sentence_tokens
from router_core.decoding import ctc_greedy_decode
from router_core.errors import InvalidInputError
from router_core.heads import HeadSpec, OutputHead, masked_mean
from router_core.maskable import weight_transform
from router_core.training.manifest import Example
from router_core.training.probe import fit_probe
from router_core.training.scores import ScoreMasks

SPECIAL_TOKENS = ("<pad>", "<unk>")


def build_vocab(texts: Sequence[str]) -> list[str]:
    """``<pad>`` (blank, id 0), ``<unk>``, ``|`` (word delimiter), then every character seen, sorted."""
    chars = sorted({c for t in texts for c in t if not c.isspace()} - {WORD_DELIMITER})
    return [*SPECIAL_TOKENS, WORD_DELIMITER, *chars]


def ctc_head_for(
    head: PretrainedCTCHead, train: Sequence[Example]
) -> tuple[list[str], tuple[torch.Tensor, torch.Tensor]]:
    """A CTC head started from a checkpoint's ``lm_head``: its vocabulary plus any new characters of the
    training transcripts; rows of known tokens are copied, new ones start small and random.
    Returns (vocabulary, (weight ``[V, D]``, bias ``[V]``))."""
    known = head.vocab or []
    extra = [t for t in build_vocab([e.target for e in train]) if t not in known]
    vocab = [*known, *extra]
    weight = torch.randn(len(vocab), head.weight.shape[1]) * 0.02
    bias = torch.zeros(len(vocab))
    weight[: len(known)] = head.weight.float().cpu()[: len(known)]
    bias[: len(known)] = head.bias.float().cpu()[: len(known)]
    return vocab, (weight, bias)


def encode_text(text: str, vocab: Sequence[str]) -> list[int]:
    """Characters to ids; spaces become the word delimiter, unknown characters ``<unk>``."""
    index = {tok: i for i, tok in enumerate(vocab)}
    unk = index.get("<unk>")
    ids = []
    for token in sentence_tokens(text):
        if token in index:
            ids.append(index[token])
        elif unk is not None:
            ids.append(unk)
        else:
            raise InvalidInputError(f"character {token!r} is not in the vocabulary")
    return ids


class MaskLearner(nn.Module):
    """Scores for the chosen maskable layers plus an output head; the backbone stays frozen outside."""

    def __init__(
        self,
        backbone: Backbone,
        head: HeadSpec,
        layers: Sequence[str],
        keep_ratio: float,
        init: str = "weight_rank",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.__dict__["backbone"] = backbone  # not a submodule: frozen, never synced or saved here
        self.head_spec = head
        torch.manual_seed(seed)
        self.scores = ScoreMasks({n: backbone.layers[n].weight for n in layers}, keep_ratio, init, seed)
        self.head = OutputHead(head, backbone.hidden_size, backbone.num_hidden_states).to(backbone.device)
        self.scores.to(backbone.device)

    def forward(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Head outputs (float32): per frame ``[B, T, V]`` (CTC) or per item ``[B, L]`` (classification);
        and frame lengths ``[B]``."""
        backbone: Backbone = self.__dict__["backbone"]
        with weight_transform(self.scores):
            hidden, frames = backbone.encode_with_grad(waves, self.head_spec.all_layers)  # [(S + 1,) B, T, D], [B]
        return self.head(hidden.float(), frames), frames

    def loss(self, outputs: torch.Tensor, frames: torch.Tensor, targets: Sequence[str]) -> torch.Tensor:
        return head_loss(outputs, frames, targets, self.head_spec)

    def probe_head(self, batches: Iterable[tuple[list[torch.Tensor], list[str]]], method: str = "softmax",
                   shrinkage: float = 0.3) -> float:
        """Classification: fit the head by linear probing (:func:`router_core.training.probe.fit_probe`) on the pooled
        features of these batches of (training waveforms, labels) under the initial mask; returns the
        probe's training accuracy."""
        backbone: Backbone = self.__dict__["backbone"]
        index = {label: i for i, label in enumerate(self.head_spec.labels)}
        pooled, labels = [], []
        with torch.no_grad(), weight_transform(self.scores):
            for waves, targets in batches:
                hidden, frames = backbone.encode_with_grad(waves, self.head_spec.all_layers)
                pooled.append(self.head.pooled(hidden.float(), frames))  # [B, F]
                labels += [index[t] for t in targets]
        return fit_probe(self.head, torch.cat(pooled), torch.tensor(labels, device=pooled[0].device),
                         method=method, shrinkage=shrinkage)


def pooled_logits(outputs: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Class logits ``[B, L]``: as given, or the mean over each item's valid frames of per-frame logits
    ``[B, T, L]`` (a linear head on mean-pooled states; what the HF classification models compute)."""
    return outputs if outputs.dim() == 2 else masked_mean(outputs, frames)


def decode_outputs(outputs: torch.Tensor, frames: torch.Tensor, spec: HeadSpec, seconds_per_frame: float) -> list[str]:
    """Head outputs (per frame ``[B, T, O]``, or per item ``[B, L]``) -> one answer per item: greedy CTC
    text or best label."""
    if spec.kind == "classify":
        return [spec.labels[i] for i in pooled_logits(outputs, frames).argmax(dim=-1).tolist()]
    return [
        ctc_greedy_decode(outputs[i, : int(frames[i])].cpu(), spec, seconds_per_frame).text
        for i in range(outputs.shape[0])
    ]


def head_loss(outputs: torch.Tensor, frames: torch.Tensor, targets: Sequence[str], spec: HeadSpec) -> torch.Tensor:
    if spec.kind == "classify":
        index = {label: i for i, label in enumerate(spec.labels)}
        try:
            labels = torch.tensor([index[t] for t in targets], device=outputs.device)
        except KeyError as exc:
            raise InvalidInputError(f"label {exc.args[0]!r} is not one of the head's labels") from exc
        return F.cross_entropy(pooled_logits(outputs, frames), labels)
    ids = [encode_text(t, spec.vocab) for t in targets]
    log_probs = F.log_softmax(outputs, dim=-1).transpose(0, 1)  # [T, B, V]
    flat = torch.tensor([i for seq in ids for i in seq], dtype=torch.long)
    lengths = torch.tensor([len(seq) for seq in ids], dtype=torch.long)
    return F.ctc_loss(log_probs, flat, frames.cpu(), lengths, blank=spec.blank_id, zero_infinity=True)
