"""Where the bundled model comes from, and seeding a shared store with its masks: `S3R_BUNDLE_DIR`, a Redis
registry that is never taken for a folder, `s3router masks seed`, and `MaskStore.add` (never overwrites)
on folders and on the real Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import REDIS_URL, ctc_mask_bytes, tiny_backbone
from router_core.backbone import load_backbone
from router_core.errors import BackboneError
from router_core.redis_store import RedisStore
from router_core.registry import DirectoryStore, MaskStore
from router_core.stores import SeedReport, open_store, seed_store
from service.cli import main
from service.pipeline import engine as engine_module
from service.pipeline.engine import BUNDLE_DIR, build_engine, bundle_dir
from service.settings import ServiceSettings

BUNDLED = sorted(p.stem for p in (BUNDLE_DIR / "registry").glob("*.s3mask"))
needs_bundle = pytest.mark.skipif(not BUNDLED, reason="bundle not built (make bundle)")


def _masks(names: list[str], seed: int = 0) -> dict[str, bytes]:
    bb = tiny_backbone()
    return {n: ctc_mask_bytes(bb, n, seed + i) for i, n in enumerate(names)}


def _stores(tmp_path: Path, prefix: str) -> dict[str, MaskStore]:
    return {"folder": DirectoryStore(tmp_path / "target"), "redis": RedisStore(REDIS_URL, prefix=prefix)}


@pytest.mark.parametrize("kind", ["folder", "redis"])
def test_add_writes_a_new_mask_and_never_replaces_one(kind, tmp_path, prefix):
    store = _stores(tmp_path, prefix)[kind]
    first, second = _masks(["fr"], seed=0)["fr"], _masks(["fr"], seed=7)["fr"]
    assert store.add("fr", first) is True
    assert store.add("fr", second) is False
    assert store.read("fr") == first and store.names() == ["fr"]
    if kind == "folder":
        assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["fr.s3mask"]  # no temporary left


@pytest.mark.parametrize("kind", ["folder", "redis"])
def test_seed_fills_an_empty_store_and_leaves_a_used_one_alone(kind, tmp_path, prefix):
    source = DirectoryStore(tmp_path / "bundle")
    for name, data in _masks(["de", "en", "speaker"]).items():
        source.write(name, data)
    target = _stores(tmp_path, prefix)[kind]
    report = seed_store(target, source)
    assert report.seeded == ["de", "en", "speaker"] and report.kept == [] and report.already_held == 0
    assert all(target.read(n) == source.read(n) for n in source.names())
    # the owner deletes one seeded mask and replaces another: seeding again (a restart) undoes neither
    target.delete("en")
    replaced = _masks(["de"], seed=9)["de"]
    target.write("de", replaced)
    again = seed_store(target, source)
    assert again.seeded == [] and again.already_held == 2
    assert target.names() == ["de", "speaker"] and target.read("de") == replaced


def _seed_at_once(target: Callable[[], MaskStore], source: MaskStore, seeders: int = 2) -> list[SeedReport]:
    """``seeders`` threads seeding one store (each with its own client), released together by a barrier."""
    start = threading.Barrier(seeders)
    reports: list[SeedReport] = []

    def seeder() -> None:
        start.wait()
        reports.append(seed_store(target(), source))

    threads = [threading.Thread(target=seeder) for _ in range(seeders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return reports


def test_two_seeders_at_once_write_each_mask_exactly_once(prefix, tmp_path):
    """Two replicas' init containers start together on one empty Redis: every mask is stored by one of them,
    and neither replaces what the other stored (each write bumps the mask's version: it stays 1 write)."""
    source = DirectoryStore(tmp_path / "bundle")
    names = sorted(f"m{i}" for i in range(12))
    for name, data in _masks(names).items():
        source.write(name, data)
    for round_ in range(5):  # they overlap in most rounds, not in every one
        store_prefix = f"{prefix}{round_}:"
        reports = _seed_at_once(lambda: RedisStore(REDIS_URL, prefix=store_prefix), source)  # noqa: B023
        assert len(reports) == 2
        seeded = [n for r in reports for n in r.seeded]
        assert sorted(seeded) == names  # each name stored by exactly one of the two (a double write shows twice)
        target = RedisStore(REDIS_URL, prefix=store_prefix)
        assert all(target.read(n) == source.read(n) for n in names)


def test_a_redis_registry_without_a_backbone_or_bundle_is_refused_not_taken_for_a_folder(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_module, "BUNDLE_DIR", tmp_path / "no-bundle-here")
    settings = ServiceSettings(registry="redis://:secret@127.0.0.1:6379/0")
    with pytest.raises(BackboneError, match="S3R_BUNDLE_DIR") as refused:
        build_engine(settings)
    assert "secret" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # no folder named "redis:" made


def test_the_bundle_is_the_named_folder_or_the_source_trees_own(tmp_path, monkeypatch):
    with pytest.raises(BackboneError, match="no bundled model"):
        bundle_dir(str(tmp_path))  # named, but empty: an error, never the demo model
    monkeypatch.setattr(engine_module, "BUNDLE_DIR", tmp_path / "tree" / "masks")
    assert bundle_dir(None) is None  # an installed package: no bundle beside it
    (tmp_path / "tree" / "masks" / "backbone").mkdir(parents=True)
    (tmp_path / "tree" / "masks" / "backbone" / "config.json").write_text("{}")
    assert bundle_dir(None) == tmp_path / "tree" / "masks"
    (tmp_path / "image" / "backbone").mkdir(parents=True)
    (tmp_path / "image" / "backbone" / "config.json").write_text("{}")
    assert bundle_dir(str(tmp_path / "image")) == tmp_path / "image"


@needs_bundle
def test_the_bundled_model_serves_the_masks_of_a_seeded_redis(tmp_path, prefix, monkeypatch):
    """What compose runs: the bundle found by S3R_BUNDLE_DIR (here a copy outside the source tree), its masks
    seeded into Redis by `s3router masks seed`, and a replica serving from Redis."""
    moved = tmp_path / "image" / "masks"
    (moved / "backbone").mkdir(parents=True)
    for path in (BUNDLE_DIR / "backbone").iterdir():
        (moved / "backbone" / path.name).symlink_to(path)
    (moved / "registry").symlink_to(BUNDLE_DIR / "registry")
    monkeypatch.setattr(engine_module, "BUNDLE_DIR", tmp_path / "site-packages" / "masks")  # as in an install
    monkeypatch.setenv("S3R_BUNDLE_DIR", str(moved))
    monkeypatch.setenv("S3R_REDIS_PREFIX", prefix)
    monkeypatch.setenv("S3R_REGISTRY", REDIS_URL)
    assert main(["masks", "seed"]) == 0
    assert main(["masks", "seed"]) == 0  # the second run finds the store in use
    assert sorted(open_store(REDIS_URL, prefix).names()) == BUNDLED
    engine = build_engine(ServiceSettings())
    try:
        assert not engine.is_demo and isinstance(engine.registry.store, RedisStore)
        assert engine.registry.available() == BUNDLED
        assert engine.backbone.fingerprint == load_backbone(str(BUNDLE_DIR / "backbone")).fingerprint
    finally:
        engine.close()


def test_masks_seed_reports_what_it_did(tmp_path, prefix, capsys, monkeypatch):
    source = tmp_path / "bundle"
    for name, data in _masks(["de", "fr"]).items():
        DirectoryStore(source).write(name, data)
    monkeypatch.setenv("S3R_REDIS_PREFIX", prefix)
    capsys.readouterr()
    assert main(["masks", "seed", REDIS_URL, "--from", str(source)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["seeded"] == ["de", "fr"] and first["already_held"] == 0
    assert main(["masks", "seed", REDIS_URL, "--from", str(source)]) == 0
    assert json.loads(capsys.readouterr().out) | {"registry": None, "from": None} == {
        "registry": None, "from": None, "seeded": [], "kept": [], "already_held": 2}
    monkeypatch.delenv("S3R_REGISTRY", raising=False)
    assert main(["masks", "seed", "--from", str(source)]) == 1  # no target named or configured
    assert "S3R_REGISTRY" in capsys.readouterr().err
    monkeypatch.setenv("S3R_BUNDLE_DIR", str(tmp_path / "missing"))
    assert main(["masks", "seed", str(tmp_path / "target")]) == 1
    assert "no bundled model" in capsys.readouterr().err


def test_the_bundle_is_the_checkouts_masks_folder():
    """Where the code looks for the bundle is the checkout's masks/ (a move of the engine module once made
    it look in service/masks, and every test that needs the bundle skipped itself)."""
    assert Path(__file__).resolve().parents[1] / "masks" == BUNDLE_DIR and BUNDLED
