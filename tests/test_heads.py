"""Output heads: statistics pooling, the weighted layer mix, and the hidden states they read."""

import pytest
import torch

from helpers import classify_spec, tiny_model, waves
from router_core.backbone import Backbone, zero_mean_unit_var
from router_core.errors import InvalidInputError
from router_core.heads import HeadSpec, OutputHead, folded_projection
from router_core.training.probe import PROBES, fit_probe, lda_projection


def _stats_head(layers: int = 3, hidden: int = 4) -> OutputHead:
    spec = HeadSpec(kind="classify", labels=["a", "b"], pooling="mean_std", layer_mix=True)
    torch.manual_seed(0)
    head = OutputHead(spec, hidden, layers)
    with torch.no_grad():
        head.layer_weights.copy_(torch.randn(layers))
    return head


def test_mean_std_pooling_over_a_layer_mix_matches_the_formula():
    head = _stats_head()
    hidden = torch.randn(4, 2, 6, 4)  # [S + 1, B, T, D]: S states, then the encoder output
    frames = torch.tensor([6, 4])
    out = head(hidden, frames)  # [B, L]
    mix = torch.softmax(head.layer_weights, 0)
    for b, n in enumerate(frames.tolist()):
        h = (mix[:, None, None] * hidden[:3, b, :n]).sum(0)  # [T_b, D]
        pooled = torch.cat([h.mean(0), torch.sqrt(h.var(0, unbiased=False) + 1e-5)])
        assert torch.allclose(out[b], head.proj(pooled), atol=1e-5)


def test_padding_never_reaches_a_pooled_head():
    head = _stats_head()
    hidden = torch.randn(4, 1, 5, 4)
    padded = torch.cat([hidden, 100 * torch.randn(4, 1, 7, 4)], dim=2)  # [S + 1, 1, 12, D]
    assert torch.allclose(head(hidden, torch.tensor([5])), head(padded, torch.tensor([5])), atol=1e-5)


def test_standardised_training_head_folds_into_one_plain_projection():
    head = _stats_head()
    hidden, frames = torch.randn(4, 3, 6, 4), torch.tensor([6, 5, 2])
    sample = 50 * torch.rand(64, 8) + torch.arange(8.0)  # pooled features of very different scales
    head.standardize_inputs(sample)
    assert torch.allclose(head.input_shift, sample.mean(0)) and torch.allclose(head.input_scale, sample.std(0))
    trained = head(hidden, frames)
    served = OutputHead(head.spec, 4, 3)  # what the registry builds from a mask file: no standardisation
    weight, bias = folded_projection(head.state_dict())
    with torch.no_grad():
        served.layer_weights.copy_(head.layer_weights)
        served.proj.weight.copy_(weight)
        served.proj.bias.copy_(bias)
    assert "input_shift" not in served.state_dict()
    assert torch.allclose(served(hidden, frames), trained, atol=1e-4)
    assert not torch.allclose(head.proj(head.pooled(hidden, frames)), trained, atol=1e-2)  # it did standardise
    plain = _stats_head()
    assert all(torch.equal(a, b) for a, b in zip(folded_projection(plain.state_dict()),
                                                 (plain.proj.weight, plain.proj.bias), strict=True))


def test_head_specs_refuse_what_they_cannot_do():
    with pytest.raises(InvalidInputError, match="pooling"):
        HeadSpec(kind="ctc", vocab=["<pad>", "a"], pooling="mean_std").validate()
    with pytest.raises(InvalidInputError, match="pooling"):
        HeadSpec(kind="classify", labels=["a"], pooling="max").validate()
    assert HeadSpec(kind="classify", labels=["a"], pooling="mean_std").input_size(8, 3) == 16
    assert HeadSpec(kind="classify", labels=["a"], pooling="mean_std", layer_concat=True).input_size(8, 3) == 48
    with pytest.raises(InvalidInputError, match="layer_concat"):
        HeadSpec(kind="ctc", vocab=["<pad>", "a"], layer_concat=True).validate()
    with pytest.raises(InvalidInputError, match="layer_concat"):
        HeadSpec(kind="classify", labels=["a"], layer_mix=True, layer_concat=True).validate()
    with pytest.raises(InvalidInputError, match="mixes 3 hidden states"):
        _stats_head()(torch.randn(3, 1, 5, 4), torch.tensor([5]))


