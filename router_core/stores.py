"""Choosing a mask store from a location: ``redis://`` / ``rediss://`` / ``unix://`` URL or a folder path."""

from __future__ import annotations

from router_core.redis_store import DEFAULT_PREFIX, RedisStore
from router_core.registry import DirectoryStore, MaskStore

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(location: str, redis_prefix: str = DEFAULT_PREFIX) -> MaskStore:
    """A :class:`RedisStore` for a Redis URL (credentials and TLS in the URL), else a folder store."""
    if location.startswith(REDIS_SCHEMES):
        return RedisStore(location, prefix=redis_prefix)
    return DirectoryStore(location)
