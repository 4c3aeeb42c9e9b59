import copy

import pytest
import torch

from helpers import add_masks, ctc_spec, tiny_backbone, tiny_model, waves
from router_core.backbone import Backbone
from router_core.errors import InvalidInputError, MaskKindError, MaskNotFoundError
from router_core.kernels.backend import select_backend
from router_core.kernels.bits import unpack_bits
from router_core.mask_builder import random_mask
from router_core.mask_file import encode_mask
from router_core.router import Router


def _router(bb, registry, backend="cpu"):
    return Router(bb, registry, select_backend(bb.device, backend))


def _device_for(backend: str) -> str:
    """Triton runs on the GPU where there is one, else under the interpreter on the CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _dense_masked_copy(bb: Backbone, mask) -> Backbone:
    """The same backbone with W * M baked into the weights: the ground truth for one mask."""
    clone = copy.deepcopy(bb)
    with torch.no_grad():
        for name, bits in mask.layer_bits.items():
            layer = clone.layers[name]
            layer.weight.mul_(unpack_bits(bits.cpu(), layer.in_features).to(layer.weight.dtype))
    return clone


def test_all_keep_mask_equals_the_unmasked_model(make_registry):
    bb = tiny_backbone()
    registry = make_registry(bb)
    add_masks(registry, bb, ["keep_all"], keep=1.0, attention=True)
    wave = waves(3000)[0]
    out = _router(bb, registry).forward([wave], ["keep_all"])[0]
    hidden, frames = bb.encode([wave])  # no routing plan: plain frozen model
    head = registry.get("keep_all").head
    assert torch.allclose(out.logits, head(hidden, frames)[0], atol=1e-5)


@pytest.mark.parametrize("attention", [False, True], ids=["ffn", "ffn+attention"])
def test_router_applies_exactly_the_mask(make_registry, attention):
    bb = tiny_backbone()
    registry = make_registry(bb)
    (mask,) = add_masks(registry, bb, ["fr"], keep=0.7, attention=attention)
    wave = waves(2600)[0]
    out = _router(bb, registry).forward([wave], ["fr"])[0]
    truth = _dense_masked_copy(bb, mask)
    hidden, frames = truth.encode([wave])
    expected = registry.get("fr").head(hidden, frames)[0]
    assert torch.allclose(out.logits, expected, atol=1e-4)
    unmasked, _ = bb.encode([wave])
    assert not torch.allclose(registry.get("fr").head(unmasked, frames)[0], expected, atol=1e-3)


@pytest.mark.parametrize("arch", ["wav2vec2-group", "wav2vec2-layer", "data2vec-audio"])
@pytest.mark.parametrize("backend", ["reference", "cpu", "cpu-one-region", "triton"])
def test_mixed_mask_batch_equals_items_alone(make_registry, arch, backend, monkeypatch):
    if backend == "cpu-one-region":  # the CPU's one-region mixed path, which these short clips would not take
        from router_core.kernels import cpu as cpu_kernels

        monkeypatch.setattr(cpu_kernels, "_MIN_SEGMENT_ROWS", 1)
        backend = "cpu"
    bb = Backbone.from_model(tiny_model(arch), device=_device_for(backend))
    registry = make_registry(bb)
    add_masks(registry, bb, ["fr", "de", "cls_speaker", "cls_mix_lang", "cls_cat_voice"], keep=0.8)
    router = _router(bb, registry, backend)
    batch = waves(1600, 3211, 800, 2500, 2000, 1900, 2700)
    names = ["de", "fr", "cls_speaker", "de", "fr", "cls_mix_lang", "cls_cat_voice"]
    together = router.forward(batch, names)
    for wave, name, out in zip(batch, names, together, strict=True):
        alone = router.forward([wave], [name])[0]
        assert out.mask_name == name
        assert out.logits.shape == alone.logits.shape
        assert torch.allclose(out.logits, alone.logits, atol=1e-4 if bb.device.type == "cpu" else 2e-3)
    assert together[2].classification is not None and together[0].transcript is not None
    assert together[5].classification is not None and together[5].logits.shape == (3,)
    assert together[6].classification is not None and together[6].logits.shape == (3,)


def test_kind_unknown_mask_and_bad_input_are_refused(make_registry):
    bb = tiny_backbone()
    registry = make_registry(bb)
    add_masks(registry, bb, ["fr", "cls_speaker"])
    router = _router(bb, registry)
    with pytest.raises(MaskKindError, match="cls_speaker"):
        router.transcribe(waves(2000), ["cls_speaker"])
    with pytest.raises(MaskNotFoundError, match="available: cls_speaker, fr"):
        router.forward(waves(2000), ["xx"])
    with pytest.raises(InvalidInputError, match="too short"):
        router.forward([torch.zeros(10)], ["fr"])
    with pytest.raises(InvalidInputError, match="NaN"):
        router.forward([torch.full((2000,), float("nan"))], ["fr"])
    with pytest.raises(InvalidInputError, match="1-D"):
        router.forward([torch.zeros(2, 2000)], ["fr"])
    with pytest.raises(InvalidInputError):
        router.forward(waves(2000), ["fr", "fr"])
    assert router.forward([], []) == []
    with pytest.raises(InvalidInputError, match="another backbone"):
        Router(tiny_backbone(seed=3), registry)


def test_transcribe_returns_words_with_times(make_registry):
    bb = tiny_backbone()
    registry = make_registry(bb)
    mask = random_mask(bb.spec(), "fr", ctc_spec(), bb.default_layer_names(), 0.9, seed=3)
    mask.head_bias[0] = -10.0  # discourage blanks so random weights emit characters
    registry.put(encode_mask(mask))
    (result,) = _router(bb, registry).transcribe(waves(8000), ["fr"])
    assert result.words, "expected some words from a head that rarely predicts blank"
    assert all(0.0 <= w.start < w.end <= 8000 / 16000 + 1e-6 for w in result.words)


def test_prepare_kernels_hands_every_layer_shape_and_the_largest_batch_to_the_backend(make_registry):
    import dataclasses

    bb = tiny_backbone()
    calls = []
    backend = dataclasses.replace(select_backend(bb.device, "reference"), prepare=lambda *a: calls.append(a))
    router = Router(bb, make_registry(bb), backend)
    router.prepare_kernels(max_batch=3, max_seconds=2.0)
    ((shapes, dtype, device, max_rows),) = calls
    assert set(shapes) == {(layer.out_features, layer.in_features) for layer in bb.layers.values()}
    assert len(set(shapes)) > 1 and dtype == bb.dtype and device == bb.device
    frames_per_item = int(2.0 / bb.seconds_per_frame) + 1
    assert max_rows == 3 * frames_per_item >= bb.encode(waves(32_000))[0].shape[1] * 3


def test_forward_counts_its_outputs_against_its_inputs(make_registry, monkeypatch):
    """An output lost on the way is an error naming both counts, never a shorter list (which would hand
    the callers after it each other's answers)."""
    from router_core.errors import S3RouterError

    bb = tiny_backbone()
    registry = make_registry(bb)
    add_masks(registry, bb, ["fr", "de"])
    router = Router(bb, registry, select_backend(bb.device, "reference"))
    decode = router._decode
    monkeypatch.setattr(router, "_decode", lambda loaded, *a: None if loaded.name == "de" else decode(loaded, *a))
    with pytest.raises(S3RouterError, match="returned 1 outputs, expected 2"):
        router.forward(waves(16_000, 16_000), ["fr", "de"])