@pytest.mark.parametrize("arch", ["wav2vec2-group", "wav2vec2-layer", "hubert", "wavlm", "data2vec-audio"])
def test_all_hidden_states_are_the_models_own(arch):
    """The stack ``encode(all_layers=True)`` returns is the Hugging Face model's own ``hidden_states``
    (so an exported head with a weighted layer sum computes the same thing)."""
    model = tiny_model(arch).eval()
    bb = Backbone.from_model(model)
    wave = waves(3000)[0]
    stacked, frames = bb.encode([wave], all_layers=True)  # [S + 1, 1, T, D]
    last, _ = bb.encode([wave])
    assert stacked.shape[0] - 1 == bb.num_layers + 1 == bb.spec().num_hidden_states
    assert torch.equal(stacked[-1], last)  # then the encoder output, after any final LayerNorm
    x = (zero_mean_unit_var(wave) if bb.normalize_input else wave)[None]
    with torch.no_grad():
        reference = model(x, output_hidden_states=True).hidden_states
    for mine, theirs in zip(stacked[:-1], reference, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_mixed_head_learns_through_the_layer_weights(backbone):
    from router_core.training.learner import MaskLearner

    spec = HeadSpec(kind="classify", labels=classify_spec().labels, pooling="mean_std", layer_mix=True)
    learner = MaskLearner(backbone, spec, backbone.default_layer_names(), keep_ratio=0.9)
    outputs, frames = learner(waves(1600, 2400))
    assert outputs.shape == (2, 3)
    learner.loss(outputs, frames, ["label0", "label2"]).backward()
    assert learner.head.layer_weights.grad is not None and learner.head.layer_weights.grad.abs().sum() > 0
    assert next(iter(learner.scores.parameters())).grad is not None


def test_linear_probe_separates_classes_whose_features_differ_wildly_in_scale():
    torch.manual_seed(0)
    spec = HeadSpec(kind="classify", labels=["a", "b", "c"], pooling="mean")
    head = OutputHead(spec, 6)
    labels = torch.arange(3).repeat(40)  # [120]
    centers = torch.randn(3, 6) * torch.tensor([1e-3, 1e-2, 1.0, 10.0, 100.0, 1e3])  # classes differ at every scale
    scale = torch.tensor([1e-3, 1e-2, 1.0, 10.0, 100.0, 1e3]) * 0.3
    pooled = centers[labels] + torch.randn(120, 6) * scale  # [N, F]
    assert fit_probe(head, pooled, labels) > 0.95
    fresh = centers[labels] + torch.randn(120, 6) * scale
    logits = head.proj((fresh - head.input_shift) / head.input_scale)
    assert (logits.argmax(-1) == labels).float().mean() > 0.9


def test_concatenated_layers_pool_each_hidden_state_on_its_own():
    """``layer_concat``: the pooled input is every hidden state's mean, then every one's std, side by side
    (the encoder output, the last entry of the stack, is not read twice)."""
    spec = HeadSpec(kind="classify", labels=["a", "b"], pooling="mean_std", layer_concat=True)
    head = OutputHead(spec, 4, num_hidden_states=3)
    assert head.proj.in_features == 24
    hidden = torch.randn(4, 2, 6, 4)  # [S + 1, B, T, D]
    frames = torch.tensor([6, 4])
    pooled = head.pooled(hidden, frames)  # [B, 2 * S * D]
    for b, n in enumerate(frames.tolist()):
        states = hidden[:3, b, :n]  # [S, T_b, D]
        mean = states.mean(dim=1).reshape(-1)
        std = (states.var(dim=1, unbiased=False) + 1e-5).sqrt().reshape(-1)
        assert torch.allclose(pooled[b], torch.cat([mean, std]), atol=1e-5)
    with pytest.raises(InvalidInputError, match="reads 12 features per frame"):
        head(torch.randn(3, 2, 6, 4), frames)


def _lda_reference(x, y, classes, shrinkage):
    """Shrinkage LDA written out directly (every class present): the oracle for lda_projection."""
    x = x.double()
    means = torch.stack([x[y == k].mean(dim=0) for k in range(classes)])
    centred = x - means[y]
    cov = centred.T @ centred / (len(x) - classes)
    cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(cov, means.T).T
    prior = (torch.bincount(y, minlength=classes).double() + 1) / (len(y) + classes)
    return weight, -0.5 * (weight * means).sum(dim=1) + prior.log()


@pytest.mark.parametrize("items,features", [(90, 13), (23, 61)], ids=["more-items", "more-features"])
@pytest.mark.parametrize("shrinkage", [0.05, 0.3, 1.0])
def test_lda_projection_matches_the_closed_form(items, features, shrinkage):
    """Both ways of applying the shrunk covariance's inverse (directly, and through the Gram matrix
    when features outnumber items) give the textbook LDA."""
    gen = torch.Generator().manual_seed(items + features)
    y = torch.arange(items) % 4
    x = torch.randn(4, features, generator=gen)[y] + torch.randn(items, features, generator=gen)
    weight, bias = lda_projection(x.double(), y, 4, shrinkage)
    ref_weight, ref_bias = _lda_reference(x, y, 4, shrinkage)
    assert torch.allclose(weight, ref_weight, atol=1e-8) and torch.allclose(bias, ref_bias, atol=1e-8)


def test_lda_probe_handles_an_absent_class_and_refuses_bad_settings():
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 2] * 20)  # class 1 never seen
    x = torch.randn(3, 5, generator=gen)[y] * 3 + torch.randn(40, 5, generator=gen)
    weight, bias = lda_projection(x, y, 3, 0.3)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    assert ((x @ weight.T + bias).argmax(dim=1) == y).float().mean() > 0.9
    assert (x @ weight.T + bias).argmax(dim=1).ne(1).all()  # the unseen class is never the answer here
    head = OutputHead(HeadSpec(kind="classify", labels=["a", "b", "c"]), 5)
    with pytest.raises(InvalidInputError, match="shrinkage"):
        fit_probe(head, x, y, method="lda", shrinkage=0.0)
    with pytest.raises(InvalidInputError, match="probe"):
        fit_probe(head, x, y, method="svm")


def test_lda_probe_generalises_where_softmax_regression_overfits():
    """Few items per class, many noisy features (the speaker task's shape): on fresh items from the same
    classes, the LDA probe's head is right more often than the softmax-regression probe's."""
    gen = torch.Generator().manual_seed(1)
    classes, features = 8, 200
    centers = torch.randn(classes, features, generator=gen) * 0.3

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(classes).repeat(per_class)
        return centers[y] + torch.randn(len(y), features, generator=gen), y

    train_x, train_y = sample(5)
    test_x, test_y = sample(100)
    accuracy = {}
    for method in PROBES:
        head = OutputHead(HeadSpec(kind="classify", labels=[str(i) for i in range(classes)]), features)
        fit_probe(head, train_x, train_y, method=method)
        logits = head.proj(head.standardized(test_x))
        accuracy[method] = float((logits.argmax(dim=1) == test_y).float().mean())
    assert accuracy["lda"] > accuracy["softmax"] + 0.04, accuracy  # 0.76 against 0.66 here
