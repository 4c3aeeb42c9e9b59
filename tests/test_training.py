"""Mask learning, the finetune baseline, eval, export, prune and analyze on a tiny model and synthetic audio."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import pipeline

from helpers import classify_spec, ctc_spec, tiny_model
from router_core.errors import InvalidInputError, UnsupportedAudioError
from router_core.mask_builder import random_mask
from router_core.mask_file import decode_mask, encode_mask
from router_core.registry import DirectoryStore, MaskRegistry
from router_core.router import Router
from router_core.training.analyze import mask_similarity, save_heatmap
from router_core.training.export import export_mask
from router_core.training.learner import MaskLearner
from router_core.training.manifest import Example, read_manifest
from router_core.training.trainer import TrainConfig, head_spec_for, train_mask
from service.cli import main

TEXTS = ["abc", "bad cab", "ace"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 short clips: three 'words' as tones of different pitch; JSONL (ctc) and TSV (classify) manifests."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    ctc, cls = [], ["audio\tlabel"]
    for i in range(12):
        pitch = 0.03 + 0.02 * (i % 3)
        wave = 0.3 * np.sin(np.arange(6400) * pitch) + 0.02 * rng.standard_normal(6400)
        sf.write(root / f"clip{i}.wav", wave.astype("float32"), 16000)
        ctc.append(json.dumps({"audio": f"clip{i}.wav", "text": TEXTS[i % 3]}))
        cls.append(f"clip{i}.wav\tspeaker{i % 3}")
    (root / "ctc.jsonl").write_text("\n".join(ctc))
    (root / "cls.tsv").write_text("\n".join(cls))
    model = tiny_model("wav2vec2-layer")
    model.save_pretrained(root / "backbone")
    return root


def _backbone(corpus):
    from router_core.backbone import load_backbone

    return load_backbone(corpus / "backbone", local_files_only=True)


def _config(tmp_path, **kw):
    base = dict(name="fr", kind="ctc", steps=30, eval_every=10, lr=1e-2, score_lr=1e-2, progress=False,
                work_dir=str(tmp_path / "run"), batch_size=4)
    return TrainConfig(**{**base, **kw})


def test_training_lowers_the_loss_and_keeps_exactly_k(corpus, tmp_path):
    examples = read_manifest(corpus / "ctc.jsonl", "ctc")
    result = train_mask(_backbone(corpus), _config(tmp_path, keep=0.8), examples, examples)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    for name, (n, k) in result.mask.layer_shapes.items():
        assert result.mask.keep_ratios[name] == round(0.8 * n * k) / (n * k)
    assert result.mask.metrics["dev_cer"] == result.best_metrics["cer"]


def test_gradients_reach_only_scores_and_head(corpus):
    backbone = _backbone(corpus)
    learner = MaskLearner(backbone, ctc_spec(), backbone.default_layer_names(), 0.9)
    wave = torch.randn(6400)
    outputs, frames = learner([wave, wave[:5000]])
    learner.loss(outputs, frames, ["abc", "bad"]).backward()
    assert all(p.grad is None for p in backbone.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.scores.parameters())
    assert learner.head.proj.weight.grad is not None


@pytest.mark.parametrize(("kind", "manifest"), [("ctc", "ctc.jsonl"), ("classify", "cls.tsv")])
def test_resume_continues_from_the_saved_step(corpus, tmp_path, kind, manifest):
    examples = read_manifest(corpus / manifest, kind)
    first = train_mask(_backbone(corpus), _config(tmp_path, kind=kind, steps=10, eval_every=5), examples, examples)
    resumed = train_mask(_backbone(corpus), _config(tmp_path, kind=kind, steps=15, eval_every=5, resume=True),
                         examples, examples)
    start = [0] if kind == "classify" else []  # a probed head is evaluated before the first step
    assert [h["step"] for h in resumed.history] == [*start, 5, 10, 15]
    assert resumed.history[:-1] == first.history
    straight = train_mask(_backbone(corpus), _config(tmp_path / "straight", kind=kind, steps=15, eval_every=5),
                          examples, examples)
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in run.history] for run in (resumed, straight)]
    assert untimed[0] == untimed[1]  # the resumed head (a probed one for classify) is the one saved


def test_cli_trains_a_concatenated_layer_head_fitted_by_lda(corpus, tmp_path):
    """``--layer-concat --probe lda``: the head reads every hidden state side by side and starts from the
    shrinkage-LDA fit; the mask is written as format version 4 and served."""
    registry = tmp_path / "registry"
    args = ["--backbone", str(corpus / "backbone"), "--registry", str(registry), "--offline", "--quiet",
            "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--work-dir", str(tmp_path / "w")]
    assert main(["train", "--name", "spk", "--kind", "classify", "--train", str(corpus / "cls.tsv"),
                 "--layer-concat", "--probe", "lda", "--lda-shrinkage", "0.2", *args]) == 0
    bb = _backbone(corpus)
    served = MaskRegistry(DirectoryStore(registry), bb.spec()).get("spk")
    assert served.mask.head.layer_concat and not served.mask.head.layer_mix
    assert served.mask.metadata()["format_version"] == 4
    assert served.mask.head_weight.shape == (3, 2 * bb.hidden_size * bb.num_hidden_states)
    wave = torch.from_numpy(sf.read(corpus / "clip2.wav", dtype="float32")[0])
    result = Router(bb, MaskRegistry(DirectoryStore(registry), bb.spec())).classify([wave], ["spk"])[0]
    assert result.label in ("speaker0", "speaker1", "speaker2")


@pytest.mark.parametrize("kind,mix", [("ctc", None), ("classify", True)])
def test_layer_concat_is_refused_where_it_cannot_apply(kind, mix):
    examples = [Example(audio=Path("a.wav"), target="x", source="m:1")]
    config = TrainConfig(name="x", kind=kind, layer_mix=mix, layer_concat=True)
    with pytest.raises(InvalidInputError, match="--layer-concat"):
        head_spec_for(config, examples)


def test_cli_train_writes_a_mask_the_registry_serves_and_eval_reports_it(corpus, tmp_path, capsys):
    registry = tmp_path / "registry"
    args = ["--backbone", str(corpus / "backbone"), "--registry", str(registry), "--offline", "--quiet",
            "--steps", "6", "--eval-every", "3", "--batch-size", "4", "--work-dir", str(tmp_path / "w")]
    assert main(["train", "--name", "fr", "--train", str(corpus / "ctc.jsonl"), *args]) == 0
    assert main(["train", "--name", "spk", "--kind", "classify", "--train", str(corpus / "cls.tsv"), *args]) == 0
    capsys.readouterr()
    bb = _backbone(corpus)
    reg = MaskRegistry(DirectoryStore(registry), bb.spec())
    assert reg.get("fr").kind == "ctc" and reg.get("spk").mask.head.labels == ["speaker0", "speaker1", "speaker2"]
    assert "dev_cer" in reg.get("fr").mask.metrics
    common = ["--backbone", str(corpus / "backbone"), "--registry", str(registry), "--offline"]
    assert main(["eval", "--mask", "spk", "--manifest", str(corpus / "cls.tsv"), *common]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "classify" and 0.0 <= report["accuracy"] <= 1.0 and report["examples"] == 12
    # as lang=auto decides: its labels name no transcription mask, so the mask alone decides
    assert main(["eval", "--mask", "spk", "--decide", "--manifest", str(corpus / "cls.tsv"), *common]) == 0
    decided = json.loads(capsys.readouterr().out)
    assert decided["decided_by"] == "decoding" and decided["accuracy"] == report["accuracy"]
    assert main(["eval", "--mask", "fr", "--decide", "--manifest", str(corpus / "ctc.jsonl"), *common]) != 0
    assert "--decide evaluates a language-ID" in capsys.readouterr().err


def test_finetune_baseline_writes_a_checkpoint_eval_can_score(corpus, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", "--backbone", str(corpus / "backbone"), "--offline", "--quiet", "--train",
                 str(corpus / "ctc.jsonl"), "--steps", "4", "--eval-every", "2", "--batch-size", "4",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (out / "config.json").is_file() and (out / "vocab.json").is_file() and "cer" in summary["best"]
    assert main(["eval", "--checkpoint", str(out), "--manifest", str(corpus / "ctc.jsonl"), "--decide"]) != 0
    assert "not a checkpoint" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--manifest", str(corpus / "ctc.jsonl")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "ctc" and report["cer"] == pytest.approx(summary["best"]["cer"], abs=1e-6)
    # pruning on top of the weight-finetuned checkpoint: its lm_head starts the head
    registry = tmp_path / "reg"
    assert main(["prune", "--name", "pruned", "--backbone", str(out), "--registry", str(registry), "--offline",
                 "--quiet", "--train", str(corpus / "ctc.jsonl"), "--steps", "2", "--eval-every", "2",
                 "--work-dir", str(tmp_path / "pw")]) == 0
    capsys.readouterr()
    pruned = decode_mask((registry / "pruned.s3mask").read_bytes())
    vocab = json.loads((out / "vocab.json").read_text())
    assert pruned.head.vocab[: len(vocab)] == sorted(vocab, key=vocab.get)


def _registry_with(bb, tmp_path, mask):
    registry = MaskRegistry(DirectoryStore(tmp_path / "reg"), bb.spec())
    registry.put(encode_mask(mask))
    return registry


def test_exported_ctc_checkpoint_matches_the_router_through_a_transformers_pipeline(corpus, tmp_path):
    bb = _backbone(corpus)
    mask = random_mask(bb.spec(), "fr", ctc_spec(), bb.default_layer_names(True), 0.7, seed=3)
    mask.head_bias[0] = -4.0  # fewer blanks: a non-trivial transcript
    router = Router(bb, _registry_with(bb, tmp_path, mask))
    report = export_mask(bb, router.registry.get("fr").mask, tmp_path / "export")
    assert report["sparsity_of_masked_layers"] == pytest.approx(0.3, abs=0.01)
    wave = torch.from_numpy(sf.read(corpus / "clip1.wav", dtype="float32")[0])
    expected = router.transcribe([wave], ["fr"])[0].text
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path / "export"))
    assert expected and asr(wave.numpy())["text"] == expected


@pytest.mark.parametrize("layer_mix", [False, True], ids=["last-layer", "weighted-layer-sum"])
def test_exported_classifier_matches_the_router(corpus, tmp_path, layer_mix):
    bb = _backbone(corpus)
    spec = classify_spec(3)
    spec.layer_mix = layer_mix
    mask = random_mask(bb.spec(), "spk", spec, bb.default_layer_names(), 0.9, seed=4)
    router = Router(bb, _registry_with(bb, tmp_path, mask))
    export_mask(bb, router.registry.get("spk").mask, tmp_path / "export")
    wave = torch.from_numpy(sf.read(corpus / "clip2.wav", dtype="float32")[0])
    ours = router.classify([wave], ["spk"])[0]
    theirs = pipeline("audio-classification", model=str(tmp_path / "export"))(wave.numpy(), top_k=3)
    assert theirs[0]["label"] == ours.label
    assert theirs[0]["score"] == pytest.approx(ours.probabilities[ours.label], abs=1e-4)


@pytest.mark.parametrize("pooling,concat,refusal", [("mean_std", False, "mean_std"), ("mean", True, "side by side")])
def test_heads_without_a_hugging_face_twin_are_not_exported(corpus, tmp_path, pooling, concat, refusal):
    bb = _backbone(corpus)
    spec = classify_spec(3)
    spec.pooling, spec.layer_concat = pooling, concat
    mask = random_mask(bb.spec(), "spk", spec, bb.default_layer_names(), 0.9, seed=4)
    with pytest.raises(InvalidInputError, match=refusal):
        export_mask(bb, mask, tmp_path / "export")


def test_similarity_of_a_mask_with_itself_is_one(corpus, tmp_path):
    bb = _backbone(corpus)
    layers = bb.default_layer_names()
    a = random_mask(bb.spec(), "a", ctc_spec(), layers, 0.9, seed=1)
    b = random_mask(bb.spec(), "b", ctc_spec(), layers, 0.9, seed=2)
    result = mask_similarity([a, b])
    assert result["iou"][0][0] == 1.0 and result["hamming"][0][0] == 0.0
    assert 0.0 <= result["iou"][0][1] < 1.0 and result["iou"][0][1] == result["iou"][1][0]
    assert set(result["pairs"]["a|b"]["layers"]) == set(layers)
    save_heatmap(result, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_analyze_and_prune(corpus, tmp_path, capsys):
    registry = tmp_path / "registry"
    base = ["--backbone", str(corpus / "backbone"), "--registry", str(registry), "--offline", "--quiet",
            "--train", str(corpus / "ctc.jsonl"), "--steps", "3", "--eval-every", "3",
            "--work-dir", str(tmp_path / "w")]
    assert main(["prune", "--name", "sparse", *base]) == 0
    assert main(["train", "--name", "dense", *base]) == 0
    sparse = decode_mask((registry / "sparse.s3mask").read_bytes())
    assert len(sparse.layer_bits) == 12  # attention masked too
    assert all(abs(r - 0.5) < 1e-3 for r in sparse.keep_ratios.values())
    assert main(["analyze", "--registry", str(registry), "--out", str(tmp_path / "an")]) == 0
    data = json.loads((tmp_path / "an" / "similarity.json").read_text())
    assert data["names"] == ["dense", "sparse"] and data["iou"][0][0] == 1.0


@pytest.mark.parametrize(
    "content,kind,message",
    [
        ("", "ctc", "no examples"),
        ('{"audio": "missing.wav", "text": "a"}', "ctc", ":1: audio file"),
        ('{"audio": "clip0.wav"}\n', "ctc", ":1: missing 'text'"),
        ("audio\tlabel\nclip0.wav\t\n", "classify", ":2: missing 'label'"),
        ('{"audio": "clip0.wav", "text": "a"}\n{broken', "ctc", ":2: not valid JSON"),
    ],
)
def test_bad_manifests_fail_fast_naming_the_line(corpus, content, kind, message):
    path = corpus / f"bad_{abs(hash(content))}.{'tsv' if kind == 'classify' else 'jsonl'}"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_manifest(path, kind)


def test_unreadable_audio_names_the_manifest_line(corpus, tmp_path):
    (corpus / "junk.wav").write_bytes(b"not audio at all" * 20)
    (corpus / "junk.jsonl").write_text(json.dumps({"audio": "junk.wav", "text": "abc"}))
    examples = read_manifest(corpus / "junk.jsonl", "ctc")
    with pytest.raises(UnsupportedAudioError, match="junk.jsonl:1"):
        train_mask(_backbone(corpus), _config(tmp_path, steps=1), examples, examples)


@pytest.mark.slow
def test_distributed_training_under_torchrun(corpus, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "service.cli",
           "train", "--distributed", "--name", "ddp", "--backbone", str(corpus / "backbone"), "--registry",
           str(tmp_path / "reg"), "--offline", "--quiet", "--train", str(corpus / "ctc.jsonl"), "--steps", "4",
           "--eval-every", "2", "--batch-size", "2", "--work-dir", str(tmp_path / "w")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "reg" / "ddp.s3mask").is_file()


def test_pretrain_writes_a_backbone_and_init_from_continues_it(corpus, tmp_path):
    from dataclasses import replace

    from router_core.backbone import load_backbone
    from router_core.training.manifest import Example
    from router_core.training.pretrain import PretrainConfig, pretrain_backbone

    examples = read_manifest(corpus / "ctc.jsonl", "ctc")
    config = PretrainConfig(steps=2, batch_size=2, warmup=1, eval_every=2, hidden=32, layers=1, progress=False)
    first = pretrain_backbone(examples, examples[:2], tmp_path / "bb1", tmp_path / "w1", config)
    assert first["steps"] == 2 and load_backbone(tmp_path / "bb1", local_files_only=True).ctc_head is not None
    again = pretrain_backbone(examples, examples[:2], tmp_path / "bb2", tmp_path / "w2",
                              replace(config, init_from=str(tmp_path / "bb1")))
    assert again["vocab"] == first["vocab"] and (tmp_path / "bb2" / "model.safetensors").is_file()
    # a character the first backbone never saw gets a new output row that starts out never predicted
    unseen = [*examples, Example(audio=examples[0].audio, target="zzz", source="x")]
    grown = pretrain_backbone(unseen, examples[:2], tmp_path / "bb3", tmp_path / "w3",
                              replace(config, init_from=str(tmp_path / "bb1"), steps=1))
    assert grown["vocab"] == first["vocab"] + 1
    backbone = load_backbone(tmp_path / "bb3", local_files_only=True)
    assert backbone.ctc_head is not None and backbone.ctc_head.vocab[-1] == "z"


def test_pretrain_cli_seed_sets_initialisation_and_batch_order(corpus, tmp_path):
    """``bundle pretrain --seed``: the same seed gives the same backbone, another seed another one (a second
    continuation must not replay the first one's batches)."""
    from safetensors.torch import load_file

    for split in ("train", "dev"):
        (corpus / f"xx_{split}.jsonl").write_text((corpus / "ctc.jsonl").read_text())

    def pretrain(seed: int, run: str) -> dict[str, torch.Tensor]:
        args = ["bundle", "pretrain", "--corpus", str(corpus), "--langs", "xx", "--out", str(tmp_path / run),
                "--work-dir", str(tmp_path / f"w-{run}"), "--steps", "2", "--batch-size", "2", "--warmup", "1",
                "--eval-every", "2", "--quiet", "--seed", str(seed)]
        assert main(args) == 0
        return load_file(tmp_path / run / "model.safetensors")

    first, again, other = pretrain(1, "a"), pretrain(1, "b"), pretrain(2, "c")
    assert first.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_pretrain_time_budget_shrinks_the_run_after_its_timed_steps(corpus, tmp_path):
    from router_core.training.pretrain import PretrainConfig, pretrain_backbone

    examples = read_manifest(corpus / "ctc.jsonl", "ctc")
    config = PretrainConfig(steps=500, batch_size=1, warmup=1, eval_every=1000, hidden=32, layers=1, progress=False,
                            max_seconds=0.0)
    result = pretrain_backbone(examples, examples[:1], tmp_path / "bb", tmp_path / "w", config)
    assert result["steps"] == 21  # the 20 timed steps, then one: no time was left


def test_an_unloadable_audio_file_is_named_whatever_its_error_type(tmp_path, monkeypatch):
    """The cache re-raised ``type(exc)(message)``, which breaks for errors whose constructor takes other
    arguments (a UnicodeDecodeError became a TypeError)."""
    from pathlib import Path

    from router_core.errors import InvalidInputError
    from router_core.training import trainer
    from router_core.training.manifest import Example

    def broken(path):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(trainer, "load_audio_file", broken)
    with pytest.raises(InvalidInputError, match="train.jsonl:7: cannot load a.wav"):
        trainer.AudioCache()(Example(Path("a.wav"), "bonjour", "train.jsonl:7"))


def test_training_tools_take_a_redis_registry(corpus, tmp_path):
    """train, lm and analyze open their registry as serve and masks do: a folder or a redis:// URL."""
    import uuid

    import redis

    from router_core.redis_store import RedisStore

    url, prefix = "redis://127.0.0.1:6379/0", f"s3r-test-{uuid.uuid4().hex[:8]}:"
    try:
        base = ["--backbone", str(corpus / "backbone"), "--registry", url, "--redis-prefix", prefix, "--offline",
                "--quiet", "--train", str(corpus / "ctc.jsonl"), "--steps", "2", "--eval-every", "2",
                "--work-dir", str(tmp_path / "w")]
        assert main(["train", "--name", "one", *base]) == 0
        assert main(["train", "--name", "two", *base]) == 0
        assert RedisStore(url, prefix).names() == ["one", "two"]
        assert main(["analyze", "--registry", url, "--redis-prefix", prefix, "--out", str(tmp_path / "an")]) == 0
        assert json.loads((tmp_path / "an" / "similarity.json").read_text())["names"] == ["one", "two"]
    finally:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero():
    from router_core.training.loop import LoopConfig, lr_scale

    config = LoopConfig("x", steps=110, batch_size=1, eval_every=10, warmup=10, cosine=True)
    assert [lr_scale(s, config) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_scale(10, config) == 1.0 and lr_scale(60, config) == pytest.approx(0.5)
    assert lr_scale(110, config) == pytest.approx(0.0)
    assert lr_scale(60, LoopConfig("x", steps=110, batch_size=1, eval_every=10)) == 1.0  # constant


def test_finetuning_saves_the_checkpoint_of_its_best_dev_step(corpus, tmp_path, monkeypatch):
    """The loop calls ``on_best`` only when dev metrics improve: a run whose dev CER gets worse after its
    first evaluation keeps that first checkpoint."""
    from router_core.training import finetune
    from router_core.training.finetune import finetune_weights

    cers = iter([0.3, 0.5])  # step 2 is the best; step 4 worse
    monkeypatch.setattr(finetune._FinetuneTask, "predict", lambda self, waves: ["?"] * len(waves))
    monkeypatch.setattr("router_core.training.loop.evaluate_examples",
                        lambda *a, **k: {"cer": next(cers), "wer": 1.0})
    saves = []
    monkeypatch.setattr(finetune._FinetuneTask, "on_best", lambda self, step: saves.append(step))
    examples = read_manifest(corpus / "ctc.jsonl", "ctc")
    result = finetune_weights(_backbone(corpus), _config(tmp_path, steps=4, eval_every=2), examples, examples[:2],
                              tmp_path / "ft")
    assert [h["step"] for h in result["history"]] == [2, 4]
    assert saves == [2] and result["best"] == {"cer": 0.3, "wer": 1.0}
