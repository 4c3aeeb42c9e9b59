"""The mask file: one safetensors file (never pickle) with packed bits, head tensors and JSON metadata.

Layout (format version 4, written only for ``layer_concat`` heads; every other mask is written as
version 3; versions 1 and 2, which predate ``pooling``/``layer_mix`` and the language model, still load):

* tensors ``bits/<layer name>`` — ``uint8 [N, ceil(K/8)]`` per masked layer (bit order in
  :mod:`router_core.kernels.bits`); ``head/weight`` ``[O, D]`` (``[O, 2D]`` with ``mean_std``
  pooling) and ``head/bias`` ``[O]``; with ``layer_mix``, ``head/layer_weights`` ``[S]``;
* safetensors metadata key ``s3router`` — JSON with ``format_version``, ``name``, ``kind``
  (``ctc`` | ``classify``), ``fingerprint`` (of the backbone), ``layers`` (``{name: [N, K]}``),
  ``keep_ratios`` (``{name: kept / (N*K)}``), ``vocab`` / ``labels``, ``blank_id``, ``word_delimiter``,
  ``pooling``, ``layer_mix``, (version 4) ``layer_concat``, ``created_at`` (ISO 8601, UTC), ``metrics``,
  ``lm`` and ``checksum``;
* optionally (CTC masks) a character language model for beam search: tensors ``lm/ngrams``,
  ``lm/logprob``, ``lm/contexts``, ``lm/backoff`` (:meth:`CharNgramLM.to_tensors`) and metadata ``lm``
  = ``{order, tokens, alpha, beta, beam_width, token_prune, max_candidates, info}``; ``null`` without one;
* ``checksum`` = SHA-256 over the canonical JSON of the metadata without ``checksum``, then, for each
  tensor in name order, its name, dtype, shape and bytes.

:func:`decode_mask` refuses a truncated or foreign file, an unknown version and a bad checksum;
:func:`check_compatible` refuses a mask whose fingerprint or layer shapes differ from the live backbone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from router_core.backbone import BackboneSpec
from router_core.char_lm import CharNgramLM
from router_core.ctc_beam import BeamSettings, LMDecoding
from router_core.errors import (
    ChecksumMismatchError,
    FingerprintMismatchError,
    InvalidInputError,
    InvalidMaskNameError,
    LayerShapeMismatchError,
    MaskFormatError,
    TruncatedMaskFileError,
    UnsupportedFormatVersionError,
)
from router_core.heads import HeadSpec, MaskKind
from router_core.kernels.bits import count_kept, packed_row_bytes

FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
# A file is written as the lowest version that holds it, so that replicas one release behind (a rolling
# upgrade, one Redis registry) still read every mask that does not need the newer format.
_PLAIN_VERSION = 3  # what a mask whose head needs nothing of version 4 (layer_concat) is written as
METADATA_KEY = "s3router"
# Letters, digits, '_', '-', and single dots between them; starts with a letter or digit; at most 128.
# Anchored for JSON Schema and pydantic (the HTTP API declares it); matched whole here ("$" admits a "\n").
MASK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$"
MASK_NAME_MAX = 128
_NAME_RE = re.compile(MASK_NAME_PATTERN.removeprefix("^").removesuffix("$"))


def validate_mask_name(name: str) -> str:
    """A mask name is 1-128 letters, digits, '_', '-' and single dots between them, starting with a letter
    or digit (so it is a safe file name and Redis key)."""
    if not isinstance(name, str) or len(name) > MASK_NAME_MAX or not _NAME_RE.fullmatch(name):
        raise InvalidMaskNameError(
            f"invalid mask name {name!r}: use 1-{MASK_NAME_MAX} letters, digits, '_', '-' or single dots "
            "between them, starting with a letter or digit"
        )
    return name


@dataclass
class RoutingMask:
    """One language's or task's mask over the backbone plus its output head (host or device tensors)."""

    name: str
    head: HeadSpec
    head_weight: torch.Tensor  # [O, D]
    head_bias: torch.Tensor  # [O]
    layer_bits: dict[str, torch.Tensor]  # name -> uint8 [N, ceil(K/8)]
    layer_shapes: dict[str, tuple[int, int]]  # name -> (N, K)
    fingerprint: str
    keep_ratios: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    head_layer_weights: torch.Tensor | None = None  # [S], with ``head.layer_mix``
    lm: LMDecoding | None = None  # CTC only: a character language model for beam search

    def __post_init__(self) -> None:
        validate_mask_name(self.name)
        if not self.keep_ratios:
            self.keep_ratios = {
                n: count_kept(b) / (self.layer_shapes[n][0] * self.layer_shapes[n][1])
                for n, b in self.layer_bits.items()
            }

    @property
    def kind(self) -> MaskKind:
        return self.head.kind

    @property
    def nbytes(self) -> int:
        tensors = [self.head_weight, self.head_bias, *self.layer_bits.values()]
        if self.head_layer_weights is not None:
            tensors.append(self.head_layer_weights)
        return sum(t.numel() * t.element_size() for t in tensors)

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata (without checksum) as written to and read from the file."""
        return {
            "format_version": FORMAT_VERSION if self.head.layer_concat else _PLAIN_VERSION,
            "name": self.name,
            "kind": self.head.kind,
            "fingerprint": self.fingerprint,
            "layers": {n: list(s) for n, s in self.layer_shapes.items()},
            "keep_ratios": self.keep_ratios,
            "vocab": self.head.vocab,
            "labels": self.head.labels,
            "blank_id": self.head.blank_id,
            "word_delimiter": self.head.word_delimiter,
            "pooling": self.head.pooling,
            "layer_mix": self.head.layer_mix,
            **({"layer_concat": True} if self.head.layer_concat else {}),
            "created_at": self.created_at,
            "metrics": self.metrics,
            "lm": None if self.lm is None else self.lm.metadata(),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"bits/{n}": b for n, b in self.layer_bits.items()}
        out["head/weight"] = self.head_weight
        out["head/bias"] = self.head_bias
        if self.head_layer_weights is not None:
            out["head/layer_weights"] = self.head_layer_weights
        if self.lm is not None:
            out.update({f"lm/{k}": v for k, v in self.lm.model.to_tensors().items()})
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def _checksum(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def encode_mask(mask: RoutingMask) -> bytes:
    """Serialise ``mask`` to the bytes of a mask file."""
    meta = mask.metadata()
    tensors = mask.tensors()
    meta["checksum"] = _checksum(meta, tensors)
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def _read_header_metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise TruncatedMaskFileError(f"mask file is {len(data)} bytes: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise TruncatedMaskFileError(
            f"mask file is truncated: header says {header_len} bytes, only {len(data) - 8} follow"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TruncatedMaskFileError(f"mask file header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise MaskFormatError("not an s3router mask file: the safetensors header has no metadata")
    return header["__metadata__"]


def decode_mask(data: bytes) -> RoutingMask:
    """Parse and verify a mask file's bytes (structure, version, checksum) into a host-side mask."""
    raw = _read_header_metadata(data).get(METADATA_KEY)
    if raw is None:
        raise MaskFormatError(f"not an s3router mask file: no {METADATA_KEY!r} metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MaskFormatError(f"mask metadata is not valid JSON: {exc}") from exc
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise UnsupportedFormatVersionError(
            f"mask format version {version!r} is not supported (this build reads versions {READABLE_VERSIONS})"
        )
    try:
        tensors = st_load(data)
    except Exception as exc:
        raise TruncatedMaskFileError(f"mask file tensors cannot be read (truncated?): {exc}") from exc
    stored = meta.pop("checksum", None)
    if stored != _checksum(meta, tensors):
        raise ChecksumMismatchError("mask file checksum does not match its contents (corrupted or edited)")
    try:
        head = HeadSpec(
            kind=meta["kind"],
            vocab=list(meta["vocab"]),
            labels=list(meta["labels"]),
            blank_id=int(meta["blank_id"]),
            word_delimiter=str(meta["word_delimiter"]),
            pooling=str(meta.get("pooling", "mean")),
            layer_mix=bool(meta.get("layer_mix", False)),
            layer_concat=bool(meta.get("layer_concat", False)),
        )
        head.validate()
        shapes = {n: (int(s[0]), int(s[1])) for n, s in meta["layers"].items()}
        bits = {n: tensors[f"bits/{n}"] for n in shapes}
        mask = RoutingMask(
            name=meta["name"],
            head=head,
            head_weight=tensors["head/weight"],
            head_bias=tensors["head/bias"],
            layer_bits=bits,
            layer_shapes=shapes,
            fingerprint=meta["fingerprint"],
            keep_ratios={n: float(r) for n, r in meta["keep_ratios"].items()},
            metrics=dict(meta.get("metrics") or {}),
            created_at=str(meta["created_at"]),
            head_layer_weights=tensors["head/layer_weights"] if head.layer_mix else None,
            lm=_read_lm(meta.get("lm"), tensors),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MaskFormatError(f"mask file is missing or has a malformed field: {exc}") from exc
    _check_internal_shapes(mask)
    return mask


def _read_lm(meta: dict[str, Any] | None, tensors: dict[str, torch.Tensor]) -> LMDecoding | None:
    if meta is None:
        return None
    lm_tensors = {k.removeprefix("lm/"): v for k, v in tensors.items() if k.startswith("lm/")}
    fields = ("beam_width", "alpha", "beta", "token_prune", "max_candidates")
    try:
        model = CharNgramLM.from_tensors(int(meta["order"]), list(meta["tokens"]), lm_tensors)
        settings = BeamSettings(**{f: type(getattr(BeamSettings, f))(meta[f]) for f in fields})
    except InvalidInputError as exc:
        raise MaskFormatError(f"mask file language model: {exc}") from exc
    return LMDecoding(model, settings, dict(meta.get("info") or {}))


def _check_internal_shapes(mask: RoutingMask) -> None:
    for name, (n_out, k) in mask.layer_shapes.items():
        bits = mask.layer_bits[name]
        if bits.dtype != torch.uint8 or tuple(bits.shape) != (n_out, packed_row_bytes(k)):
            raise MaskFormatError(f"layer {name}: bits {bits.dtype} {tuple(bits.shape)} do not match [{n_out}, {k}]")
    outputs = mask.head.num_outputs
    if mask.head_weight.dim() != 2 or mask.head_weight.shape[0] != outputs or tuple(mask.head_bias.shape) != (outputs,):
        raise MaskFormatError(
            f"head tensors {tuple(mask.head_weight.shape)}/{tuple(mask.head_bias.shape)} do not match {outputs} outputs"
        )
    mix = mask.head_layer_weights
    if mask.head.layer_mix != (mix is not None) or (mix is not None and mix.dim() != 1):
        raise MaskFormatError(f"head layer weights {None if mix is None else tuple(mix.shape)} do not match "
                              f"layer_mix={mask.head.layer_mix}")


def check_compatible(mask: RoutingMask, spec: BackboneSpec) -> None:
    """Refuse a mask that was not learned on this backbone, naming what differs."""
    if mask.fingerprint != spec.fingerprint:
        raise FingerprintMismatchError(
            f"mask {mask.name!r} was learned on backbone {mask.fingerprint}, "
            f"but the live backbone is {spec.fingerprint}"
        )
    for name, shape in mask.layer_shapes.items():
        live = spec.layer_shapes.get(name)
        if live is None:
            raise LayerShapeMismatchError(f"mask {mask.name!r} names layer {name!r}, which the backbone does not have")
        if live != shape:
            raise LayerShapeMismatchError(
                f"mask {mask.name!r} layer {name}: shape {list(shape)} but the backbone has {list(live)}"
            )
    width = mask.head.input_size(spec.hidden_size, spec.num_hidden_states)
    if mask.head_weight.shape[1] != width:
        raise LayerShapeMismatchError(
            f"mask {mask.name!r} head takes {mask.head_weight.shape[1]} features, but {width} come from a backbone "
            f"of hidden size {spec.hidden_size} with {spec.num_hidden_states} hidden states"
        )
    mix = mask.head_layer_weights
    if mix is not None and mix.shape[0] != spec.num_hidden_states:
        raise LayerShapeMismatchError(
            f"mask {mask.name!r} head mixes {mix.shape[0]} hidden states; the backbone has {spec.num_hidden_states}"
        )
