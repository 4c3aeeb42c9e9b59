"""``s3router masks``: ls, push, pull, rm, copy between stores (folder <-> Redis), and seed an empty store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router_core.errors import InvalidInputError
from router_core.mask_file import decode_mask
from router_core.redis_store import DEFAULT_PREFIX
from router_core.stores import open_store, redact_url, seed_store

if TYPE_CHECKING:
    from service.settings import ServiceSettings


def _prefix(args: argparse.Namespace, settings: ServiceSettings | None = None) -> str:
    """``--redis-prefix``, else ``S3R_REDIS_PREFIX`` (from ``settings`` when the caller has them loaded)."""
    from service.settings import load_settings

    if args.redis_prefix is not None:
        return str(args.redis_prefix)
    return (settings or load_settings()).redis_prefix


def _ls(args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(args.registry, _prefix(args))
    rows = []
    for name in store.names():
        data = store.read(name)
        mask = decode_mask(data)
        rows.append({"name": name, "kind": mask.kind, "bytes": len(data), "fingerprint": mask.fingerprint,
                     "created_at": mask.created_at})
    return {"registry": args.registry, "masks": rows}


def _push(args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(args.registry, _prefix(args))
    pushed = []
    for path in args.files:
        data = Path(path).read_bytes()
        mask = decode_mask(data)  # never store a file that does not verify
        store.write(mask.name, data)
        pushed.append(mask.name)
    return {"pushed": pushed}


def _pull(args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(args.registry, _prefix(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.names or store.names()
    for name in names:
        (out / f"{name}.s3mask").write_bytes(store.read(name))
    return {"pulled": names, "out": str(out)}


def _rm(args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(args.registry, _prefix(args))
    missing = [n for n in args.names if not store.delete(n)]
    if missing:
        raise InvalidInputError(f"not in {args.registry}: {', '.join(missing)}")
    return {"removed": args.names}


def _copy(args: argparse.Namespace) -> dict[str, Any]:
    prefix = _prefix(args)
    source = open_store(args.source, prefix)
    target = open_store(args.target, prefix)
    names = args.names or source.names()
    for name in names:
        data = source.read(name)
        decode_mask(data)
        target.write(name, data)
    return {"copied": names, "from": args.source, "to": args.target}


def _seed(args: argparse.Namespace) -> dict[str, Any]:
    """The bundled masks (or ``--from``'s) into an empty ``registry`` (default: ``S3R_REGISTRY``)."""
    from service.pipeline.engine import bundle_dir
    from service.settings import load_settings

    settings = load_settings()
    target = args.registry or settings.registry
    if target is None:
        raise InvalidInputError("name the store to seed, or set S3R_REGISTRY")
    source = args.source
    if source is None:
        bundle = bundle_dir(settings.bundle_dir)
        if bundle is None:
            raise InvalidInputError("no bundled model found: give --from FOLDER (or set S3R_BUNDLE_DIR)")
        source = str(bundle / "registry")
    prefix = _prefix(args, settings)
    report = seed_store(open_store(target, prefix), open_store(source, prefix))
    return {"registry": redact_url(target), "from": redact_url(source), "seeded": report.seeded,
            "kept": report.kept, "already_held": report.already_held}


def add_masks_commands(sub: argparse._SubParsersAction) -> None:
    masks = sub.add_parser("masks", help="manage mask stores (folder or redis:// URL)")
    masks.add_argument("--redis-prefix", help=f"key prefix in Redis; default: S3R_REDIS_PREFIX, else {DEFAULT_PREFIX}")
    verbs = masks.add_subparsers(dest="masks_command", required=True)
    ls = verbs.add_parser("ls", help="list masks")
    ls.add_argument("registry")
    ls.set_defaults(run=_ls)
    push = verbs.add_parser("push", help="upload mask files")
    push.add_argument("registry")
    push.add_argument("files", nargs="+")
    push.set_defaults(run=_push)
    pull = verbs.add_parser("pull", help="download mask files")
    pull.add_argument("registry")
    pull.add_argument("names", nargs="*")
    pull.add_argument("--out", required=True)
    pull.set_defaults(run=_pull)
    rm = verbs.add_parser("rm", help="delete masks")
    rm.add_argument("registry")
    rm.add_argument("names", nargs="+")
    rm.set_defaults(run=_rm)
    copy = verbs.add_parser("copy", help="copy masks between stores")
    copy.add_argument("source")
    copy.add_argument("target")
    copy.add_argument("names", nargs="*")
    copy.set_defaults(run=_copy)
    seed = verbs.add_parser("seed", help="give an empty store the bundled masks (a store holding any: untouched)")
    seed.add_argument("registry", nargs="?", help="folder or redis:// URL; default: S3R_REGISTRY")
    seed.add_argument("--from", dest="source", help="folder or URL to seed from; default: the bundled masks")
    seed.set_defaults(run=_seed)
