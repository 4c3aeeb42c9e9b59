"""The frozen, shared wav2vec2-family backbone: loading, fingerprint, and the batch-exact encoder pass.

Supported Hugging Face architectures: Wav2Vec2 (incl. XLS-R / MMS), HuBERT, WavLM, Data2VecAudio — base
models or ``*ForCTC`` checkpoints (whose ``lm_head`` becomes an ordinary CTC head, see
:attr:`Backbone.ctc_head`). Everything is loaded with ``from_pretrained`` from a local folder or hub id.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCTC, PretrainedConfig, PreTrainedModel

from router_core.errors import BackboneError
from router_core.maskable import MaskedLinear, install_masked_linears, maskable_layer_names

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class BackboneSpec:
    """What a mask is bound to: the weights' fingerprint and the maskable layers' shapes."""

    fingerprint: str
    hidden_size: int
    layer_shapes: dict[str, tuple[int, int]]  # name -> (out_features, in_features), every maskable layer
    num_hidden_states: int  # what ``encode(..., all_layers=True)`` stacks: input embeddings + each layer


@dataclass
class PretrainedCTCHead:
    """The ``lm_head`` of a ``*ForCTC`` checkpoint and its vocabulary (ids in order), if found."""

    weight: torch.Tensor  # [V, D]
    bias: torch.Tensor  # [V]
    vocab: list[str] | None
    blank_id: int


def fingerprint_module(module: nn.Module) -> str:
    """Stable fingerprint of a module's parameters: BLAKE2b over (name, shape, fp32 bytes), sorted by name.

    The same weights give the same fingerprint whatever dtype or device they are served in.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().data)
    return "b2-" + digest.hexdigest()


_FRAME_LENGTHS: ContextVar[torch.Tensor | None] = ContextVar("s3router_frame_lengths", default=None)


