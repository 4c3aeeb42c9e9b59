import json
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from helpers import classify_spec, ctc_spec, tiny_backbone
from router_core.errors import (
    ChecksumMismatchError,
    FingerprintMismatchError,
    InvalidMaskNameError,
    LayerShapeMismatchError,
    MaskFormatError,
    TruncatedMaskFileError,
    UnsupportedFormatVersionError,
)
from router_core.heads import HeadSpec
from router_core.kernels.bits import pack_bits
from router_core.mask_builder import build_mask, random_mask, topk_keep
from router_core.mask_file import FORMAT_VERSION, METADATA_KEY, _checksum, check_compatible, decode_mask, encode_mask


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def _mask(bb, name="fr", keep=0.9, spec=None, attention=False):
    return random_mask(bb.spec(), name, spec or ctc_spec(), bb.default_layer_names(attention), keep, seed=7)


def _stats_spec():
    return HeadSpec(kind="classify", labels=["a", "b", "c"], pooling="mean_std", layer_mix=True)


def _concat_spec():
    return HeadSpec(kind="classify", labels=["a", "b", "c"], pooling="mean_std", layer_concat=True)


@pytest.mark.parametrize("spec", [ctc_spec(), classify_spec(4), _stats_spec(), _concat_spec()],
                         ids=["ctc", "classify", "mixed-stats", "concat-stats"])
def test_round_trip_keeps_everything(bb, spec):
    mask = _mask(bb, spec=spec, attention=True)
    mask.metrics = {"cer": 0.05, "steps": 1000}
    back = decode_mask(encode_mask(mask))
    assert back.metadata() == mask.metadata()
    assert back.kind == spec.kind and back.fingerprint == bb.fingerprint
    for name, bits in mask.layer_bits.items():
        assert torch.equal(back.layer_bits[name], bits)
    assert torch.equal(back.head_weight, mask.head_weight)
    assert back.head == spec
    if spec.layer_mix:
        assert torch.equal(back.head_layer_weights, mask.head_layer_weights)
    check_compatible(back, bb.spec())


def test_a_file_is_written_as_the_lowest_version_that_holds_it(bb):
    """Only a head that reads all layers side by side needs version 4; every other mask stays version 3,
    readable by replicas of the previous release (which share one Redis registry during an upgrade)."""
    for spec, version in ((ctc_spec(), 3), (_stats_spec(), 3), (_concat_spec(), 4)):
        meta = decode_mask(encode_mask(_mask(bb, spec=spec))).metadata()
        assert meta["format_version"] == version
        assert ("layer_concat" in meta) == (version == 4)
    assert FORMAT_VERSION == 4


def test_version_1_files_still_load_as_mean_pooled_last_layer_heads(bb):
    mask = _mask(bb, spec=classify_spec(4))
    meta = {k: v for k, v in mask.metadata().items() if k not in ("pooling", "layer_mix")}
    meta["format_version"] = 1
    tensors = mask.tensors()
    meta["checksum"] = _checksum(meta, tensors)
    back = decode_mask(st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    assert back.head.pooling == "mean" and not back.head.layer_mix and back.head_layer_weights is None
    check_compatible(back, bb.spec())


def test_head_that_does_not_fit_the_backbone_is_refused(bb):
    spec = bb.spec()
    mask = _mask(bb, spec=_stats_spec())
    mask.head_layer_weights = torch.zeros(spec.num_hidden_states + 2)
    with pytest.raises(LayerShapeMismatchError, match=f"mixes {spec.num_hidden_states + 2} hidden states"):
        check_compatible(decode_mask(encode_mask(mask)), spec)
    mask = _mask(bb, spec=_stats_spec())
    mask.head_weight = torch.zeros(3, spec.hidden_size)  # mean_std pooling needs 2D inputs
    with pytest.raises(LayerShapeMismatchError, match=f"takes {spec.hidden_size} features"):
        check_compatible(decode_mask(encode_mask(mask)), spec)
    mask.head_layer_weights = None
    with pytest.raises(MaskFormatError, match="layer_weights"):
        decode_mask(encode_mask(mask))
    mask = _mask(bb, spec=_concat_spec())
    assert mask.head_weight.shape[1] == 2 * spec.hidden_size * spec.num_hidden_states
    mask.head_weight = torch.zeros(3, 2 * spec.hidden_size)  # a mixed head's width: one state's statistics
    with pytest.raises(LayerShapeMismatchError, match=f"with {spec.num_hidden_states} hidden states"):
        check_compatible(decode_mask(encode_mask(mask)), spec)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 1.0])
