"""The one training loop behind mask learning, backbone pretraining and weight finetuning (nanoGPT-style).

Each step::

    lr_g   = base_lr_g * lr_scale(step)         # linear warm-up, then cosine to 0 (or constant)
    batch  = get_batch(train, batch_size, gen)   # uniform with replacement, from this rank's shard
    loss   = task.loss(batch); loss.backward(); clip ‖∇‖ ≤ clip_norm; optimizer.step()

every ``eval_every`` steps and at the last one, on rank 0: dev metrics (:func:`evaluate`), a history entry,
and ``task.on_best(step)`` when :func:`is_better`; every ``checkpoint_every`` steps (default: at each
evaluation) and at the last one, one checkpoint (:func:`save_checkpoint`) that :func:`run_loop` resumes from.
What differs between the three trainings (the model, its loss, what "best" keeps) is a :class:`TrainingTask`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from router_core.heads import MaskKind
from router_core.training.evaluation import evaluate_examples
from router_core.training.manifest import Example

log = logging.getLogger(__name__)
TIMED_STEPS = 20  # steps timed before a time budget first refits the run's length
REFIT_EVERY = 100  # then refit every this many steps (the rate improves as the audio cache warms)


class TrainingTask(Protocol):
    """What one kind of training plugs into :func:`run_loop`."""

    @property
    def kind(self) -> MaskKind: ...  # how dev metrics compare (:func:`is_better`)
    @property
    def module(self) -> nn.Module: ...  # put in eval mode around evaluations; its parameters' device
    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    def load(self, example: Example) -> torch.Tensor: ...  # the example's 16 kHz waveform [S]
    def loss(self, batch: Sequence[Example]) -> torch.Tensor: ...  # scalar, with a graph
    def predict(self, waves: list[torch.Tensor]) -> list[str]: ...  # one answer per waveform, for dev metrics
    def on_best(self, step: int) -> None: ...  # the dev metrics just improved: keep what the result needs
    def state_dict(self) -> dict[str, Any]: ...  # the task's part of a checkpoint
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class LoopConfig:
    name: str  # progress bar and log lines
    steps: int
    batch_size: int
    eval_every: int
    checkpoint_every: int | None = None  # None: at each evaluation
    warmup: int = 0  # linear warm-up steps
    cosine: bool = False  # cosine decay to 0 after the warm-up (else a constant rate)
    clip_norm: float | None = None
    max_seconds: float | None = None  # time budget: after a few timed steps, ``steps`` shrinks to fit it
    seed: int = 0
    progress: bool = True
    evaluate_start: bool = False  # also evaluate before the first step: the starting point competes for best


@dataclass
class LoopState:
    step: int = 0
    best: dict[str, float] | None = None
    best_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def is_better(kind: MaskKind, new: dict[str, float], old: dict[str, float] | None) -> bool:
    """Whether dev metrics ``new`` beat the best so far: a lower CER (ctc), a higher accuracy (classify)."""
    if old is None:
        return True
    return new["cer"] < old["cer"] if kind == "ctc" else new["accuracy"] > old["accuracy"]


def lr_scale(step: int, config: LoopConfig) -> float:
    """``(step + 1) / warmup`` during the warm-up; then ``½(1 + cos(π p))`` with ``p`` the fraction of the
    remaining steps done (``cosine``), or 1."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if not config.cosine:
        return 1.0
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def get_batch(data: Sequence[Example], batch_size: int, gen: torch.Generator) -> list[Example]:
    """``min(batch_size, len(data))`` examples drawn uniformly with replacement."""
    idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=gen).tolist()
    return [data[i] for i in idx]


def evaluate(task: TrainingTask, dev: Sequence[Example], batch_size: int) -> dict[str, float]:
    """Dev metrics (CER/WER or accuracy) with the task's module in eval mode."""
    task.module.eval()
    try:
        return evaluate_examples(dev, task.predict, task.load, task.kind, batch_size)
    finally:
        task.module.train()


def save_checkpoint(path: Path, task: TrainingTask, state: LoopState, gen: torch.Generator) -> None:
    """One flat dict: the loop's step, history, best and RNG, the optimizer, and the task's own state."""
    torch.save({**task.state_dict(), "optimizer": task.optimizer.state_dict(), "rng": gen.get_state(),
                "step": state.step, "best": state.best, "best_step": state.best_step, "history": state.history}, path)