class PerItemPositionalConv(nn.Module):
    """Runs a positional-conv stack on each item's valid frames only.

    Data2VecAudio's relative positional embedding is a *stack* of convolutions with layer norms: after
    the first one, padded frames are no longer zero, so a padded batch would leak padding into the
    valid frames of shorter items. Running it item by item on ``hidden[i, :T_i]`` keeps an item's
    output in a batch equal to its output alone. (Wav2Vec2/HuBERT/WavLM use one conv over zeroed
    padding, which is already exact.)
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        lengths = _FRAME_LENGTHS.get()
        if lengths is None or hidden.shape[0] == 1:
            return self.inner(hidden)
        out = torch.zeros_like(hidden)
        for i, frames in enumerate(lengths.tolist()):
            out[i, :frames] = self.inner(hidden[i : i + 1, :frames])[0]
        return out


@dataclass
class Backbone:
    """A frozen encoder plus what masks need to know about it."""

    model: PreTrainedModel  # the base model (Wav2Vec2Model, HubertModel, ...), eval mode, no grads
    config: PretrainedConfig
    fingerprint: str
    layers: dict[str, MaskedLinear]
    normalize_input: bool = True
    ctc_head: PretrainedCTCHead | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        normalize_input: bool = True,
        ctc_head: PretrainedCTCHead | None = None,
    ) -> Backbone:
        """Freeze an in-memory base model (the path tests use with tiny configs built in code)."""
        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise BackboneError(
                f"unsupported model_type {config.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if getattr(model, "adapter", None) is not None:
            raise BackboneError("checkpoints with add_adapter=True (a strided adapter) are not supported")
        model.eval()
        model.requires_grad_(False)
        fingerprint = fingerprint_module(model)  # before any dtype cast: independent of serving dtype
        layers = install_masked_linears(model, config.num_hidden_layers)
        encoder = model.get_submodule("encoder")
        pos_conv = encoder.get_submodule("pos_conv_embed")
        if config.model_type == "data2vec-audio" and not isinstance(pos_conv, PerItemPositionalConv):
            encoder.pos_conv_embed = PerItemPositionalConv(pos_conv)
        model.to(device=torch.device(device), dtype=dtype)  # type: ignore[call-arg]  # HF wraps .to()
        return cls(
            model=model,
            config=config,
            fingerprint=fingerprint,
            layers=layers,
            normalize_input=normalize_input,
            ctc_head=ctc_head,
            device=torch.device(device),
            dtype=dtype,
        )

    # --- facts ---------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_hidden_states(self) -> int:
        """Hidden states a layer-mixing head reads: the transformer's input and each layer's output."""
        return self.num_layers + 1

    @property
    def layer_norm_features(self) -> bool:
        """Whether the feature encoder normalises each frame on its own ("layer"; data2vec-audio always):
        then a padded batch runs as one call, and Hugging Face models of it take an attention mask."""
        return getattr(self.config, "feat_extract_norm", "layer") == "layer"

    @property
    def seconds_per_frame(self) -> float:
        """Hop of the feature encoder in seconds (0.02 for the standard conv stack)."""
        hop = 1
        for stride in self.config.conv_stride:
            hop *= int(stride)
        return hop / SAMPLE_RATE

    def default_layer_names(self, include_attention: bool = False) -> list[str]:
        return maskable_layer_names(self.num_layers, include_attention)

    def spec(self) -> BackboneSpec:
        names = maskable_layer_names(self.num_layers, include_attention=True)
        shapes = {n: (self.layers[n].out_features, self.layers[n].in_features) for n in names}
        return BackboneSpec(self.fingerprint, self.hidden_size, shapes, self.num_hidden_states)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced by the feature encoder for inputs of ``sample_lengths`` samples."""
        lengths = getattr(self.model, "_get_feat_extract_output_lengths")(sample_lengths)  # noqa: B009
        return torch.as_tensor(lengths, dtype=torch.long)

    @property
    def min_samples(self) -> int:
        """Shortest input that yields at least one frame."""
        n = 1
        for kernel, stride in reversed(list(zip(self.config.conv_kernel, self.config.conv_stride, strict=True))):
            n = (n - 1) * int(stride) + int(kernel)
        return n

    # --- forward --------------------------------------------------------------------------------
    def _extract_features(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv features ``[B, T, C]`` (zero-padded) and frame lengths ``[B]``.

        Layer-norm feature encoders normalise each frame on its own, so a padded batch gives every
        valid frame exactly its unpadded value and runs as one call. Group-norm encoders
        (wav2vec2-base style) normalise over the whole time axis, where padding would change the
        statistics: they run item by item, which is what makes an item's output in a batch equal its
        output alone.
        """
        lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.long)
        frames = self.frame_lengths(lengths)  # [B]
        extractor = self.model.get_submodule("feature_extractor")
        if self.layer_norm_features:
            padded = nn.utils.rnn.pad_sequence(waves, batch_first=True)  # [B, S]
            feats = extractor(padded).transpose(1, 2)  # [B, T, C]
            return feats[:, : int(frames.max())], frames
        per_item = [extractor(w.unsqueeze(0)).transpose(1, 2)[0] for w in waves]  # each [T_i, C]
        return nn.utils.rnn.pad_sequence(per_item, batch_first=True), frames

    @torch.inference_mode()
    def encode(self, waves: list[torch.Tensor], all_layers: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states ``[B, T, D]`` and frame lengths ``[B]`` for 16 kHz mono waveforms. With
        ``all_layers``: ``[S + 1, B, T, D]`` — the ``S = layers + 1`` hidden states of Hugging Face's
        ``output_hidden_states``, then the encoder output (which differs from the S-th for pre-norm
        encoders, whose output passes a final LayerNorm).

        Masked layers follow the active :func:`router_core.maskable.routing` plan, if any.
        """
        return self.encode_with_grad(waves, all_layers)

    def encode_with_grad(
        self, waves: list[torch.Tensor], all_layers: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` without inference mode, for mask learning: the frozen feature encoder runs
        under ``no_grad``; the transformer runs with autograd so gradients reach whatever the active
        :func:`router_core.maskable.weight_transform` makes trainable."""
        with torch.no_grad():
            prepared = [self._prepare(w) for w in waves]
            feats, frames = self._extract_features(prepared)  # [B, T, C], [B]
            projected = self.model.get_submodule("feature_projection")(feats)
        hidden = projected[0] if isinstance(projected, tuple) else projected  # HuBERT returns a tensor
        hidden = hidden.clone()  # the encoder zeroes padding in place
        attention_mask = None
        if bool((frames < hidden.shape[1]).any()):
            steps = torch.arange(hidden.shape[1])
            attention_mask = (steps[None, :] < frames[:, None]).to(self.device)  # [B, T] bool
        encoder = self.model.get_submodule("encoder")
        token = _FRAME_LENGTHS.set(frames)
        try:
            with _hidden_states(encoder, enabled=all_layers) as states:
                last = encoder(hidden, attention_mask=attention_mask).last_hidden_state  # [B, T, D]
        finally:
            _FRAME_LENGTHS.reset(token)
        if all_layers:
            return torch.stack([*states, last]), frames  # [S + 1, B, T, D], [B]
        return last, frames  # [B, T, D], [B]

    def _prepare(self, wave: torch.Tensor) -> torch.Tensor:
        """1-D float waveform on the backbone's device/dtype, zero-mean unit-variance if configured."""
        wave = wave.to(device=self.device, dtype=torch.float32)
        if self.normalize_input:
            wave = zero_mean_unit_var(wave)
        return wave.to(self.dtype)


@contextmanager
def _hidden_states(encoder: nn.Module, enabled: bool) -> Iterator[list[torch.Tensor]]:
    """Record what enters each transformer layer and what leaves the last one: the ``S = layers + 1``
    hidden states of Hugging Face's ``output_hidden_states`` (transformers 5 records them only through
    the top-level model; like it, for pre-LayerNorm encoders the last is taken before the final norm)."""
    recorded: list[torch.Tensor] = []
    if not enabled:
        yield recorded
        return

    def entering(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        recorded.append(args[0] if args else kwargs["hidden_states"])

    def leaving(_module: nn.Module, _args: tuple, output: torch.Tensor | tuple) -> None:
        recorded.append(output[0] if isinstance(output, tuple) else output)  # WavLM adds position bias

    layers = list(encoder.get_submodule("layers").children())
    handles = [layer.register_forward_pre_hook(entering, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(leaving))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def zero_mean_unit_var(wave: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-7)`` (population variance), as Hugging Face's feature extractors do."""
    return (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)


def load_backbone(
    name_or_path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool = False,
) -> Backbone:
    """Load and freeze a Hugging Face checkpoint (local folder or hub id) with ``from_pretrained``."""
    source = str(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except Exception as exc:
        raise BackboneError(f"cannot read a model config from {source!r}: {exc}") from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise BackboneError(
            f"{source}: unsupported model_type {config.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    is_ctc = any(arch.endswith("ForCTC") for arch in (config.architectures or []))
    try:
        if is_ctc:
            full = AutoModelForCTC.from_pretrained(source, local_files_only=local_files_only, dtype=torch.float32)
            base = getattr(full, full.base_model_prefix)
            head = PretrainedCTCHead(
                weight=full.lm_head.weight.detach().clone(),
                bias=full.lm_head.bias.detach().clone(),
                vocab=read_checkpoint_vocab(source, local_files_only),
                blank_id=int(config.pad_token_id if config.pad_token_id is not None else 0),
            )
        else:
            base = AutoModel.from_pretrained(source, local_files_only=local_files_only, dtype=torch.float32)
            head = None
    except Exception as exc:
        raise BackboneError(f"cannot load weights from {source!r}: {exc}") from exc
    return Backbone.from_model(
        base, device=device, dtype=dtype, normalize_input=_reads_normalize(source), ctc_head=head
    )


def _local_file(source: str, filename: str) -> Path | None:
    path = Path(source) / filename
    return path if path.is_file() else None


def read_checkpoint_vocab(source: str, local_files_only: bool = True) -> list[str] | None:
    """Token strings in id order from the checkpoint's ``vocab.json``, if it has one."""
    path = _local_file(source, "vocab.json")
    if path is None:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "vocab.json", local_files_only=local_files_only))
        except Exception:
            return None
    mapping = json.loads(path.read_text(encoding="utf-8"))
    if mapping and all(isinstance(v, dict) for v in mapping.values()):  # multilingual: {lang: {tok: id}}
        return None
    return vocab_in_id_order(mapping)


def vocab_in_id_order(mapping: dict[str, int]) -> list[str]:
    """``{token: id}`` (a ``vocab.json``) -> the tokens in id order."""
    return [token for token, _ in sorted(mapping.items(), key=lambda item: item[1])]


def _reads_normalize(source: str) -> bool:
    """``do_normalize`` from ``preprocessor_config.json`` (True when absent, as for most checkpoints)."""
    path = _local_file(source, "preprocessor_config.json")
    if path is None:
        return True
    return bool(json.loads(path.read_text(encoding="utf-8")).get("do_normalize", True))
