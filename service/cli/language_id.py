"""``s3router fit-lid``: fit ``lang=auto``'s decision settings (``S3R_LID_*``) to a registry's masks."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli.tools import add_backbone_args, backbone_from_args, registry_from_args


def run_fit_language_id(args: argparse.Namespace) -> dict[str, Any]:
    from router_core.language_id import DecodingLanguageId
    from router_core.router import Router
    from router_core.training.language_id_fit import collect_terms, fit_decision, mask_alone, score_decision
    from router_core.training.manifest import read_manifest
    from router_core.training.trainer import AudioCache
    from service.settings import LID_SETTINGS, ServiceSettings

    backbone = backbone_from_args(args)
    router = Router(backbone, registry_from_args(args, backbone))
    examples = [e for path in args.manifest for e in read_manifest(path, "classify")]  # pooled
    load = AudioCache()
    clips = collect_terms(router, [load(e) for e in examples], [e.target for e in examples], args.mask,
                          args.batch_size, progress=not args.quiet)
    ranked = fit_decision(clips)
    best = ranked[0].as_dict()
    prefix = ServiceSettings.model_config.get("env_prefix", "")
    return {
        "clips": len(clips),
        "mask_alone": mask_alone(clips).accuracy,
        "defaults": score_decision(DecodingLanguageId(), clips).as_dict(),
        "best": [score.as_dict() for score in ranked[: args.show]],
        "settings": {f"{prefix}{name.upper()}": best[field] for field, name in LID_SETTINGS.items()},
    }


def add_language_id_commands(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser(
        "fit-lid", help="fit lang=auto's decision settings (S3R_LID_*) to your masks on labelled clips"
    )
    add_backbone_args(fit)
    fit.add_argument("--manifest", required=True, action="append",
                     help="clips labelled with their language (label field), ideally in voices the masks never heard; "
                          "repeatable: the sets are pooled")
    fit.add_argument("--mask", default="language", help="the language-ID mask")
    fit.add_argument("--batch-size", type=int, default=8, help="clips per batch (each decoded by every language)")
    fit.add_argument("--show", type=int, default=10, help="best settings listed")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(run=run_fit_language_id)
