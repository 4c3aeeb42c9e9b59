"""Mask stores and the registry that keeps decoded masks resident on the device.

A :class:`MaskStore` holds mask files by name (bytes in, bytes out). :class:`DirectoryStore` is the
embedded default: one ``<name>.s3mask`` file per mask, written atomically (temp file + fsync +
rename), so concurrent readers see the old file or the new one, never half of one.

:class:`MaskRegistry` resolves names to :class:`LoadedMask` objects on the device, in an LRU bounded
by bytes. A mask is read, decoded and validated against the backbone *before* anything is evicted
or replaced, so a bad file never costs a working mask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from router_core.backbone import BackboneSpec
from router_core.errors import (
    InvalidInputError,
    MaskNotFoundError,
    RegistryBudgetError,
    StoreUnavailableError,
)
from router_core.heads import MaskKind, OutputHead
from router_core.mask_file import RoutingMask, check_compatible, decode_mask, validate_mask_name

MASK_SUFFIX = ".s3mask"


class MaskStore(Protocol):
    """Where mask files live. Names are validated by the caller (:func:`validate_mask_name`)."""

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...  # raises MaskNotFoundError

    def write(self, name: str, data: bytes) -> None: ...

    def add(self, name: str, data: bytes) -> bool: ...  # write unless ``name`` exists (atomically); False then

    def delete(self, name: str) -> bool: ...  # False when there was nothing to delete


STALE_TEMP_S = 600.0  # a temporary file this old in a folder store has no writer left


class DirectoryStore:
    """A folder of ``<name>.s3mask`` files."""

    def __init__(self, root: str | Path, stale_after_s: float = STALE_TEMP_S) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries(stale_after_s)

    def _remove_stale_temporaries(self, older_than_s: float) -> None:
        """Temporary files left by a writer that was killed mid-write (a finished write renames or removes
        its own); one younger than ``older_than_s`` may belong to a writer still at work, and is kept."""
        now = time.time()
        for tmp in self.root.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()

    def _path(self, name: str) -> Path:
        return self.root / f"{validate_mask_name(name)}{MASK_SUFFIX}"

    def names(self) -> list[str]:
        return sorted(p.name[: -len(MASK_SUFFIX)] for p in self.root.glob(f"*{MASK_SUFFIX}") if p.is_file())

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise MaskNotFoundError(name, self.names()) from None
        except OSError as exc:
            raise StoreUnavailableError(f"cannot read mask {name!r} from {self.root}: {exc}") from exc

    def _staged(self, name: str, data: bytes) -> Path:
        """``data`` in a complete, synced temporary file beside ``name``'s (for an atomic rename or link)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.root)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; mask files are meant to be readable by the server user
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def write(self, name: str, data: bytes) -> None:
        target = self._path(name)
        tmp = self._staged(name, data)
        try:
            os.replace(tmp, target)  # atomic on POSIX: readers see old or new, never partial
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def add(self, name: str, data: bytes) -> bool:
        target = self._path(name)
        tmp = self._staged(name, data)
        try:
            os.link(tmp, target)  # fails if the name exists: never replaces, and never shows a partial file
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, name: str) -> bool:
        try:
            self._path(name).unlink()
            return True
        except FileNotFoundError:
            return False

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"


@dataclass
class LoadedMask:
    """A validated mask with its bits and head resident on the serving device."""

    mask: RoutingMask
    head: OutputHead
    nbytes: int
    digest: str = ""  # SHA-256 of the file it was read from (an identical upload changes nothing)

    @property
    def name(self) -> str:
        return self.mask.name

    @property
    def kind(self) -> MaskKind:
        return self.mask.kind


@dataclass
class RegistryStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: int = 0
    evicted: list[str] = field(default_factory=list)  # most recent last, bounded


