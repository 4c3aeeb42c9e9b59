"""``s3router bundle pretrain``: the bundled default backbone — a tiny wav2vec2 trained from scratch.

What it is, honestly: not self-supervised. A 3.6M-parameter ``Wav2Vec2ForCTC`` (hidden 256, 4 layers,
conv feature encoder with the standard strides: 50 frames/s) is trained with **multilingual character
CTC** on espeak-ng speech of the backbone languages (one shared character vocabulary). Its encoder is
then frozen and served; every language and task is a learned mask + head on top of it, and the
held-out language never reaches the backbone. Resumable: a checkpoint is written every
``checkpoint_every`` steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, set_seed

from router_core.backbone import SAMPLE_RATE, Backbone, read_checkpoint_vocab
from router_core.errors import InvalidInputError
from router_core.heads import HeadSpec, MaskKind
from router_core.training.export import save_processor
from router_core.training.finetune import hf_forward, hf_predict
from router_core.training.learner import build_vocab, head_loss
from router_core.training.loop import LoopConfig, run_loop
from router_core.training.manifest import Example
from router_core.training.trainer import AudioCache

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    steps: int = 2400
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 300
    checkpoint_every: int = 200
    eval_every: int = 400
    seed: int = 0
    hidden: int = 256
    layers: int = 4
    progress: bool = True
    init_from: str | None = None  # continue from this Wav2Vec2ForCTC folder (fresh optimizer and schedule)
    device: str = "cpu"
    max_seconds: float | None = None  # time budget: after a few timed steps, ``steps`` shrinks to fit it


def tiny_wav2vec2_config(vocab_size: int, hidden: int = 256, layers: int = 4) -> Wav2Vec2Config:
    return Wav2Vec2Config(
        vocab_size=vocab_size,
        pad_token_id=0,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        conv_dim=(128,) * 7,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=16,
        mask_time_prob=0.05,
        layerdrop=0.0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        architectures=["Wav2Vec2ForCTC"],
    )


def _initial_model(folder: str, corpus_vocab: list[str]) -> tuple[Wav2Vec2ForCTC, list[str]]:
    """A trained checkpoint to continue from. Characters of the corpus that its vocabulary lacks are
    appended, each with a new output row of the CTC head (zero weights, the lowest bias of the others: the
    model starts out never predicting them)."""
    vocab = read_checkpoint_vocab(folder)
    if vocab is None:
        raise InvalidInputError(f"{folder}: no vocab.json to continue pretraining from")
    model = Wav2Vec2ForCTC.from_pretrained(folder, local_files_only=True)
    missing = sorted(set(corpus_vocab) - set(vocab))
    if missing:
        log.info("continuing from %s: %d new characters %s", folder, len(missing), missing)
        old = model.lm_head  # [V, D]
        head = torch.nn.Linear(old.in_features, len(vocab) + len(missing))  # [V', D]
        with torch.no_grad():
            head.weight.zero_()
            head.weight[: len(vocab)] = old.weight
            head.bias.fill_(float(old.bias.min()))
            head.bias[: len(vocab)] = old.bias
        model.lm_head = head
        model.config.vocab_size = head.out_features
        vocab = vocab + missing
    return model, vocab


class _PretrainTask:
    """Backbone pretraining as a :class:`~router_core.training.loop.TrainingTask`: AdamW on every weight with
    multilingual character CTC; the final model is the result (nothing kept at the best step)."""

    kind: MaskKind = "ctc"

    def __init__(self, model: Wav2Vec2ForCTC, spec: HeadSpec, config: PretrainConfig) -> None:
        self.module, self.spec = model, spec
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
        self.seconds_per_frame = math.prod(model.config.conv_stride) / SAMPLE_RATE
        self.load = AudioCache()

    def loss(self, batch: Sequence[Example]) -> torch.Tensor:
        outputs, frames = hf_forward(self.module, [self.load(e) for e in batch], normalize=True,
                                     use_attention_mask=True)
        return head_loss(outputs.float(), frames, [e.target for e in batch], self.spec)

    def predict(self, waves: list[torch.Tensor]) -> list[str]:
        return hf_predict(self.module, self.spec, waves, True, True, self.seconds_per_frame)

    def on_best(self, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "vocab": self.spec.vocab}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.spec.vocab = state["vocab"]


def pretrain_backbone(
    train: Sequence[Example], dev: Sequence[Example], out_dir: str | Path, work_dir: str | Path, config: PretrainConfig
) -> dict[str, Any]:
    """Train (or resume) the tiny backbone and save it as a Hugging Face checkpoint in ``out_dir``."""
    work, out = Path(work_dir), Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)  # torch, and numpy too: the model's SpecAugment time masks draw from numpy
    spec = HeadSpec(kind="ctc", vocab=build_vocab([e.target for e in train]), blank_id=0)
    if config.init_from is not None:
        model, spec.vocab = _initial_model(config.init_from, spec.vocab)
    else:
        model = Wav2Vec2ForCTC(tiny_wav2vec2_config(len(spec.vocab), config.hidden, config.layers))
    task = _PretrainTask(model.to(config.device), spec, config)  # type: ignore[arg-type]
    loop = LoopConfig("pretrain", config.steps, config.batch_size, config.eval_every, config.checkpoint_every,
                      warmup=config.warmup, cosine=True, clip_norm=5.0, max_seconds=config.max_seconds,
                      seed=config.seed, progress=config.progress)
    state = run_loop(task, train, dev, loop, work / "pretrain.pt")
    task.module.save_pretrained(out)
    probe = Backbone.from_model(Wav2Vec2ForCTC.from_pretrained(out).wav2vec2)
    save_processor(spec, probe, out)
    return {"out": str(out), "vocab": len(spec.vocab), "steps": state.step, "history": state.history[-3:],
            "parameters": sum(p.numel() for p in model.parameters())}
