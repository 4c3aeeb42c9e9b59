"""Mask learning: Adam on scores + head in the shared loop (:mod:`router_core.training.loop`), the best
dev step's mask and head kept, resumable.

Distributed (``torchrun``): with ``distributed=True`` the learner is wrapped in DDP (scores and head
gradients are all-reduced), each rank draws batches from its own shard, and rank 0 evaluates,
checkpoints and returns the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from router_core.audio import load_audio_file
from router_core.backbone import Backbone
from router_core.errors import S3RouterError, UnsupportedAudioError
from router_core.heads import HeadSpec, MaskKind, folded_projection
from router_core.kernels.bits import pack_bits, unpack_bits
from router_core.mask_builder import build_mask
from router_core.mask_file import RoutingMask
from router_core.training.learner import MaskLearner, build_vocab, decode_outputs
from router_core.training.loop import LoopConfig, run_loop
from router_core.training.manifest import Example

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
PROBE_ITEMS = 2048  # training items a classification head is linearly probed on before mask learning


@dataclass
class TrainConfig:
    name: str
    kind: MaskKind
    keep: float = 0.9
    init: str = "weight_rank"
    include_attention: bool = False
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3  # head
    score_lr: float = 1e-3
    eval_every: int = 100
    seed: int = 0
    vocab: list[str] | None = None
    work_dir: str = "runs/mask"
    resume: bool = False
    progress: bool = True
    pooling: str | None = None  # classification pooling; None: "mean_std" (statistics pooling)
    layer_mix: bool | None = None  # weighted sum of all hidden states; None: on for classification only
    layer_concat: bool = False  # classification: all hidden states side by side (instead of layer_mix)
    probe: str = "softmax"  # how a classification head is fitted before mask learning (training.probe.PROBES)
    lda_shrinkage: float = 0.3  # with probe="lda"


@dataclass
class TrainResult:
    mask: RoutingMask
    best_step: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def head_spec_for(config: TrainConfig, train: Sequence[Example]) -> HeadSpec:
    """The head ``config`` asks for, validated (an impossible combination of flags fails before training)."""
    if config.kind == "ctc":
        vocab = config.vocab or build_vocab([e.target for e in train])
        spec = HeadSpec(kind="ctc", vocab=vocab, blank_id=0, layer_mix=bool(config.layer_mix),
                        layer_concat=config.layer_concat)
    else:
        mix = not config.layer_concat if config.layer_mix is None else config.layer_mix  # default: mix, unless concat
        spec = HeadSpec(kind="classify", labels=sorted({e.target for e in train}),
                        pooling=config.pooling or "mean_std", layer_mix=mix, layer_concat=config.layer_concat)
    spec.validate()
    return spec


class AudioCache:
    """Decoded 16 kHz waveforms, loaded once (synthetic and low-resource sets fit in memory)."""

    def __init__(self) -> None:
        self._waves: dict[Path, torch.Tensor] = {}

    def __call__(self, example: Example) -> torch.Tensor:
        wave = self._waves.get(example.audio)
        if wave is None:
            try:
                wave = self._waves[example.audio] = load_audio_file(example.audio)
            except (S3RouterError, OSError, RuntimeError, ValueError) as exc:  # any constructor: wrap, name the line
                raise UnsupportedAudioError(f"{example.source}: cannot load {example.audio}: {exc}") from exc
        return wave


class _MaskTask:
    """Mask learning as a :class:`~router_core.training.loop.TrainingTask`: Adam on the scores and the head;
    "best" keeps the binary keep-masks and the head of the best dev step."""

    def __init__(self, learner: MaskLearner, backbone: Backbone, config: TrainConfig, load: AudioCache,
                 distributed: bool) -> None:
        self.kind, self.module, self.backbone, self.load, self.config = config.kind, learner, backbone, load, config
        self.forward: nn.Module = nn.parallel.DistributedDataParallel(learner) if distributed else learner
        groups: list[dict[str, Any]] = [
            {"params": list(learner.scores.parameters()), "lr": config.score_lr},
            {"params": list(learner.head.parameters())},
        ]
        self.optimizer = torch.optim.Adam(groups, lr=config.lr)
        self.best_keep: dict[str, torch.Tensor] = {}  # layer -> keep [O, I] bool
        self.best_head: dict[str, torch.Tensor] = {}

    def loss(self, batch: Sequence[Example]) -> torch.Tensor:
        outputs, frames = self.forward([self.load(e) for e in batch])
        return self.module.loss(outputs, frames, [e.target for e in batch])

    def predict(self, waves: list[torch.Tensor]) -> list[str]:
        with torch.no_grad():
            outputs, frames = self.module(waves)
        return decode_outputs(outputs, frames, self.module.head_spec, self.backbone.seconds_per_frame)

    def on_best(self, step: int) -> None:
        self.best_keep = {n: k.cpu() for n, k in self.module.scores.keep_masks().items()}
        self.best_head = {k: v.detach().cpu().clone() for k, v in self.module.head.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.module.scores.state_dict(), "head": self.module.head.state_dict(),
                "best_bits": {n: pack_bits(k) for n, k in self.best_keep.items()}, "best_head": self.best_head,
                "config": asdict(self.config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        learner = self.module
        learner.scores.load_state_dict(state["scores"])
        if "input_shift" in state["head"]:  # a probed head: load_state_dict skips buffers that are still None
            learner.head.input_shift = state["head"]["input_shift"]
            learner.head.input_scale = state["head"]["input_scale"]
        learner.head.load_state_dict(state["head"])
        layers = self.backbone.layers
        self.best_keep = {n: unpack_bits(b, layers[n].in_features) for n, b in state["best_bits"].items()}
        self.best_head = state["best_head"]


def _probe_head(learner: MaskLearner, config: TrainConfig, train: Sequence[Example], load: AudioCache) -> None:
    """Classification: fit the head on pooled features of up to ``PROBE_ITEMS`` training items (LP-FT)."""
    sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))[:PROBE_ITEMS]
    items = [train[i] for i in sample.tolist()]
    batches = (items[i : i + config.batch_size] for i in range(0, len(items), config.batch_size))
    labelled = (([load(e) for e in batch], [e.target for e in batch]) for batch in batches)
    accuracy = learner.probe_head(labelled, config.probe, config.lda_shrinkage)
    log.info("%s probe on %d training items: training accuracy %.3f", config.probe, len(items), accuracy)


def train_mask(
    backbone: Backbone,
    config: TrainConfig,
    train: Sequence[Example],
    dev: Sequence[Example],
    distributed: bool = False,
    initial_head: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult | None:
    """Learn a mask and head; returns the best one on rank 0 (``None`` on other ranks).

    ``initial_head`` (weight ``[O, D]``, bias ``[O]``) starts the head from existing weights, e.g. a
    weight-finetuned checkpoint's ``lm_head`` when pruning on top of it.
    """
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spec = head_spec_for(config, train)
    learner = MaskLearner(backbone, spec, backbone.default_layer_names(config.include_attention), config.keep,
                          config.init, config.seed)
    load = AudioCache()
    if initial_head is not None:
        with torch.no_grad():
            learner.head.proj.weight.copy_(initial_head[0])
            learner.head.proj.bias.copy_(initial_head[1])
    checkpoint = work / CHECKPOINT
    probed = spec.kind == "classify" and initial_head is None
    if not (config.resume and checkpoint.is_file()):
        checkpoint.unlink(missing_ok=True)  # a fresh run: never resume a stale one
        if probed:  # a resumed head comes from its checkpoint
            _probe_head(learner, config, train, load)
    task = _MaskTask(learner, backbone, config, load, distributed)
    # A probed head on the initial mask is a classifier already (the LDA probe's can be the best one): it is
    # evaluated as step 0 and kept if no later step beats it.
    loop = LoopConfig(config.name, config.steps, config.batch_size, config.eval_every, seed=config.seed,
                      progress=config.progress, evaluate_start=probed)
    state = run_loop(task, train, dev, loop, checkpoint, distributed)
    if distributed and torch.distributed.get_rank() != 0:
        return None
    metrics = dict(state.best or {})
    info = {**{f"dev_{k}": v for k, v in metrics.items()}, "best_step": state.best_step, "steps": config.steps,
            "keep": config.keep, "init": config.init, "train_examples": len(train)}
    mask = build_mask(backbone.spec(), config.name, spec, *folded_projection(task.best_head), task.best_keep, info,
                      head_layer_weights=task.best_head.get("layer_weights"))
    return TrainResult(mask, state.best_step, metrics, state.history)