def resume(path: Path, task: TrainingTask, gen: torch.Generator, device: torch.device | str) -> LoopState:
    ckpt = torch.load(path, map_location=device, weights_only=True)
    task.load_state_dict(ckpt)
    task.optimizer.load_state_dict(ckpt["optimizer"])
    gen.set_state(ckpt["rng"])
    log.info("%s: resumed from %s at step %d", path.parent, path, ckpt["step"])
    return LoopState(ckpt["step"], ckpt["best"], ckpt["best_step"], ckpt["history"])


class _Budget:
    """Fits ``config.steps`` to ``config.max_seconds`` at the measured rate (evaluations included), never
    above the steps asked for, so a cosine schedule decays over the steps that will really run."""

    def __init__(self, config: LoopConfig, first_step: int) -> None:
        self.config, self.first_step, self.requested = config, first_step, config.steps
        self.started = time.monotonic()

    def refit(self, step: int, bar: Any) -> None:
        done, config = step - self.first_step, self.config
        if config.max_seconds is None or done < TIMED_STEPS or (done - TIMED_STEPS) % REFIT_EVERY:
            return
        elapsed = time.monotonic() - self.started
        rate = elapsed / done  # seconds per step
        fit = step + int(max(0.0, config.max_seconds - elapsed) / rate)
        steps = min(self.requested, max(fit, config.warmup + 1, step + 1))
        if steps != config.steps:
            log.info("time budget %.0f s at %.3f s/step: %d steps (asked for %d)", config.max_seconds, rate, steps,
                     self.requested)
            config.steps = bar.total = steps


def _train_step(task: TrainingTask, batch: Sequence[Example], config: LoopConfig) -> torch.Tensor:
    loss = task.loss(batch)
    task.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_norm is not None:
        params = [p for group in task.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
    task.optimizer.step()
    return loss


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def _track(task: TrainingTask, state: LoopState, metrics: dict[str, float], name: str, loss: float | None,
           seconds: float) -> None:
    """Record one dev evaluation at ``state.step`` and keep it if it is the best so far."""
    entry = {"step": state.step, "loss": loss, "seconds": seconds, **metrics}
    state.history.append(entry)
    log.info("%s step %d: %s", name, state.step, entry)
    if is_better(task.kind, metrics, state.best):
        state.best, state.best_step = metrics, state.step
        task.on_best(state.step)


def run_loop(
    task: TrainingTask,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: LoopConfig,
    checkpoint: Path | None = None,
    distributed: bool = False,
) -> LoopState:
    """Train ``task`` for ``config.steps`` steps (resuming from ``checkpoint`` if it exists); returns the
    final state. Distributed: each rank draws from its own shard of ``train``; rank 0 evaluates and
    checkpoints; ranks meet at a barrier after every step. ``config.steps`` may shrink to a time budget."""
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    base_lrs = [group["lr"] for group in task.optimizer.param_groups]
    gen = torch.Generator().manual_seed(config.seed + rank)
    device = next(task.module.parameters()).device
    state = resume(checkpoint, task, gen, device) if checkpoint is not None and checkpoint.is_file() else LoopState()
    shard = list(train)[rank::world] or list(train)
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=state.step, disable=not config.progress or rank != 0, desc=config.name)
    budget = _Budget(config, state.step)
    if rank == 0 and config.evaluate_start and state.step == 0 and not state.history:
        _track(task, state, evaluate(task, dev, config.batch_size), config.name, None, 0.0)
    task.module.train()
    while state.step < config.steps:
        budget.refit(state.step, bar)
        for group, base in zip(task.optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * lr_scale(state.step, config)
        loss = _train_step(task, get_batch(shard, config.batch_size, gen), config)
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if rank == 0 and _due(state.step, config.eval_every, config.steps):
            metrics = evaluate(task, dev, config.batch_size)
            _track(task, state, metrics, config.name, float(loss.item()), time.monotonic() - budget.started)
        if rank == 0 and checkpoint is not None and _due(state.step, config.checkpoint_every or config.eval_every,
                                                          config.steps):
            save_checkpoint(checkpoint, task, state, gen)
        if distributed:
            torch.distributed.barrier()
    bar.close()
    task.module.eval()
    return state
