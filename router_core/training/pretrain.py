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
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from router_core.backbone import SAMPLE_RATE, Backbone, read_checkpoint_vocab
from router_core.errors import InvalidInputError
from router_core.heads import HeadSpec
from router_core.training.evaluation import evaluate_examples
from router_core.training.export import save_processor
from router_core.training.finetune import hf_forward, hf_predict
from router_core.training.learner import build_vocab, head_loss
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


def _lr_at(step: int, config: PretrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


_TIMED_STEPS = 20  # steps timed before the first fit to a time budget
_REFIT_EVERY = 100  # then refit every this many steps (the rate improves as the audio cache warms)


def _fit_steps_to_budget(
    config: PretrainConfig, requested: int, done: int, step: int, elapsed: float, bar: Any
) -> None:
    """Set ``config.steps`` so that the run ends within ``config.max_seconds``, at the rate of the ``done``
    steps this run has timed so far (evaluations included), never above the ``requested`` steps. The cosine
    schedule then decays over the steps that will really run."""
    assert config.max_seconds is not None
    rate = elapsed / done  # seconds per step
    fit = step + int(max(0.0, config.max_seconds - elapsed) / rate)
    steps = min(requested, max(fit, config.warmup + 1, step + 1))
    if steps != config.steps:
        log.info("time budget %.0f s at %.3f s/step: %d steps (asked for %d)", config.max_seconds, rate, steps,
                 requested)
        config.steps = steps
        bar.total = steps


def _initial_model(folder: str, corpus_vocab: list[str]) -> tuple[Wav2Vec2ForCTC, list[str]]:
    """A trained checkpoint to continue from; its vocabulary must cover every character of the corpus."""
    vocab = read_checkpoint_vocab(folder)
    if vocab is None:
        raise InvalidInputError(f"{folder}: no vocab.json to continue pretraining from")
    missing = sorted(set(corpus_vocab) - set(vocab))
    if missing:
        raise InvalidInputError(f"{folder}: its vocabulary lacks {missing} that the corpus uses")
    return Wav2Vec2ForCTC.from_pretrained(folder, local_files_only=True), vocab


def pretrain_backbone(
    train: Sequence[Example], dev: Sequence[Example], out_dir: str | Path, work_dir: str | Path, config: PretrainConfig
) -> dict[str, Any]:
    """Train (or resume) the tiny backbone and save it as a Hugging Face checkpoint in ``out_dir``."""
    config = replace(config)  # a time budget rewrites ``steps``: the caller's config stays as given
    work, out = Path(work_dir), Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    spec = HeadSpec(kind="ctc", vocab=build_vocab([e.target for e in train]), blank_id=0)
    if config.init_from is not None:
        model, spec.vocab = _initial_model(config.init_from, spec.vocab)
    else:
        model = Wav2Vec2ForCTC(tiny_wav2vec2_config(len(spec.vocab), config.hidden, config.layers))
    model = model.to(config.device)  # type: ignore[arg-type]
    seconds_per_frame = math.prod(model.config.conv_stride) / SAMPLE_RATE
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(config.seed)
    step, history = 0, []
    ckpt_path = work / "pretrain.pt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=config.device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"])
        step, history = ckpt["step"], ckpt["history"]
        spec.vocab = ckpt["vocab"]
        log.info("resumed pretraining at step %d", step)
    load = AudioCache()
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=step, disable=not config.progress, desc="pretrain")
    started, first_step, requested = time.monotonic(), step, config.steps
    model.train()
    while step < config.steps:
        done = step - first_step
        if config.max_seconds is not None and done >= _TIMED_STEPS and (done - _TIMED_STEPS) % _REFIT_EVERY == 0:
            _fit_steps_to_budget(config, requested, done, step, time.monotonic() - started, bar)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        idx = torch.randint(len(train), (config.batch_size,), generator=gen).tolist()
        batch = [train[i] for i in idx]
        outputs, frames = hf_forward(model, [load(e) for e in batch], normalize=True, use_attention_mask=True)
        loss = head_loss(outputs.float(), frames, [e.target for e in batch], spec)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % config.eval_every == 0 or step == config.steps:
            model.eval()
            metrics = evaluate_examples(
                dev, lambda w: hf_predict(model, spec, w, True, True, seconds_per_frame), load, "ctc", config.batch_size
            )
            model.train()
            history.append({"step": step, "loss": float(loss.item()), "seconds": time.monotonic() - started, **metrics})
            log.info("pretrain step %d: %s", step, history[-1])
        if step % config.checkpoint_every == 0 or step == config.steps:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": gen.get_state(),
                        "step": step, "history": history, "vocab": spec.vocab}, ckpt_path)
    bar.close()
    model.eval()
    model.save_pretrained(out)
    probe = Backbone.from_model(Wav2Vec2ForCTC.from_pretrained(out).wav2vec2)
    save_processor(spec, probe, out)
    return {"out": str(out), "vocab": len(spec.vocab), "steps": step, "history": history[-3:],
            "parameters": sum(p.numel() for p in model.parameters())}
