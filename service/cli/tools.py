"""``s3router`` subcommands for the S3-Router workflow: train, prune, finetune, eval, export, analyze."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router_core.errors import InvalidInputError
from router_core.heads import MaskKind
from router_core.redis_store import DEFAULT_PREFIX


def _log_to(work_dir: Path) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(work_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def backbone_from_args(args: argparse.Namespace):
    from router_core.backbone import load_backbone

    return load_backbone(args.backbone, device=args.device, local_files_only=args.offline)


def registry_from_args(args: argparse.Namespace, backbone):
    from router_core.registry import MaskRegistry
    from router_core.stores import open_store

    store = open_store(args.registry, args.redis_prefix)  # a folder or a redis:// URL, as for serve and masks
    return MaskRegistry(store, backbone.spec(), device=backbone.device, budget_bytes=2**40)


def _read_vocab(path: str | None) -> list[str] | None:
    from router_core.backbone import vocab_in_id_order

    if path is None:
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return vocab_in_id_order(data) if isinstance(data, dict) else [str(tok) for tok in data]


def _train_config(args: argparse.Namespace):
    from router_core.training.trainer import TrainConfig

    return TrainConfig(
        name=args.name,
        kind=args.kind,
        keep=args.keep,
        init=args.init,
        include_attention=args.attention,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        score_lr=args.score_lr,
        eval_every=args.eval_every,
        seed=args.seed,
        vocab=_read_vocab(args.vocab),
        work_dir=args.work_dir or f"runs/{args.name}",
        resume=args.resume,
        progress=not args.quiet,
        pooling=args.pooling,
        layer_mix=args.layer_mix,
        layer_concat=args.layer_concat,
        probe=args.probe,
        lda_shrinkage=args.lda_shrinkage,
    )


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from router_core.mask_file import encode_mask, validate_mask_name
    from router_core.training.learner import ctc_head_for
    from router_core.training.manifest import read_manifest
    from router_core.training.trainer import train_mask

    validate_mask_name(args.name)
    if args.distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            args.device = f"cuda:{torch.distributed.get_node_local_rank()}"
    train = read_manifest(args.train, args.kind)
    dev = read_manifest(args.dev, args.kind) if args.dev else train
    config = _train_config(args)
    _log_to(Path(config.work_dir))
    backbone = backbone_from_args(args)
    initial_head = None
    head = backbone.ctc_head
    if args.kind == "ctc" and head is not None and head.vocab and config.vocab is None:
        config.vocab, initial_head = ctc_head_for(head, train)
    result = train_mask(backbone, config, train, dev, distributed=args.distributed, initial_head=initial_head)
    if args.distributed:
        torch.distributed.destroy_process_group()
    if result is None:
        return {"rank": "worker", "done": True}
    registry_from_args(args, backbone).put(encode_mask(result.mask))
    return {
        "mask": result.mask.name,
        "registry": args.registry,
        "best_step": result.best_step,
        "dev": result.best_metrics,
        "keep_ratio": sum(result.mask.keep_ratios.values()) / len(result.mask.keep_ratios),
    }


def run_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from router_core.training.finetune import finetune_weights
    from router_core.training.learner import ctc_head_for
    from router_core.training.manifest import read_manifest

    train = read_manifest(args.train, args.kind)
    dev = read_manifest(args.dev, args.kind) if args.dev else train
    args.name = "finetune"
    config = _train_config(args)
    _log_to(Path(args.out))
    backbone = backbone_from_args(args)
    initial_head = None
    if args.kind == "ctc" and backbone.ctc_head is not None and backbone.ctc_head.vocab and config.vocab is None:
        config.vocab, initial_head = ctc_head_for(backbone.ctc_head, train)  # as `train` does
    return finetune_weights(backbone, config, train, dev, args.out, initial_head)


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    from router_core.training.evaluation import evaluate_examples
    from router_core.training.manifest import read_manifest
    from router_core.training.trainer import AudioCache

    if bool(args.checkpoint) == bool(args.mask):
        raise InvalidInputError("give either --mask (with --backbone and --registry) or --checkpoint")
    if args.decide and args.checkpoint:
        raise InvalidInputError("--decide evaluates a language-ID mask (--mask), not a checkpoint")
    greedy: list[str] = []  # a mask with a language model: greedy decoding of the same outputs, for comparison
    predict, kind, subject = _checkpoint_predictor(args) if args.checkpoint else _mask_predictor(args, greedy)
    examples = read_manifest(args.manifest, kind)
    scores = evaluate_examples(examples, predict, AudioCache(), kind, args.batch_size)
    result = {"subject": subject, "kind": kind, **({"decided_by": "decoding"} if args.decide else {}), **scores}
    if greedy:
        from router_core.training.evaluation import error_rates

        result["decoder"] = "beam+lm"
        result["greedy"] = error_rates([e.target for e in examples], greedy)
    if args.table:
        rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in result.items()]
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return result


Predictor = Callable[[list[Any]], list[str]]


def _checkpoint_predictor(args: argparse.Namespace) -> tuple[Predictor, MaskKind, str]:
    """Predictions of a fine-tuned Hugging Face checkpoint (the baseline masks are compared with)."""
    from router_core.backbone import load_backbone
    from router_core.training.finetune import hf_predict, load_hf_classifier_or_ctc

    model, spec = load_hf_classifier_or_ctc(args.checkpoint)
    probe = load_backbone(args.checkpoint, local_files_only=True)  # frame rate, normalisation, attention

    def predict(waves: list[Any]) -> list[str]:
        return hf_predict(model, spec, waves, probe.normalize_input, probe.layer_norm_features,
                          probe.seconds_per_frame)

    return predict, spec.kind, str(args.checkpoint)


def _mask_predictor(args: argparse.Namespace, greedy: list[str]) -> tuple[Predictor, MaskKind, str]:
    """Predictions of a mask; ``--decide``: a language-ID mask deciding as ``lang=auto`` serves, with the
    service's settings (``S3R_LID_*``); a mask with a language model also decodes greedily into ``greedy``."""
    from router_core.decoding import ctc_greedy_decode
    from router_core.language_id import identify_languages
    from router_core.router import Router
    from service.settings import load_settings

    backbone = backbone_from_args(args)
    router = Router(backbone, registry_from_args(args, backbone), decoder=args.decoder)
    loaded = router.registry.get(args.mask)
    if args.decide and loaded.kind != "classify":
        raise InvalidInputError("--decide evaluates a language-ID (classification) mask")
    with_lm = loaded.kind == "ctc" and loaded.mask.lm is not None and args.decoder == "auto"
    picker = load_settings().language_picker() if args.decide else None

    def predict(waves: list[Any]) -> list[str]:
        if picker is not None:
            return [label for label, _, _ in identify_languages(router, waves, args.mask, picker)]
        outs = router.forward(waves, [args.mask] * len(waves))
        if with_lm:
            spf = backbone.seconds_per_frame
            greedy.extend(ctc_greedy_decode(o.logits, loaded.mask.head, spf).text for o in outs)
        return [o.transcript.text if o.transcript else o.classification.label for o in outs]  # type: ignore[union-attr]

    return predict, loaded.kind, args.mask


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    from router_core.training.export import export_mask

    backbone = backbone_from_args(args)
    loaded = registry_from_args(args, backbone).get(args.mask)
    return export_mask(backbone, loaded.mask, args.out)