class MaskRegistry:
    """Name -> resident :class:`LoadedMask`, LRU-bounded by ``budget_bytes``; thread-safe."""

    def __init__(
        self,
        store: MaskStore,
        spec: BackboneSpec,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        budget_bytes: int = 512 * 2**20,
    ) -> None:
        self.store = store
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype
        self.budget_bytes = int(budget_bytes)
        self.stats = RegistryStats()
        self._resident: OrderedDict[str, LoadedMask] = OrderedDict()
        self._resident_bytes = 0  # sum of the resident masks' nbytes, kept as they come and go
        self.kinds: dict[str, MaskKind] = {}  # every mask loaded since start, resident or not: its kind
        self._lock = threading.RLock()
        self._load_locks: dict[str, threading.Lock] = {}

    # --- queries ---------------------------------------------------------------------------------
    def available(self) -> list[str]:
        return self.store.names()

    def resident(self) -> list[LoadedMask]:
        with self._lock:
            return list(self._resident.values())

    def is_resident(self, name: str) -> bool:
        return name in self._resident

    @property
    def resident_bytes(self) -> int:
        return self._resident_bytes

    # --- loading ---------------------------------------------------------------------------------
    def prepare(self, data: bytes, expected_name: str | None = None) -> LoadedMask:
        """Decode, validate against the backbone and move to the device; touches nothing resident."""
        mask = decode_mask(data)
        if expected_name is not None and mask.name != expected_name:
            raise InvalidInputError(f"the file holds mask {mask.name!r}, not {expected_name!r}")
        check_compatible(mask, self.spec)
        loaded = self._to_device(mask)
        loaded.digest = hashlib.sha256(data).hexdigest()
        return loaded

    def _to_device(self, mask: RoutingMask) -> LoadedMask:
        bits = {n: b.to(self.device) for n, b in mask.layer_bits.items()}
        head = OutputHead(mask.head, self.spec.hidden_size, self.spec.num_hidden_states)
        with torch.no_grad():
            head.proj.weight.copy_(mask.head_weight)
            head.proj.bias.copy_(mask.head_bias)
            if head.layer_weights is not None and mask.head_layer_weights is not None:
                head.layer_weights.copy_(mask.head_layer_weights)
        head = head.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        on_device = RoutingMask(
            name=mask.name,
            head=mask.head,
            head_weight=head.proj.weight,
            head_bias=head.proj.bias,
            layer_bits=bits,
            layer_shapes=mask.layer_shapes,
            fingerprint=mask.fingerprint,
            keep_ratios=mask.keep_ratios,
            metrics=mask.metrics,
            created_at=mask.created_at,
            head_layer_weights=head.layer_weights,
            lm=mask.lm,  # host-side: beam search runs on the CPU
        )
        return LoadedMask(on_device, head, on_device.nbytes)

    def get(self, name: str) -> LoadedMask:
        """The resident mask ``name``, loading it from the store on a miss."""
        validate_mask_name(name)
        with self._lock:
            loaded = self._resident.get(name)
            if loaded is not None:
                self._resident.move_to_end(name)
                self.stats.hits += 1
                return loaded
            self.stats.misses += 1
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        try:
            with load_lock:  # one load per name at a time; other names load in parallel
                with self._lock:
                    if name in self._resident:
                        return self._resident[name]
                loaded = self.prepare(self.store.read(name), expected_name=name)
                self._admit(loaded)
                return loaded
        finally:
            with self._lock:  # never accumulate locks for names that were asked for once (or do not exist)
                self._load_locks.pop(name, None)

    def _check_fits(self, loaded: LoadedMask) -> None:
        if loaded.nbytes > self.budget_bytes:
            raise RegistryBudgetError(
                f"mask {loaded.name!r} needs {loaded.nbytes} bytes, more than the whole budget of {self.budget_bytes}"
            )

    def _admit(self, loaded: LoadedMask) -> None:
        """Insert a validated mask, evicting least-recently-used ones to stay within the budget."""
        self._check_fits(loaded)
        with self._lock:
            self._drop(loaded.name)
            while self._resident and self._resident_bytes + loaded.nbytes > self.budget_bytes:
                victim_name = next(iter(self._resident))  # least recently used
                self._drop(victim_name)
                self.stats.evictions += 1
                self.stats.evicted = [*self.stats.evicted[-31:], victim_name]
            self._resident[loaded.name] = loaded
            self._resident_bytes += loaded.nbytes
            self.kinds[loaded.name] = loaded.kind
            self.stats.loads += 1

    def _drop(self, name: str) -> bool:
        """Remove ``name``'s resident copy, if any (under the lock); O(1) whatever is resident."""
        gone = self._resident.pop(name, None)
        if gone is not None:
            self._resident_bytes -= gone.nbytes
        return gone is not None

    # --- changes ---------------------------------------------------------------------------------
    def put(self, data: bytes, name: str | None = None) -> LoadedMask:
        """Validate a mask file fully, then store it and make it resident (replacing an old version). The
        same bytes as the resident mask of that ``name`` are a no-op: nothing is written, published (other
        replicas would reload it) or rebuilt, and the resident copy stays."""
        if name is not None:
            with self._lock:
                held = self._resident.get(name)
            if held is not None and held.digest == hashlib.sha256(data).hexdigest():
                return held
        loaded = self.prepare(data, expected_name=name)
        self._check_fits(loaded)  # a mask that could never be served is not stored either
        self.store.write(loaded.name, data)
        self._admit(loaded)
        return loaded

    def reload(self, name: str) -> LoadedMask:
        """Re-read ``name`` from the store (validate first, then swap the resident copy)."""
        loaded = self.prepare(self.store.read(name), expected_name=name)
        self._admit(loaded)
        return loaded

    def delete(self, name: str) -> None:
        validate_mask_name(name)
        with self._lock:
            self._drop(name)
            self.kinds.pop(name, None)
        if not self.store.delete(name):
            raise MaskNotFoundError(name, self.available())

    def evict(self, name: str) -> bool:
        """Drop the resident copy only (the store keeps the file)."""
        with self._lock:
            return self._drop(name)
