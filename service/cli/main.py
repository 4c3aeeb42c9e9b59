"""``s3router`` console script.

Subcommands so far:

* ``s3router info BACKBONE`` — load a checkpoint (folder or hub id), print its fingerprint, size,
  maskable layers and the kernel backend this machine would use;
* ``s3router inspect MASK_FILE [--backbone BACKBONE]`` — verify a mask file and print its metadata;
  with ``--backbone``, also check that it fits that backbone;
* ``s3router serve [--flags]`` — run the HTTP service; every flag mirrors an ``S3R_*`` setting
  (``--max-batch-size`` <-> ``S3R_MAX_BATCH_SIZE``), flags win over the environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from router_core.errors import S3RouterError


def _info(args: argparse.Namespace) -> dict:
    from router_core.backbone import load_backbone
    from router_core.kernels.backend import select_backend

    backbone = load_backbone(args.backbone, device=args.device, local_files_only=args.offline)
    names = backbone.default_layer_names()
    return {
        "model_type": backbone.config.model_type,
        "parameters": sum(p.numel() for p in backbone.model.parameters()),
        "fingerprint": backbone.fingerprint,
        "hidden_size": backbone.hidden_size,
        "layers": backbone.num_layers,
        "default_maskable_layers": len(names),
        "maskable_weights": sum(o * i for o, i in (backbone.spec().layer_shapes[n] for n in names)),
        "ctc_head": backbone.ctc_head is not None,
        "kernel_backend": select_backend(backbone.device).name,
    }


def _inspect(args: argparse.Namespace) -> dict:
    from router_core.mask_file import check_compatible, decode_mask

    mask = decode_mask(Path(args.mask_file).read_bytes())
    meta = mask.metadata()
    ratios = list(mask.keep_ratios.values())
    summary = {
        **{k: meta[k] for k in ("name", "kind", "fingerprint", "format_version", "created_at", "metrics")},
        "masked_layers": len(mask.layer_bits),
        "mean_keep_ratio": sum(ratios) / len(ratios) if ratios else 1.0,
        "outputs": mask.head.num_outputs,
        "bytes": mask.nbytes,
        "language_model": None
        if mask.lm is None
        else {k: v for k, v in mask.lm.metadata().items() if k != "tokens"} | {"ngrams": len(mask.lm.model.grams)},
    }
    if args.backbone:
        from router_core.backbone import load_backbone

        check_compatible(mask, load_backbone(args.backbone, local_files_only=args.offline).spec())
        summary["compatible_with"] = str(args.backbone)
    return summary


def _serve(args: argparse.Namespace) -> dict:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import ServiceSettings, load_settings

    overrides = {name: getattr(args, name) for name in ServiceSettings.model_fields}
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(f"invalid settings:\n{exc}") from exc
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.http_server import raise_open_file_limit, uvicorn_options

    raise_open_file_limit(settings.max_connections)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, **uvicorn_options(settings))
    return {"stopped": True}


def _settings_table(args: argparse.Namespace) -> None:
    from service.settings import settings_table

    print(settings_table(), end="")


class SettingsError(Exception):
    """Invalid ``s3router serve`` flags or ``S3R_*`` variables."""


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    from service.settings import ServiceSettings

    for name, field in ServiceSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=name, default=None, help=field.description or f"S3R_{name.upper()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3router", description="Serve many languages from one backbone.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a backbone checkpoint")
    info.add_argument("backbone", help="local folder or hub id of a wav2vec2-family checkpoint")
    info.add_argument("--device", default="cpu")
    info.add_argument("--offline", action="store_true", help="never contact the hub")
    info.set_defaults(run=_info)
    inspect = sub.add_parser("inspect", help="verify a mask file and print its metadata")
    inspect.add_argument("mask_file")
    inspect.add_argument("--backbone", help="also check the mask fits this backbone")
    inspect.add_argument("--offline", action="store_true", help="never contact the hub")
    inspect.set_defaults(run=_inspect)
    from service.cli.language_id import add_language_id_commands
    from service.cli.lm import add_lm_command
    from service.cli.masks import add_masks_commands
    from service.cli.stream import add_stream_command
    from service.cli.tools import add_tool_commands

    add_tool_commands(sub)
    add_lm_command(sub)
    add_language_id_commands(sub)
    add_masks_commands(sub)
    add_stream_command(sub)
    serve = sub.add_parser("serve", help="run the HTTP service")
    _add_setting_flags(serve)
    serve.set_defaults(run=_serve)
    table = sub.add_parser("settings", help="print every S3R_* setting as a Markdown table (as in README.md)")
    table.set_defaults(run=_settings_table)
    return parser


TRAIN_EXTRA = {"jiwer", "matplotlib"}  # pyproject.toml's train extra: installed by make install, not in the image


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except (S3RouterError, OSError, SettingsError) as exc:
        print(f"s3router {args.command}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if exc.name not in TRAIN_EXTRA:
            raise
        print(f"s3router {args.command}: needs {exc.name}, from the train extra: pip install 's3router[train]' "
              "(the image carries only what serving needs)", file=sys.stderr)
        return 1
    if result is not None:  # commands that print their own output return None
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
