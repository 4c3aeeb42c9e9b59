import threading

import pytest

from helpers import add_masks, ctc_spec, tiny_backbone
from router_core.errors import (
    ChecksumMismatchError,
    FingerprintMismatchError,
    InvalidInputError,
    MaskNotFoundError,
    RegistryBudgetError,
)
from router_core.mask_builder import random_mask
from router_core.mask_file import encode_mask
from router_core.registry import DirectoryStore, MaskRegistry


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def _data(bb, name, seed=0):
    return encode_mask(random_mask(bb.spec(), name, ctc_spec(), bb.default_layer_names(), 0.9, seed=seed))


def test_directory_store_round_trip_and_atomic_replace(tmp_path, bb):
    store = DirectoryStore(tmp_path)
    old, new = _data(bb, "fr", 1), _data(bb, "fr", 2)
    store.write("fr", old)
    assert store.names() == ["fr"] and store.read("fr") == old
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(store.read("fr"))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(30):
        store.write("fr", new if i % 2 == 0 else old)
    stop.set()
    for t in threads:
        t.join()
    assert seen <= {old, new}  # never a partial file
    assert not list(tmp_path.glob("*.tmp"))
    assert store.delete("fr") and not store.delete("fr")
    with pytest.raises(MaskNotFoundError):
        store.read("fr")


def test_lru_eviction_respects_the_byte_budget(tmp_path, bb):
    registry = MaskRegistry(DirectoryStore(tmp_path), bb.spec())
    registry.budget_bytes = int(registry.prepare(_data(bb, "a")).nbytes * 2.5)
    for i, name in enumerate(["a", "b", "c"]):
        registry.store.write(name, _data(bb, name, i))
    registry.get("a")
    registry.get("b")
    registry.get("a")  # a is now most recent
    registry.get("c")  # evicts b, the least recently used
    assert [m.name for m in registry.resident()] == ["a", "c"]
    assert registry.resident_bytes <= registry.budget_bytes
    assert registry.stats.evictions == 1 and registry.stats.evicted == ["b"]
    assert registry.stats.hits == 1 and registry.stats.misses == 3


def test_a_bad_file_never_evicts_a_working_mask(tmp_path, bb):
    registry = MaskRegistry(DirectoryStore(tmp_path), bb.spec())
    registry.budget_bytes = int(registry.prepare(_data(bb, "a")).nbytes * 1.5)
    registry.put(_data(bb, "a"))
    corrupt = bytearray(_data(bb, "b"))
    corrupt[-2] ^= 0xFF
    registry.store.write("b", bytes(corrupt))
    with pytest.raises(ChecksumMismatchError):
        registry.get("b")
    assert [m.name for m in registry.resident()] == ["a"]  # untouched by the failed load


def test_bad_upload_leaves_the_old_mask_serving_and_stored(tmp_path, bb):
    registry = MaskRegistry(DirectoryStore(tmp_path), bb.spec())
    good = _data(bb, "fr")
    first = registry.put(good)
    foreign = encode_mask(random_mask(tiny_backbone(seed=9).spec(), "fr", ctc_spec(), bb.default_layer_names(), 0.9))
    with pytest.raises(FingerprintMismatchError):
        registry.put(foreign)
    with pytest.raises(InvalidInputError, match="holds mask 'fr'"):
        registry.put(good, name="de")
    assert registry.get("fr") is first
    assert registry.store.read("fr") == good


def test_mask_larger_than_budget_and_missing_masks(tmp_path, bb):
    registry = MaskRegistry(DirectoryStore(tmp_path), bb.spec(), budget_bytes=100)
    with pytest.raises(RegistryBudgetError, match="budget"):
        registry.put(_data(bb, "fr"))
    assert registry.available() == []  # nothing stored when it cannot be served
    with pytest.raises(MaskNotFoundError, match="available: none"):
        registry.get("de")


