"""Mask learning loop: Adam on scores + head, dev evaluation every N steps, best kept, resumable.

Distributed (``torchrun``): with ``distributed=True`` the learner is wrapped in DDP (scores and head
gradients are all-reduced), each rank draws batches from its own shard, and rank 0 evaluates,
checkpoints and returns the mask.
"""

from __future__ import annotations

import logging
import time
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
from router_core.training.evaluation import evaluate_examples
from router_core.training.learner import MaskLearner, build_vocab, decode_outputs
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


@dataclass
class TrainResult:
    mask: RoutingMask
    best_step: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def head_spec_for(config: TrainConfig, train: Sequence[Example]) -> HeadSpec:
    if config.kind == "ctc":
        vocab = config.vocab or build_vocab([e.target for e in train])
        return HeadSpec(kind="ctc", vocab=vocab, blank_id=0, layer_mix=bool(config.layer_mix))
    mix = True if config.layer_mix is None else config.layer_mix
    return HeadSpec(kind="classify", labels=sorted({e.target for e in train}), pooling=config.pooling or "mean_std",
                    layer_mix=mix)


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


def _predict(learner: MaskLearner, waves: list[torch.Tensor], seconds_per_frame: float) -> list[str]:
    with torch.no_grad():
        outputs, frames = learner(waves)
    return decode_outputs(outputs, frames, learner.head_spec, seconds_per_frame)


def is_better(kind: MaskKind, new: dict[str, float], old: dict[str, float] | None) -> bool:
    """Whether dev metrics ``new`` beat the best so far: a lower CER (ctc), a higher accuracy (classify)."""
    if old is None:
        return True
    return new["cer"] < old["cer"] if kind == "ctc" else new["accuracy"] > old["accuracy"]


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
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spec = head_spec_for(config, train)
    layers = backbone.default_layer_names(config.include_attention)
    learner = MaskLearner(backbone, spec, layers, config.keep, config.init, config.seed)
    load = AudioCache()
    if initial_head is not None:
        with torch.no_grad():
            learner.head.proj.weight.copy_(initial_head[0])
            learner.head.proj.bias.copy_(initial_head[1])
    ckpt_path = work / CHECKPOINT
    resuming = config.resume and ckpt_path.is_file()
    if spec.kind == "classify" and initial_head is None and not resuming:  # a resumed head comes from its checkpoint
        sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))[:PROBE_ITEMS]
        items = [train[i] for i in sample.tolist()]
        batches = (items[i : i + config.batch_size] for i in range(0, len(items), config.batch_size))
        accuracy = learner.probe_head(([load(e) for e in batch], [e.target for e in batch]) for batch in batches)
        log.info("linear probe on %d training items: training accuracy %.3f", len(items), accuracy)
    model: nn.Module = learner
    if distributed:
        model = nn.parallel.DistributedDataParallel(learner)
    groups: list[dict[str, Any]] = [
        {"params": list(learner.scores.parameters()), "lr": config.score_lr},
        {"params": list(learner.head.parameters())},
    ]
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    shard = list(train)[rank::world] or list(train)
    gen = torch.Generator().manual_seed(config.seed + rank)
    state: dict[str, Any] = {"step": 0, "best": None, "best_step": 0, "history": []}
    best_keep: dict[str, torch.Tensor] = {}
    best_head: dict[str, torch.Tensor] = {}
    if resuming:
        ckpt = torch.load(ckpt_path, map_location=backbone.device, weights_only=True)
        learner.scores.load_state_dict(ckpt["scores"])
        if "input_shift" in ckpt["head"]:  # a probed head: load_state_dict skips buffers that are still None
            learner.head.input_shift = ckpt["head"]["input_shift"]
            learner.head.input_scale = ckpt["head"]["input_scale"]
        learner.head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"])
        state.update(step=ckpt["step"], best=ckpt["best"], best_step=ckpt["best_step"], history=ckpt["history"])
        best_keep = {n: unpack_bits(b, backbone.layers[n].in_features) for n, b in ckpt["best_bits"].items()}
        best_head = ckpt["best_head"]
        log.info("resumed from %s at step %d", ckpt_path, state["step"])

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=state["step"], disable=not config.progress or rank != 0, desc=config.name)
    started = time.monotonic()
    while state["step"] < config.steps:
        idx = torch.randint(len(shard), (min(config.batch_size, len(shard)),), generator=gen).tolist()
        batch = [shard[i] for i in idx]
        outputs, frames = model([load(e) for e in batch])
        loss = learner.loss(outputs, frames, [e.target for e in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        step = state["step"]
        if (step % config.eval_every == 0 or step == config.steps) and rank == 0:
            metrics = evaluate_examples(
                dev, lambda w: _predict(learner, w, backbone.seconds_per_frame), load, config.kind, config.batch_size
            )
            entry = {"step": step, "loss": float(loss.item()), "seconds": time.monotonic() - started, **metrics}
            state["history"].append(entry)
            log.info("step %d: %s", step, entry)
            if is_better(config.kind, metrics, state["best"]):
                state["best"], state["best_step"] = metrics, step
                best_keep = {n: k.cpu() for n, k in learner.scores.keep_masks().items()}
                best_head = {k: v.detach().cpu().clone() for k, v in learner.head.state_dict().items()}
            torch.save(
                {
                    "step": step,
                    "scores": learner.scores.state_dict(),
                    "head": learner.head.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": gen.get_state(),
                    "best": state["best"],
                    "best_step": state["best_step"],
                    "history": state["history"],
                    "best_bits": {n: pack_bits(k) for n, k in best_keep.items()},
                    "best_head": best_head,
                    "config": asdict(config),
                },
                ckpt_path,
            )
        if distributed:
            torch.distributed.barrier()
    bar.close()
    if rank != 0:
        return None
    metrics = dict(state["best"] or {})
    mask = build_mask(
        backbone.spec(),
        config.name,
        spec,
        *folded_projection(best_head),
        best_keep,
        {
            **{f"dev_{k}": v for k, v in metrics.items()},
            "best_step": state["best_step"],
            "steps": config.steps,
            "keep": config.keep,
            "init": config.init,
            "train_examples": len(train),
        },
        head_layer_weights=best_head.get("layer_weights"),
    )
    return TrainResult(mask, state["best_step"], metrics, state["history"])
