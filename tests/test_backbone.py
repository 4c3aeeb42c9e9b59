import json

import pytest
import torch
from transformers import Wav2Vec2ForCTC

from helpers import ARCHS, CTC_VOCAB, tiny_config, tiny_model, waves
from router_core.backbone import Backbone, load_backbone
from router_core.errors import BackboneError
from router_core.maskable import MaskedLinear, maskable_layer_names


@pytest.mark.parametrize("arch", list(ARCHS))
def test_from_pretrained_folder_is_frozen_and_fingerprinted(tmp_path, arch):
    model = tiny_model(arch)
    model.save_pretrained(tmp_path / arch)
    bb = load_backbone(tmp_path / arch, local_files_only=True)
    assert not bb.model.training
    assert all(not p.requires_grad for p in bb.model.parameters())
    assert bb.fingerprint == Backbone.from_model(tiny_model(arch)).fingerprint  # same weights, same print
    assert bb.fingerprint != Backbone.from_model(tiny_model(arch, seed=1)).fingerprint
    assert list(bb.spec().layer_shapes) == maskable_layer_names(2, include_attention=True)
    assert all(isinstance(m, MaskedLinear) for m in bb.layers.values())
    # the masked-linear wrapper leaves the original state-dict keys in place
    assert "encoder.layers.0.feed_forward.intermediate_dense.weight" in bb.model.state_dict()


def test_fingerprint_is_independent_of_serving_dtype():
    fp32 = Backbone.from_model(tiny_model(), dtype=torch.float32)
    bf16 = Backbone.from_model(tiny_model(), dtype=torch.bfloat16)
    assert fp32.fingerprint == bf16.fingerprint
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


def test_ctc_checkpoint_lm_head_becomes_a_head(tmp_path):
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(tiny_config("wav2vec2-group"))
    model.save_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(CTC_VOCAB)}))
    bb = load_backbone(tmp_path, local_files_only=True)
    assert bb.ctc_head is not None
    assert torch.equal(bb.ctc_head.weight, model.lm_head.weight)
    assert bb.ctc_head.vocab == CTC_VOCAB
    # the base model inside the CTC checkpoint is what got loaded: same hidden states
    wave = waves(4000)[0]
    hidden, _ = bb.encode([wave])
    with torch.inference_mode():
        normed = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
        expected = model.eval().wav2vec2(normed[None]).last_hidden_state
    assert torch.allclose(hidden, expected, atol=1e-5)


def test_unsupported_or_missing_checkpoints_are_refused(tmp_path):
    with pytest.raises(BackboneError, match="cannot read a model config"):
        load_backbone(tmp_path / "nothing-here", local_files_only=True)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BackboneError, match="unsupported model_type"):
        load_backbone(tmp_path / "bert", local_files_only=True)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_padded_batch_encode_equals_items_alone(arch):
    bb = Backbone.from_model(tiny_model(arch))
    batch = waves(1600, 3211, 800, 2500)
    hidden, frames = bb.encode(batch)
    for i, wave in enumerate(batch):
        alone, alone_frames = bb.encode([wave])
        assert int(alone_frames[0]) == int(frames[i])
        assert torch.allclose(hidden[i, : frames[i]], alone[0, : frames[i]], atol=1e-4)
