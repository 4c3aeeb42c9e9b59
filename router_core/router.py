"""``Router``: the public in-process API — a batch of waveforms, one mask name each, one forward pass.

Items are ordered by mask so that items sharing a mask form one contiguous segment; the unmasked
parts of the backbone (feature encoder, attention, norms) run once for the whole batch, and every
maskable linear applies each segment's mask through the kernel backend chosen once at construction.
Outputs come back in the caller's order.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from router_core.backbone import SAMPLE_RATE, Backbone
from router_core.decode_pool import BeamJob
from router_core.decoding import Classification, Transcript, classify, ctc_greedy_decode
from router_core.errors import InvalidInputError, MaskKindError, S3RouterError
from router_core.heads import MaskKind
from router_core.kernels.backend import KernelBackend, select_backend
from router_core.kernels.reference import Segments
from router_core.maskable import RoutingPlan, routing
from router_core.registry import LoadedMask, MaskRegistry


@dataclass
class RoutedOutput:
    """One item's result: its mask, raw head output, and the decoded answer."""

    mask_name: str
    kind: MaskKind
    logits: torch.Tensor  # CTC: [T_i, V]; classification: [L]
    audio_seconds: float
    transcript: Transcript | None = None  # None while ``beam`` is pending
    classification: Classification | None = None
    decoder: str | None = None  # CTC: "beam+lm" or "greedy"
    beam: BeamJob | None = None  # a beam search left to the caller (``forward(defer_beam=True)``)


DECODERS = ("auto", "greedy")


