"""Baking a mask into a standalone, pruned Hugging Face checkpoint (and the weight-finetuning model heads).

Export: ``W <- W * M`` for every masked layer; the mask's head becomes ``lm_head`` (CTC) or the
classifier (with an identity projector, so ``p = softmax(mean_t(h) W^T + b)`` exactly as served). The
folder loads with ``transformers.pipeline("automatic-speech-recognition" | "audio-classification")``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForAudioClassification,
    AutoModelForCTC,
    PreTrainedModel,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
)

from router_core.backbone import Backbone
from router_core.errors import InvalidInputError
from router_core.heads import HeadSpec
from router_core.kernels.bits import unpack_bits
from router_core.mask_file import RoutingMask


def base_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The backbone's weights under the original Hugging Face names (serving wrappers removed)."""
    return {k.replace("pos_conv_embed.inner.", "pos_conv_embed."): v for k, v in backbone.model.state_dict().items()}


def feature_extractor_for(backbone: Backbone) -> Wav2Vec2FeatureExtractor:
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16_000,
        padding_value=0.0,
        do_normalize=backbone.normalize_input,
        return_attention_mask=backbone.layer_norm_features,
    )


def save_processor(spec: HeadSpec, backbone: Backbone, out: Path) -> None:
    """CTC: tokenizer (vocab.json) + feature extractor; classification: feature extractor only."""
    extractor = feature_extractor_for(backbone)
    if spec.kind != "ctc":
        extractor.save_pretrained(out)
        return
    vocab_file = out / "vocab.json"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(spec.vocab)}, ensure_ascii=False))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_file),
        pad_token=spec.vocab[spec.blank_id],
        unk_token="<unk>" if "<unk>" in spec.vocab else spec.vocab[spec.blank_id],
        word_delimiter_token=spec.word_delimiter,
        bos_token=None,
        eos_token=None,
    )
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)


def model_with_head(backbone: Backbone, spec: HeadSpec, base: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A ``*ForCTC`` or ``*ForSequenceClassification`` model around ``base`` weights (head left to the caller)."""
    config = copy.deepcopy(backbone.config)
    if spec.kind == "ctc":
        if spec.layer_mix:
            raise InvalidInputError("a CTC head that mixes layers has no Hugging Face *ForCTC equivalent")
        config.vocab_size = len(spec.vocab)
        config.pad_token_id = spec.blank_id
        config.ctc_loss_reduction = "mean"
        model = AutoModelForCTC.from_config(config)
    else:
        config.num_labels = len(spec.labels)
        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {label: i for i, label in enumerate(spec.labels)}
        if spec.layer_concat:
            raise InvalidInputError(
                "a classification head that reads all hidden states side by side has no Hugging Face equivalent; "
                "serve the mask with s3router instead"
            )
        if spec.pooling != "mean":
            raise InvalidInputError(
                f"a classification head with {spec.pooling!r} pooling has no Hugging Face equivalent (mean only); "
                "serve the mask with s3router instead"
            )
        config.classifier_proj_size = backbone.hidden_size
        config.use_weighted_layer_sum = spec.layer_mix
        model = AutoModelForAudioClassification.from_config(config)
    getattr(model, model.base_model_prefix).load_state_dict(base)
    return model.float()


def set_head(
    model: PreTrainedModel,
    spec: HeadSpec,
    weight: torch.Tensor,
    bias: torch.Tensor,
    layer_weights: torch.Tensor | None = None,
) -> None:
    """Copy a head into the HF model: ``lm_head``, or an identity ``projector`` + ``classifier`` (HF
    classifies ``mean_t(projector(h[t])) W^T + b``, which equals our mean-pooled head), and the
    softmax logits of a weighted layer sum."""
    with torch.no_grad():
        if layer_weights is not None:
            hf_weights = model.get_parameter("layer_weights")  # [S], softmaxed by HF as ours are
            hf_weights.copy_(layer_weights)
        if spec.kind == "ctc":
            linear(model, "lm_head").weight.copy_(weight)
            linear(model, "lm_head").bias.copy_(bias)
        else:
            projector = linear(model, "projector")
            projector.weight.copy_(torch.eye(projector.weight.shape[0]))
            projector.bias.zero_()
            linear(model, "classifier").weight.copy_(weight)
            linear(model, "classifier").bias.copy_(bias)


def linear(model: nn.Module, name: str) -> nn.Linear:
    """A named ``nn.Linear`` submodule of a Hugging Face model (typed access)."""
    module = model.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{name} is {type(module).__name__}, not nn.Linear")
    return module


def export_mask(backbone: Backbone, mask: RoutingMask, out_dir: str | Path) -> dict[str, Any]:
    """Write a pruned checkpoint for ``mask``; return sparsity and size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = {k: v.detach().float().cpu().clone() for k, v in base_state_dict(backbone).items()}
    dropped = masked_total = 0
    for name, bits in mask.layer_bits.items():
        key = f"{name}.weight"
        keep = unpack_bits(bits.cpu(), base[key].shape[1])
        base[key] = base[key] * keep
        dropped += int((~keep).sum())
        masked_total += keep.numel()
    model = model_with_head(backbone, mask.head, base)
    mix = None if mask.head_layer_weights is None else mask.head_layer_weights.float().cpu()
    set_head(model, mask.head, mask.head_weight.float().cpu(), mask.head_bias.float().cpu(), mix)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out)
    save_processor(mask.head, backbone, out)
    total = sum(p.numel() for p in getattr(model, model.base_model_prefix).parameters())
    return {
        "out": str(out),
        "architecture": type(model).__name__,
        "masked_weights": masked_total,
        "dropped_weights": dropped,
        "sparsity_of_masked_layers": dropped / max(1, masked_total),
        "sparsity_of_backbone": dropped / max(1, total),
        "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
    }