def test_keep_ratio_is_exact_per_layer(bb, keep):
    mask = _mask(bb, keep=keep)
    for name, (n, k) in mask.layer_shapes.items():
        assert mask.keep_ratios[name] == round(keep * n * k) / (n * k)


def test_topk_keep_keeps_the_largest_magnitudes():
    scores = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.0]])
    assert topk_keep(scores, 0.5).tolist() == [[False, True, True], [True, False, False]]


def test_truncated_garbage_and_foreign_files_are_refused(bb):
    data = encode_mask(_mask(bb))
    with pytest.raises(TruncatedMaskFileError):
        decode_mask(data[: len(data) // 2])
    with pytest.raises(TruncatedMaskFileError):
        decode_mask(b"RIFF1234WAVEfmt ")
    with pytest.raises(TruncatedMaskFileError):
        decode_mask(b"")
    with pytest.raises(MaskFormatError, match="no metadata|no 's3router'"):
        decode_mask(st_save({"x": torch.zeros(2)}))


def test_flipped_byte_fails_the_checksum(bb):
    data = bytearray(encode_mask(_mask(bb)))
    data[-3] ^= 0xFF  # inside the tensor payload
    with pytest.raises(ChecksumMismatchError):
        decode_mask(bytes(data))


def _rewrite_meta(data: bytes, **changes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    meta.update(changes)
    header["__metadata__"][METADATA_KEY] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def test_unknown_version_is_refused(bb):
    data = _rewrite_meta(encode_mask(_mask(bb)), format_version=FORMAT_VERSION + 1)
    with pytest.raises(UnsupportedFormatVersionError, match="version"):
        decode_mask(data)


def test_edited_metadata_fails_the_checksum(bb):
    data = _rewrite_meta(encode_mask(_mask(bb)), name="de")
    with pytest.raises(ChecksumMismatchError):
        decode_mask(data)


def test_mask_for_another_backbone_is_refused_naming_the_fingerprints(bb):
    other = tiny_backbone(seed=5)
    mask = decode_mask(encode_mask(_mask(other)))
    with pytest.raises(FingerprintMismatchError, match=other.fingerprint):
        check_compatible(mask, bb.spec())


def test_wrong_layer_shape_or_unknown_layer_is_refused(bb):
    spec = bb.spec()
    layer = "encoder.layers.0.feed_forward.intermediate_dense"
    wrong = {layer: torch.ones(spec.layer_shapes[layer][0], 5, dtype=torch.bool)}
    mask = build_mask(spec, "x", ctc_spec(), torch.zeros(12, 32), torch.zeros(12), {})
    mask.layer_shapes = {layer: (wrong[layer].shape[0], 5)}
    mask.layer_bits = {layer: pack_bits(wrong[layer])}
    with pytest.raises(LayerShapeMismatchError, match=layer):
        check_compatible(decode_mask(encode_mask(mask)), spec)
    mask.layer_shapes = {"encoder.layers.9.feed_forward.output_dense": (37, 5)}
    mask.layer_bits = {"encoder.layers.9.feed_forward.output_dense": pack_bits(torch.ones(37, 5, dtype=torch.bool))}
    with pytest.raises(LayerShapeMismatchError, match="does not have"):
        check_compatible(decode_mask(encode_mask(mask)), spec)


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "x" * 200, ".hidden", "a b"])
def test_bad_names_are_refused(bb, name):
    with pytest.raises(InvalidMaskNameError):
        _mask(bb, name=name)
