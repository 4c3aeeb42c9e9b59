"""Choosing a mask store from a location: ``redis://`` / ``rediss://`` / ``unix://`` URL or a folder path."""

from __future__ import annotations

from dataclasses import dataclass, field

from router_core.mask_file import decode_mask
from router_core.redis_store import DEFAULT_PREFIX, RedisStore, redact_url
from router_core.registry import DirectoryStore, MaskStore

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
__all__ = ["REDIS_SCHEMES", "SeedReport", "is_store_url", "open_store", "redact_url", "seed_store"]


def is_store_url(location: str) -> bool:
    """True for a Redis URL, which is never a folder path."""
    return location.startswith(REDIS_SCHEMES)


def open_store(location: str, redis_prefix: str = DEFAULT_PREFIX) -> MaskStore:
    """A :class:`RedisStore` for a Redis URL (credentials and TLS in the URL), else a folder store."""
    if is_store_url(location):
        return RedisStore(location, prefix=redis_prefix)
    return DirectoryStore(location)


@dataclass
class SeedReport:
    seeded: list[str] = field(default_factory=list)  # added to the target
    kept: list[str] = field(default_factory=list)  # already in the target: left as they were
    already_held: int = 0  # masks the target held before; nonzero: nothing was seeded


def seed_store(target: MaskStore, source: MaskStore) -> SeedReport:
    """Give an empty ``target`` every mask of ``source`` (each verified first); never overwrite.

    A target that already holds any mask is left alone: its owner may have deleted a seeded mask on purpose,
    and seeding again at every start would bring it back. Each mask goes in with :meth:`MaskStore.add`, so
    a mask that another writer stores meanwhile (two seeders starting at once) is kept, not replaced."""
    held = target.names()
    if held:
        return SeedReport(already_held=len(held))
    report = SeedReport()
    for name in source.names():
        data = source.read(name)
        decode_mask(data)  # never store a file that does not verify
        (report.seeded if target.add(name, data) else report.kept).append(name)
    return report