class Router:
    """One frozen backbone, many masks, mixed-mask batches.

    ``decoder``: ``auto`` decodes a CTC mask that carries a language model with its beam search and
    any other with greedy CTC; ``greedy`` always decodes greedily (no language model).
    """

    def __init__(
        self,
        backbone: Backbone,
        registry: MaskRegistry,
        backend: KernelBackend | None = None,
        decoder: str = "auto",
    ) -> None:
        if decoder not in DECODERS:
            raise InvalidInputError(f"decoder must be one of {DECODERS}, not {decoder!r}")
        if registry.device != backbone.device:
            raise InvalidInputError(
                f"the registry keeps masks on {registry.device} but the backbone runs on {backbone.device}"
            )
        if registry.spec.fingerprint != backbone.fingerprint:
            raise InvalidInputError("the registry was built for another backbone (fingerprints differ)")
        self.backbone = backbone
        self.registry = registry
        self.backend = backend or select_backend(backbone.device)
        self.decoder = decoder

    def prepare_kernels(self, max_batch: int, max_seconds: float) -> None:
        """Let the kernel backend get ready for batches of up to ``max_batch`` items of ``max_seconds``
        each (the Triton backend autotunes its tiles for every maskable layer shape and batch size now,
        instead of on the first request of each size)."""
        frames = int(max_seconds / self.backbone.seconds_per_frame) + 1
        shapes = {(layer.out_features, layer.in_features) for layer in self.backbone.layers.values()}
        self.backend.prepare(shapes, self.backbone.dtype, self.backbone.device, max_batch * frames)

    def _check_waves(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        checked = []
        for i, wave in enumerate(waves):
            if not isinstance(wave, torch.Tensor) or wave.dim() != 1:
                raise InvalidInputError(f"item {i}: expected a 1-D 16 kHz waveform tensor")
            if wave.shape[0] < self.backbone.min_samples:
                raise InvalidInputError(
                    f"item {i}: {wave.shape[0]} samples is too short; at least {self.backbone.min_samples} needed"
                )
            if not torch.isfinite(wave).all():
                raise InvalidInputError(f"item {i}: waveform contains NaN or infinite samples")
            checked.append(wave)
        return checked

    def plan(self, masks: Sequence[LoadedMask]) -> tuple[list[int], RoutingPlan]:
        """Order items by mask and build the per-layer routing plan for that order."""
        order = sorted(range(len(masks)), key=lambda i: masks[i].name)
        unique: list[LoadedMask] = []
        mask_ids: list[int] = []
        offsets = [0]
        for position, item in enumerate(order):
            if not unique or unique[-1].name != masks[item].name:
                unique.append(masks[item])
                mask_ids.append(len(unique) - 1)
                offsets.append(position + 1)
            else:
                offsets[-1] = position + 1
        layer_names = {n for m in unique for n in m.mask.layer_bits}
        layer_bits = {n: [m.mask.layer_bits.get(n) for m in unique] for n in layer_names}
        return order, RoutingPlan(Segments(tuple(offsets), tuple(mask_ids)), layer_bits, self.backend)

    def forward(
        self,
        waves: Sequence[torch.Tensor],
        mask_names: Sequence[str],
        expect_kind: MaskKind | None = None,
        defer_beam: bool = False,
    ) -> list[RoutedOutput]:
        """Run ``waves[i]`` (1-D, 16 kHz) through mask ``mask_names[i]``; outputs in input order.

        ``expect_kind`` (``ctc`` or ``classify``), when given, refuses masks of the other kind.
        ``defer_beam``: a CTC item whose mask has a language model comes back with its log posteriors in
        ``logits``, ``transcript=None`` and the search to run in ``beam`` (off this thread: a
        :class:`~router_core.decode_pool.DecodePool`); greedy and classification items are decoded here.
        """
        if len(waves) != len(mask_names):
            raise InvalidInputError(f"{len(waves)} waveforms but {len(mask_names)} mask names")
        if not waves:
            return []
        checked = self._check_waves(waves)
        masks = [self.registry.get(name) for name in mask_names]
        if expect_kind is not None:
            for m in masks:
                if m.kind != expect_kind:
                    raise MaskKindError(f"mask {m.name!r} is a {m.kind} mask; this call needs a {expect_kind} mask")
        order, plan = self.plan(masks)
        all_layers = any(m.mask.head.all_layers for m in masks)
        with routing(plan):
            # [B, T, D] or, when a head mixes layers, [S + 1, B, T, D]; frames [B]
            hidden, frames = self.backbone.encode([checked[i] for i in order], all_layers)
        logits = self._heads(hidden, frames, [masks[i] for i in order], plan.segments)
        results: list[RoutedOutput | None] = [None] * len(waves)
        for row, item in enumerate(order):
            results[item] = self._decode(masks[item], logits[row], checked[item], defer_beam)
        done = [r for r in results if r is not None]
        if len(done) != len(waves):  # a routing bug must not hand callers someone else's answer
            raise S3RouterError(f"the router returned {len(done)} outputs, expected {len(waves)}")
        return done

    @staticmethod
    def _heads(
        hidden: torch.Tensor, frames: torch.Tensor, masks: Sequence[LoadedMask], segments: Segments
    ) -> list[torch.Tensor]:
        """Each row's head output on the host, float32: CTC ``[T_i, V]`` (its valid frames), classification
        ``[L]``. The rows of one segment share a mask: its head runs once over them. Every output then
        reaches the host in one copy (one device sync per batch, not one per item)."""
        outputs = []
        with torch.inference_mode():
            for start, end in itertools.pairwise(segments.offsets):
                rows = hidden[..., start:end, :, :]  # [n, T, D] or [S + 1, n, T, D]
                outputs.append(masks[start].head(rows, frames[start:end]).float())  # [n, T, V] or [n, L]
            host = torch.cat([o.reshape(-1) for o in outputs]).cpu()  # one transfer
        per_row: list[torch.Tensor] = []
        offset = 0
        for out in outputs:
            for row in host[offset : offset + out.numel()].view(out.shape):  # [T, V] or [L]
                per_row.append(row[: int(frames[len(per_row)])] if row.dim() == 2 else row)
            offset += out.numel()
        return per_row

    def _decode(self, loaded: LoadedMask, logits: torch.Tensor, wave: torch.Tensor, defer_beam: bool) -> RoutedOutput:
        out = RoutedOutput(loaded.name, loaded.kind, logits, wave.shape[0] / SAMPLE_RATE)
        lm = loaded.mask.lm
        seconds = self.backbone.seconds_per_frame
        if loaded.kind == "ctc" and lm is not None and self.decoder == "auto":
            job = BeamJob(lm, loaded.mask.head, seconds)
            out.decoder = "beam+lm"
            if defer_beam:
                out.beam = job
            else:
                out.transcript = job.run(logits)
        elif loaded.kind == "ctc":
            out.transcript = ctc_greedy_decode(logits, loaded.mask.head, seconds)
            out.decoder = "greedy"
        else:
            out.classification = classify(logits, loaded.mask.head)
        return out

    def transcribe(self, waves: Sequence[torch.Tensor], mask_names: Sequence[str]) -> list[Transcript]:
        return [o.transcript for o in self.forward(waves, mask_names, "ctc") if o.transcript is not None]

    def classify(self, waves: Sequence[torch.Tensor], mask_names: Sequence[str]) -> list[Classification]:
        return [o.classification for o in self.forward(waves, mask_names, "classify") if o.classification is not None]
