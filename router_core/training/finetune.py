"""The standard weight-finetuning baseline, on the same data, head and step budget as mask learning.

All transformer and projection weights plus the head are trained with Adam (the convolutional
feature encoder stays frozen, as usual for wav2vec2 finetuning); the result is a Hugging Face
checkpoint (``*ForCTC`` or ``*ForSequenceClassification`` + processor files). Also: predicting with any
such checkpoint, for ``s3router eval --checkpoint``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForAudioClassification, AutoModelForCTC, PreTrainedModel, set_seed

from router_core.backbone import Backbone, read_checkpoint_vocab, zero_mean_unit_var
from router_core.errors import InvalidInputError
from router_core.heads import HeadSpec
from router_core.training.export import base_state_dict, linear, model_with_head, save_processor, set_head
from router_core.training.learner import decode_outputs, head_loss
from router_core.training.loop import LoopConfig, run_loop
from router_core.training.manifest import Example
from router_core.training.trainer import AudioCache, TrainConfig, head_spec_for

log = logging.getLogger(__name__)


def hf_forward(
    model: PreTrainedModel, waves: list[torch.Tensor], normalize: bool, use_attention_mask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame outputs ``[B, T, O]`` and frame lengths of a HF CTC/classification model.

    For classification the per-frame output is ``classifier(projector(h[t]))``; both are linear, so its
    mean over valid frames equals the model's pooled logits.
    """
    device = next(model.parameters()).device
    lengths = torch.tensor([w.shape[0] for w in waves])
    padded = torch.nn.utils.rnn.pad_sequence(
        [zero_mean_unit_var(w.float()) if normalize else w.float() for w in waves], batch_first=True
    )
    mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).long()
    base = getattr(model, model.base_model_prefix)
    kwargs = {"attention_mask": mask.to(device)} if use_attention_mask else {}
    hidden = base(padded.to(device), **kwargs).last_hidden_state  # [B, T, D]
    frames = torch.as_tensor(getattr(base, "_get_feat_extract_output_lengths")(lengths), dtype=torch.long)  # noqa: B009
    if hasattr(model, "lm_head"):
        return linear(model, "lm_head")(model.get_submodule("dropout")(hidden)), frames
    return linear(model, "classifier")(linear(model, "projector")(hidden)), frames


def hf_predict(model: PreTrainedModel, spec: HeadSpec, waves: list[torch.Tensor], normalize: bool, attn: bool,
               seconds_per_frame: float) -> list[str]:
    with torch.no_grad():
        outputs, frames = hf_forward(model, waves, normalize, attn)
    return decode_outputs(outputs, frames, spec, seconds_per_frame)


class _FinetuneTask:
    """Weight finetuning as a :class:`~router_core.training.loop.TrainingTask`: Adam on every unfrozen weight;
    "best" saves the model as a Hugging Face checkpoint in ``out``."""

    def __init__(self, model: PreTrainedModel, spec: HeadSpec, backbone: Backbone, config: TrainConfig,
                 out: Path) -> None:
        self.kind, self.module, self.spec, self.backbone, self.out = config.kind, model, spec, backbone, out
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        self.load = AudioCache()

    def _outputs(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return hf_forward(self.module, waves, self.backbone.normalize_input, self.backbone.layer_norm_features)

    def loss(self, batch: Sequence[Example]) -> torch.Tensor:
        outputs, frames = self._outputs([self.load(e) for e in batch])
        return head_loss(outputs.float(), frames, [e.target for e in batch], self.spec)

    def predict(self, waves: list[torch.Tensor]) -> list[str]:
        backbone = self.backbone
        return hf_predict(self.module, self.spec, waves, backbone.normalize_input, backbone.layer_norm_features,
                          backbone.seconds_per_frame)

    def on_best(self, step: int) -> None:
        self.module.config.architectures = [type(self.module).__name__]
        self.module.save_pretrained(self.out)
        save_processor(self.spec, self.backbone, self.out)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])


def finetune_weights(
    backbone: Backbone,
    config: TrainConfig,
    train: Sequence[Example],
    dev: Sequence[Example],
    out_dir: str | Path,
    initial_head: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Weight-finetune a copy of ``backbone`` (head fresh, or from ``initial_head``); save the best checkpoint."""
    set_seed(config.seed)  # torch, and numpy too: the model's SpecAugment time masks draw from numpy
    spec = head_spec_for(config, train)
    base = {k: v.detach().float().cpu() for k, v in base_state_dict(backbone).items()}
    model = model_with_head(backbone, spec, base)
    if initial_head is not None:
        set_head(model, spec, *initial_head)
    model = model.to(backbone.device)  # type: ignore[arg-type]
    model.freeze_feature_encoder()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = _FinetuneTask(model, spec, backbone, config, out)
    loop = LoopConfig("finetune", config.steps, config.batch_size, config.eval_every, clip_norm=5.0, seed=config.seed,
                      progress=config.progress)
    state = run_loop(task, train, dev, loop)
    return {"out": str(out), "best": state.best, "history": state.history}


def load_hf_classifier_or_ctc(path: str | Path) -> tuple[PreTrainedModel, HeadSpec]:
    """A HF CTC or audio-classification checkpoint with the head description needed to decode it."""
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    archs = config.architectures or []
    if any(a.endswith("ForCTC") for a in archs):
        model = AutoModelForCTC.from_pretrained(path, local_files_only=True)
        vocab = read_checkpoint_vocab(str(path))
        if vocab is None:
            raise InvalidInputError(f"{path}: a CTC checkpoint needs a single-language vocab.json")
        return model.eval(), HeadSpec(kind="ctc", vocab=vocab, blank_id=int(config.pad_token_id or 0))
    model = AutoModelForAudioClassification.from_pretrained(path, local_files_only=True)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    return model.eval(), HeadSpec(kind="classify", labels=labels)