def test_delete_and_reload(make_registry, bb):
    registry = make_registry(bb)
    add_masks(registry, bb, ["fr", "de"])
    registry.store.write("fr", _data(bb, "fr", seed=42))
    reloaded = registry.reload("fr")
    assert registry.get("fr") is reloaded
    registry.delete("de")
    assert registry.available() == ["fr"]
    with pytest.raises(MaskNotFoundError):
        registry.delete("de")


def test_lookups_of_unknown_names_leave_nothing_behind(make_registry, bb):
    registry = make_registry(bb)
    for i in range(50):
        with pytest.raises(MaskNotFoundError):
            registry.get(f"nope{i}")
    assert registry._load_locks == {} and registry.resident() == []


def test_resident_bytes_follow_loads_evictions_replacements_and_deletes(bb, make_registry):
    """The byte count is kept as masks come and go (no sum over every resident mask per miss); it must
    equal the sum of what is resident after any mix of changes."""
    names = [f"m{i}" for i in range(6)]
    probe = encode_mask(random_mask(bb.spec(), "m0", ctc_spec(), bb.default_layer_names(), 0.9, seed=1))
    one = make_registry(bb, sub="probe").prepare(probe).nbytes  # every mask of this backbone has this size
    registry = make_registry(bb, budget_bytes=3 * one)
    add_masks(registry, bb, names)  # 6 puts into room for 3: evictions
    for name in ["m0", "m5", "m2", "m5"]:  # misses load, hits reorder
        registry.get(name)
    add_masks(registry, bb, ["m5"])  # a replacement
    registry.evict("m2")
    registry.delete("m0")

    def counted() -> int:
        return sum(m.nbytes for m in registry.resident())

    assert registry.resident_bytes == counted() <= 3 * one
    assert registry.is_resident("m5") and not registry.is_resident("m0")
    assert registry.stats.evictions >= 3


def test_a_missing_mask_names_at_most_twenty_of_the_others():
    err = MaskNotFoundError("xx", [f"lang{i:03d}" for i in range(1000)])
    assert "lang019" in str(err) and "lang020" not in str(err) and "980 more (GET /masks" in str(err)


def test_uploading_the_resident_masks_own_bytes_again_changes_nothing(tmp_path):
    """An identical re-upload (a deploy script re-pushing every mask) keeps the resident copy and writes
    nothing, so no replica reloads it; other bytes under that name replace it. (23 such PUTs in 15 s once
    cut completed transcriptions from 107 to 13.)"""
    writes = []

    class CountingStore(DirectoryStore):
        def write(self, name, data):
            writes.append(name)
            super().write(name, data)

    bb = tiny_backbone()
    registry = MaskRegistry(CountingStore(tmp_path), bb.spec(), budget_bytes=64 * 2**20)
    data = encode_mask(random_mask(bb.spec(), "fr", ctc_spec(), bb.default_layer_names(), 0.9, seed=0))
    first = registry.put(data, "fr")
    assert registry.put(data, "fr") is first and registry.get("fr") is first and writes == ["fr"]
    other = encode_mask(random_mask(bb.spec(), "fr", ctc_spec(), bb.default_layer_names(), 0.9, seed=1))
    assert registry.put(other, "fr") is not first and writes == ["fr", "fr"]


def test_a_folder_store_removes_temporaries_a_killed_writer_left(tmp_path):
    """A PUT killed mid-write leaves its temporary file; opening the store removes one older than any
    write takes, and keeps a fresh one (a writer may still be at work) and the masks."""
    import os

    stale, fresh, mask = tmp_path / ".fr.abc123.tmp", tmp_path / ".de.def456.tmp", tmp_path / "es.s3mask"
    for path in (stale, fresh, mask):
        path.write_bytes(b"x")
    os.utime(stale, (1, 1))
    DirectoryStore(tmp_path)
    assert not stale.exists() and fresh.exists() and mask.exists()