def run_analyze(args: argparse.Namespace) -> dict[str, Any]:
    from router_core.mask_file import decode_mask
    from router_core.stores import open_store
    from router_core.training.analyze import mask_similarity, save_heatmap, similarity_table

    store = open_store(args.registry, args.redis_prefix)
    names = args.masks.split(",") if args.masks else store.names()
    if len(names) < 1:
        raise InvalidInputError(f"no masks to analyze in {args.registry}")
    result = mask_similarity([decode_mask(store.read(n)) for n in names])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "similarity.json").write_text(json.dumps(result, indent=2))
    save_heatmap(result, out / "similarity_iou.png", "iou")
    save_heatmap(result, out / "similarity_hamming.png", "hamming")
    print(similarity_table(result, "iou"))
    return {"masks": names, "json": str(out / "similarity.json"), "heatmaps": [str(out / "similarity_iou.png")]}


def run_synth(args: argparse.Namespace) -> dict[str, Any]:
    from router_core.training.synth import plan_corpus, read_plan, synth_corpus, write_plan

    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    counts = {"train": args.train, "dev": args.dev, "test": args.test, "dev_everyday": args.dev_everyday}
    if args.write_plan:
        planned = plan_corpus(langs, counts, args.seed)
        write_plan(planned, args.write_plan)
        return {"plan": args.write_plan, "utterances": len(planned)}
    if not args.out:
        raise InvalidInputError("data synth needs --out (or --write-plan)")
    plan = read_plan(args.plan) if args.plan else None
    return synth_corpus(args.out, langs, counts, args.seed, args.workers, progress=not args.quiet, plan=plan)


