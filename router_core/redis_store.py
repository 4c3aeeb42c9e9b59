"""Redis mask store and the hot-reload watcher that keeps replicas in step.

Keys (under a configurable prefix, default ``s3router:``)::

    {prefix}mask:{name}   hash: data (the mask file bytes), version (int), sha256
    {prefix}names         set of mask names
    {prefix}version       global version counter (INCR on every change)
    {prefix}changes       pub/sub channel: {"op": "put"|"delete", "name": ..., "version": ...}

A change is written in one MULTI/EXEC transaction, then published. :class:`RegistryWatcher` subscribes
on every replica and, for each change, re-validates and swaps (or evicts) the resident mask. When Redis
goes away the replica keeps serving what it holds (``degraded``), reconnects with exponential backoff,
and on reconnection compares versions to catch up on changes it missed. A store whose change counter went
back (Redis restarted without its data, or flushed) has not deleted the masks it lacks: the replica keeps
serving them and reports degraded (``store_reset``) until they are put back or an admin deletes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from typing import Any

import redis

from router_core.errors import MaskNotFoundError, S3RouterError, StoreUnavailableError
from router_core.mask_file import validate_mask_name
from router_core.registry import MaskRegistry

log = logging.getLogger(__name__)
DEFAULT_PREFIX = "s3router:"  # the one place the default key prefix is written


def redact_url(url: str) -> str:
    """``url`` with its credentials shown as ``***`` (for messages and logs); anything without ``@`` as is."""
    _, sep, tail = url.rpartition("@")
    return f"{url.split('://')[0]}://***@{tail}" if sep else url


class RedisStore:
    """Mask files in Redis, versioned, with change notifications. Credentials/TLS come from the URL."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, client: redis.Redis | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.client = client or redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.channel = f"{prefix}changes"

    def _key(self, name: str) -> str:
        return f"{self.prefix}mask:{validate_mask_name(name)}"

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"redis {what} failed ({self.url_without_password}): {exc}") from exc

    @property
    def url_without_password(self) -> str:
        return redact_url(self.url)

    def names(self) -> list[str]:
        members = self._call("SMEMBERS", self.client.smembers, f"{self.prefix}names")
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    def read(self, name: str) -> bytes:
        data = self._call("HGET", self.client.hget, self._key(name), "data")
        if data is None:
            raise MaskNotFoundError(name, self.names())
        return bytes(data)

    def generation(self) -> int:
        """The store's change counter (every put and delete raises it; an empty, restarted store has 0)."""
        value = self._call("GET", self.client.get, f"{self.prefix}version")
        return int(value) if value is not None else 0

    def versions(self) -> dict[str, int]:
        """``{name: version}`` of every stored mask (for catching up after an outage)."""
        names = self.names()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hget(self._key(name), "version")
        values = self._call("version scan", pipe.execute)
        return {n: int(v) for n, v in zip(names, values, strict=True) if v is not None}

    def _queue_put(self, pipe: Any, name: str, data: bytes, version: int) -> None:
        pipe.hset(self._key(name), mapping={"data": data, "version": version,
                                            "sha256": hashlib.sha256(data).hexdigest()})
        pipe.sadd(f"{self.prefix}names", name)
        pipe.publish(self.channel, json.dumps({"op": "put", "name": name, "version": version}))

    def write(self, name: str, data: bytes) -> None:
        version = int(self._call("INCR", self.client.incr, f"{self.prefix}version"))
        pipe = self.client.pipeline(transaction=True)
        self._queue_put(pipe, name, data, version)
        self._call("MULTI/EXEC", pipe.execute)

    def add(self, name: str, data: bytes) -> bool:
        """:meth:`write` unless ``name`` exists: the key is WATCHed, so a writer that gets in between the check
        and the transaction makes it abort (False) rather than be overwritten."""
        key = self._key(name)

        def attempt() -> bool:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(key)
                if pipe.exists(key):
                    return False
                version = int(self.client.incr(f"{self.prefix}version"))
                pipe.multi()
                self._queue_put(pipe, name, data, version)
                try:
                    pipe.execute()
                except redis.WatchError:
                    return False
                return True

        return bool(self._call("WATCH/MULTI/EXEC", attempt))

    def delete(self, name: str) -> bool:
        version = int(self._call("INCR", self.client.incr, f"{self.prefix}version"))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._key(name))
        pipe.srem(f"{self.prefix}names", name)
        pipe.publish(self.channel, json.dumps({"op": "delete", "name": name, "version": version}))
        removed, _, _ = self._call("MULTI/EXEC", pipe.execute)
        return bool(removed)

    def __repr__(self) -> str:
        return f"RedisStore({self.url_without_password!r}, prefix={self.prefix!r})"


class RegistryWatcher:
    """Applies published changes to a registry; survives Redis outages (see the module docstring)."""

    def __init__(self, registry: MaskRegistry, store: RedisStore, max_backoff_s: float = 30.0) -> None:
        self.registry = registry
        self.store = store
        self.max_backoff_s = max_backoff_s
        self.degraded = False  # Redis unreachable
        self.lost: set[str] = set()  # masks missing since the store was reset (restarted empty, flushed)
        self._seen: dict[str, int] = {}
        self._generation = 0  # the highest change counter seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3r-registry-watcher", daemon=True)

    def start(self) -> RegistryWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def store_reset(self) -> bool:
        """The store came back without masks this replica served: they keep serving, and /readyz says
        degraded until they are back or an admin deletes them."""
        return bool(self.lost)

    def _apply(self, op: str, name: str) -> None:
        self.lost.discard(name)  # put back, or deleted on purpose
        try:
            if op == "delete":
                self.registry.evict(name)
            elif self.registry.is_resident(name):
                self.registry.reload(name)  # validates first; a bad change leaves the old mask serving
        except S3RouterError as exc:
            log.warning("change to mask %s not applied: %s", name, exc)

    def _catch_up(self) -> None:
        """After (re)connecting: apply whatever changed while we were not listening."""
        current, generation = self.store.versions(), self.store.generation()
        if self._seen and generation < self._generation:  # the counter went back: a reset, not deletions
            self.lost |= {name for name in self._seen if name not in current and self.registry.is_resident(name)}
            log.warning("the mask store was reset (change counter %d, was %d): %d resident masks missing from "
                        "it keep serving", generation, self._generation, len(self.lost))
            self._seen, self._generation = current, generation
            return
        self._generation = max(self._generation, generation)
        for name in {*self._seen, *current}:
            if name not in current:
                self._apply("delete", name)
            elif self._seen.get(name) != current[name] and self._seen:
                self._apply("put", name)
        self._seen = current

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.store.channel)
                self._catch_up()
                self.degraded, backoff = False, 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        change = json.loads(message["data"])
                        self._seen[change["name"]] = int(change["version"])
                        self._generation = max(self._generation, int(change["version"]))
                        if change["op"] == "delete":
                            self._seen.pop(change["name"], None)
                        self._apply(change["op"], change["name"])
            except (redis.RedisError, StoreUnavailableError, OSError) as exc:
                if not self.degraded:
                    log.warning("mask registry degraded (redis unreachable): %s", exc)
                self.degraded = True
                self._stop.wait(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError):
                        pubsub.close()