def run_pretrain(args: argparse.Namespace) -> dict[str, Any]:
    from router_core.training.manifest import read_manifest
    from router_core.training.pretrain import PretrainConfig, pretrain_backbone

    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    corpus = Path(args.corpus)
    train = [e for lang in langs for e in read_manifest(corpus / f"{lang}_train.jsonl", "ctc")]
    dev = [e for lang in langs
           for e in read_manifest(corpus / f"{lang}_{args.dev_split}.jsonl", "ctc")[: args.dev_per_lang]]
    _log_to(Path(args.work_dir))
    config = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                            progress=not args.quiet, init_from=args.init_from, device=args.device,
                            max_seconds=args.max_seconds, eval_every=args.eval_every, seed=args.seed)
    return pretrain_backbone(train, dev, args.out, args.work_dir, config)


def add_registry_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--registry`` (a folder or a redis:// URL, as ``serve`` and ``masks`` take) and ``--redis-prefix``."""
    p.add_argument("--registry", required=required, help="mask registry: a folder or a redis:// URL")
    p.add_argument("--redis-prefix", default=DEFAULT_PREFIX, help="key prefix of the masks in Redis")


def add_backbone_args(p: argparse.ArgumentParser, registry: bool = True) -> None:
    p.add_argument("--backbone", required=True, help="checkpoint folder or hub id")
    if registry:
        add_registry_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--offline", action="store_true", help="never contact the hub")


def _training(p: argparse.ArgumentParser, keep: float, init: str, attention: bool) -> None:
    from router_core.heads import POOLINGS
    from router_core.training.probe import PROBES
    from router_core.training.scores import SCORE_INITS

    p.add_argument("--train", required=True, help="manifest (JSONL or TSV)")
    p.add_argument("--dev", help="dev manifest (default: the training manifest)")
    p.add_argument("--kind", choices=["ctc", "classify"], default="ctc")
    p.add_argument("--keep", type=float, default=keep, help="fraction of weights kept per layer")
    p.add_argument("--init", choices=SCORE_INITS, default=init)
    p.add_argument("--attention", action=argparse.BooleanOptionalAction, default=attention,
                   help="also mask attention projections (default off: the paper's fix_attn)")
    p.add_argument("--pooling", choices=POOLINGS, help="classification pooling (default mean_std)")
    p.add_argument(
        "--layer-mix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="head reads a learned weighted sum of all hidden states (default: on for classify)",
    )
    p.add_argument("--layer-concat", action="store_true",
                   help="classify: head reads all hidden states side by side (instead of --layer-mix)")
    p.add_argument("--probe", choices=PROBES, default="softmax",
                   help="how the classification head is fitted before mask learning (lda: shrinkage LDA)")
    p.add_argument("--lda-shrinkage", type=float, default=0.3, help="with --probe lda, in (0, 1]")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate")
    p.add_argument("--score-lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", help="vocabulary JSON (list or {token: id}); default: built from the text")
    p.add_argument("--work-dir", help="checkpoints and logs (default runs/NAME)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--distributed", action="store_true", help="under torchrun: DDP across processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """train, prune, finetune, eval, export, analyze, data synth and bundle pretrain."""
    _add_training_commands(sub)
    _add_evaluation_commands(sub)
    _add_data_commands(sub)
    _add_bundle_commands(sub)


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="learn a mask (and head) for a language or task")
    add_backbone_args(train)
    train.add_argument("--name", required=True, help="mask name, e.g. fr or speaker")
    _training(train, keep=0.9, init="weight_rank", attention=False)
    train.set_defaults(run=run_train)

    prune = sub.add_parser("prune", help="learn a sparse mask (keep 0.3-0.7, magnitude init) for pruning")
    add_backbone_args(prune)
    prune.add_argument("--name", required=True)
    _training(prune, keep=0.5, init="weight_magnitude", attention=True)
    prune.set_defaults(run=run_train)

    finetune = sub.add_parser("finetune", help="weight-finetuning baseline -> Hugging Face checkpoint")
    add_backbone_args(finetune, registry=False)
    finetune.add_argument("--out", required=True)
    _training(finetune, keep=1.0, init="kaiming", attention=False)
    finetune.set_defaults(run=run_finetune, lr=1e-4)


def _add_evaluation_commands(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("eval", help="CER/WER or accuracy of a mask or a checkpoint over a manifest")
    evaluate.add_argument("--manifest", required=True)
    evaluate.add_argument("--mask")
    evaluate.add_argument("--checkpoint", help="a Hugging Face CTC or audio-classification folder")
    evaluate.add_argument("--backbone")
    add_registry_args(evaluate, required=False)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--offline", action="store_true")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--decoder", choices=["auto", "greedy"], default="auto",
                          help="auto: the mask's language model if it has one (greedy CER reported too)")
    evaluate.add_argument("--decide", action="store_true",
                          help="a language-ID mask: decide as lang=auto serves, by decoding its best candidates")
    evaluate.add_argument("--table", action="store_true", help="also print a table before the JSON")
    evaluate.set_defaults(run=run_eval)

    export = sub.add_parser("export", help="bake a mask into a pruned Hugging Face checkpoint")
    add_backbone_args(export)
    export.add_argument("--mask", required=True)
    export.add_argument("--out", required=True)
    export.set_defaults(run=run_export)

    analyze = sub.add_parser("analyze", help="pairwise mask similarity: table, JSON, heatmap PNG")
    add_registry_args(analyze)
    analyze.add_argument("--masks", help="comma-separated names (default: all)")
    analyze.add_argument("--out", required=True)
    analyze.set_defaults(run=run_analyze)


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="corpora").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="synthesize a multilingual corpus with espeak-ng")
    synth.add_argument("--out", help="corpus folder (required unless --write-plan)")
    synth.add_argument("--langs", default="en,fr,de,es,it,pt")
    synth.add_argument(
        "--train",
        type=int,
        default=1000,
        help="training utterances per language (at most: fewer where its text runs out)",
    )
    synth.add_argument("--dev", type=int, default=100)
    synth.add_argument("--test", type=int, default=100)
    synth.add_argument("--dev-everyday", type=int, default=20, metavar="N",
                       help="written everyday dev sentences per language, each spoken by a voice of the speaker "
                            "task and by two held-out dev voices (at most 20; 0: none)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=2)
    synth.add_argument(
        "--write-plan",
        metavar="FILE",
        help="only write the plan (sentence, voice, speed, pitch per utterance) as JSONL",
    )
    synth.add_argument("--plan", metavar="FILE", help="speak this plan instead of planning from the text packages")
    synth.add_argument("--quiet", action="store_true")
    synth.set_defaults(run=run_synth)


def _add_bundle_commands(sub: argparse._SubParsersAction) -> None:
    bundle = sub.add_parser("bundle", help="build the bundled default model").add_subparsers(
        dest="bundle_command", required=True
    )
    pretrain = bundle.add_parser("pretrain", help="train the tiny multilingual backbone (character CTC)")
    pretrain.add_argument("--corpus", required=True, help="folder written by `s3router data synth`")
    pretrain.add_argument("--langs", default="en,fr,de,es,it")
    pretrain.add_argument("--out", required=True)
    pretrain.add_argument("--work-dir", default="runs/pretrain")
    pretrain.add_argument("--steps", type=int, default=2400)
    pretrain.add_argument("--batch-size", type=int, default=8)
    pretrain.add_argument("--lr", type=float, default=1e-3)
    pretrain.add_argument("--warmup", type=int, default=300, help="learning-rate warmup steps")
    pretrain.add_argument("--init-from", help="continue from this trained backbone folder (new optimizer/schedule)")
    pretrain.add_argument("--dev-per-lang", type=int, default=40)
    pretrain.add_argument("--dev-split", default="dev",
                          help="dev manifests to report on: dev (training voices) or dev_unheard (held-out voices)")
    pretrain.add_argument("--eval-every", type=int, default=400)
    pretrain.add_argument("--device", default="cpu")
    pretrain.add_argument("--max-seconds", type=float, help="time budget: fewer steps (same schedule shape) to fit it")
    pretrain.add_argument("--seed", type=int, default=0,
                          help="batch order and initialisation (a continuation should not reuse the last seed)")
    pretrain.add_argument("--quiet", action="store_true")
    pretrain.set_defaults(run=run_pretrain)
