"""The Redis mask store against the real Redis on 127.0.0.1:6379 (each test under its own key prefix)."""

import contextlib
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from helpers import REDIS_URL, audio_bytes, ctc_mask_bytes, tiny_backbone
from router_core.errors import MaskNotFoundError, StoreUnavailableError
from router_core.kernels.backend import select_backend
from router_core.redis_store import RedisStore, RegistryWatcher
from router_core.registry import MaskRegistry
from router_core.router import Router
from router_core.stores import open_store
from service.app import create_app
from service.cli import main
from service.pipeline.engine import Engine
from service.settings import ServiceSettings

ADMIN = {"Authorization": "Bearer redis-test-token"}


class Proxy:
    """A TCP proxy in front of Redis that the test can cut and restore ("Redis goes away")."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.frozen = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", 6379))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                while self.frozen.is_set():  # a hung Redis: connections stay open, nothing comes back
                    time.sleep(0.01)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self.up.clear()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        self.conns.clear()

    def restore(self) -> None:
        self.up.set()


def test_store_round_trip_versions_and_errors(prefix):
    bb = tiny_backbone()
    store = open_store(REDIS_URL, prefix)
    assert isinstance(store, RedisStore) and store.names() == []
    newer = ctc_mask_bytes(bb, "fr", seed=1)
    store.write("fr", ctc_mask_bytes(bb, "fr"))
    store.write("de", ctc_mask_bytes(bb, "de"))
    store.write("fr", newer)
    assert store.names() == ["de", "fr"] and store.read("fr") == newer
    versions = store.versions()
    assert versions["fr"] > versions["de"]
    assert store.delete("de") and not store.delete("de")
    with pytest.raises(MaskNotFoundError, match="available: fr"):
        store.read("de")
    dead = RedisStore("redis://user:secret@127.0.0.1:1/0", prefix)
    with pytest.raises(StoreUnavailableError) as err:
        dead.names()
    assert "secret" not in str(err.value)


def _engine_factory(url, prefix):
    def factory(settings):
        bb = tiny_backbone()
        store = RedisStore(url, prefix)
        registry = MaskRegistry(store, bb.spec())
        watcher = RegistryWatcher(registry, store, max_backoff_s=0.5).start()
        return Engine(bb, registry, Router(bb, registry, select_backend("cpu", "cpu")), "redis test", False, watcher)

    return factory


def _settings(tmp_path):
    return ServiceSettings(registry=str(tmp_path), admin_token="redis-test-token", max_wait_ms=1, vad=False)


def _wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_upload_through_one_replica_is_served_by_the_other_within_a_second(prefix, tmp_path):
    bb = tiny_backbone()
    RedisStore(REDIS_URL, prefix).write("fr", ctc_mask_bytes(bb, "fr", seed=0))
    a = TestClient(create_app(_settings(tmp_path / "a"), _engine_factory(REDIS_URL, prefix)))
    b = TestClient(create_app(_settings(tmp_path / "b"), _engine_factory(REDIS_URL, prefix)))
    with a, b:
        wav = audio_bytes(1.0)
        before = b.post("/transcribe?lang=fr", content=wav).json()["text"]  # fr now resident on b
        assert a.post("/transcribe?lang=es", content=wav).status_code == 404
        assert a.put("/masks/es", content=ctc_mask_bytes(bb, "es", seed=5), headers=ADMIN).status_code == 201
        assert b.post("/transcribe?lang=es", content=wav).status_code == 200  # new mask: read from Redis
        new_fr = ctc_mask_bytes(bb, "fr", seed=7)
        new_fr_text = a.put("/masks/fr", content=new_fr, headers=ADMIN)
        assert new_fr_text.status_code == 201
        expected = a.post("/transcribe?lang=fr", content=wav).json()["text"]
        assert expected != before
        started = time.monotonic()
        assert _wait_for(lambda: b.post("/transcribe?lang=fr", content=wav).json()["text"] == expected, 1.0)
        assert time.monotonic() - started < 1.0
        assert a.delete("/masks/es", headers=ADMIN).status_code == 204
        assert _wait_for(lambda: b.post("/transcribe?lang=es", content=wav).status_code == 404, 1.0)


def test_redis_outage_keeps_resident_masks_serving_then_catches_up(prefix, tmp_path):
    bb = tiny_backbone()
    direct = RedisStore(REDIS_URL, prefix)
    direct.write("fr", ctc_mask_bytes(bb, "fr", seed=0))
    proxy = Proxy()
    app = create_app(_settings(tmp_path), _engine_factory(f"redis://127.0.0.1:{proxy.port}/0", prefix))
    with TestClient(app) as client:
        wav = audio_bytes(1.0)
        assert client.post("/transcribe?lang=fr", content=wav).status_code == 200
        assert client.get("/readyz").json()["registry"] == "ok"
        proxy.cut()
        files = {"file": ("a.wav", wav, "audio/wav")}
        for _ in range(5):  # traffic during the outage: the resident mask keeps serving, on every endpoint
            assert client.post("/transcribe?lang=fr", content=wav).status_code == 200
            for form in ({"model": "fr"}, {"model": "whisper-1", "language": "fr"}):
                openai = client.post("/v1/audio/transcriptions", files=files, data=form)
                assert openai.status_code == 200, openai.text
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["registry"] == "degraded"
        down = client.post("/transcribe?lang=de", content=wav)  # not resident, store down
        assert down.status_code == 503 and int(down.headers["retry-after"]) >= 1
        direct.write("fr", ctc_mask_bytes(bb, "fr", seed=3))  # changed while this replica was cut off
        expected = Router(bb, MaskRegistry(direct, bb.spec())).transcribe([_decode(wav)], ["fr"])[0].text
        proxy.restore()
        assert _wait_for(lambda: client.get("/readyz").json()["registry"] == "ok", 5.0)
        assert _wait_for(lambda: client.post("/transcribe?lang=fr", content=wav).json()["text"] == expected, 3.0)


def test_a_store_that_comes_back_empty_does_not_empty_the_replica(prefix, tmp_path):
    """Redis restarted without its data: the masks it lacks were not deleted. The resident one keeps
    serving and /readyz says degraded until it is put back (every replica once evicted every mask and
    answered 404 while /readyz said ok)."""
    bb = tiny_backbone()
    direct = RedisStore(REDIS_URL, prefix)
    for name in ("fr", "de"):
        direct.write(name, ctc_mask_bytes(bb, name, seed=0))
    proxy = Proxy()
    app = create_app(_settings(tmp_path), _engine_factory(f"redis://127.0.0.1:{proxy.port}/0", prefix))
    with TestClient(app) as client:
        wav = audio_bytes(1.0)
        assert client.post("/transcribe?lang=fr", content=wav).status_code == 200  # fr is resident
        proxy.cut()
        for key in direct.client.scan_iter(f"{prefix}*"):  # the restart: every key and the counter gone
            direct.client.delete(key)
        proxy.restore()
        watcher = app.state.s3r.engine.watcher
        assert _wait_for(lambda: watcher.store_reset and not watcher.degraded, 10.0)
        assert "fr" in watcher.lost and watcher.lost == {m.name for m in app.state.s3r.engine.registry.resident()}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["registry"] == "degraded"
        assert client.post("/transcribe?lang=fr", content=wav).status_code == 200
        for name in sorted(watcher.lost):  # put back (e.g. masks-init seeds again)
            direct.write(name, ctc_mask_bytes(bb, name, seed=0))
        assert _wait_for(lambda: client.get("/readyz").json()["registry"] == "ok", 5.0)


def test_a_frozen_redis_adds_nothing_to_requests_for_resident_masks(prefix, tmp_path):
    bb = tiny_backbone()
    RedisStore(REDIS_URL, prefix).write("fr", ctc_mask_bytes(bb, "fr", seed=0))
    proxy = Proxy()
    app = create_app(_settings(tmp_path), _engine_factory(f"redis://127.0.0.1:{proxy.port}/0", prefix))
    with TestClient(app) as client:
        wav = audio_bytes(1.0)
        files = {"file": ("a.wav", wav, "audio/wav")}
        assert client.post("/transcribe?lang=fr", content=wav).status_code == 200  # fr is now resident
        proxy.frozen.set()  # Redis hangs instead of dying: its socket timeout is 5 s
        try:
            for _ in range(3):
                started = time.monotonic()
                assert client.post("/transcribe?lang=fr", content=wav).status_code == 200
                openai = client.post("/v1/audio/transcriptions", files=files, data={"model": "fr"})
                assert openai.status_code == 200
                assert time.monotonic() - started < 2.0  # two requests, no store round trip
        finally:
            proxy.frozen.clear()


def _decode(wav):
    from router_core.audio import decode_audio

    return decode_audio(wav, 60)


def test_masks_cli_copies_between_folder_and_redis(prefix, tmp_path, capsys):
    bb = tiny_backbone()
    fr = ctc_mask_bytes(bb, "fr")
    (tmp_path / "fr.s3mask").write_bytes(fr)
    url = REDIS_URL
    assert main(["masks", "--redis-prefix", prefix, "push", url, str(tmp_path / "fr.s3mask")]) == 0
    assert main(["masks", "--redis-prefix", prefix, "copy", url, str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "fr.s3mask").read_bytes() == fr
    assert main(["masks", "--redis-prefix", prefix, "ls", url]) == 0
    assert main(["masks", "--redis-prefix", prefix, "pull", url, "fr", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "fr.s3mask").is_file()
    assert main(["masks", "--redis-prefix", prefix, "rm", url, "fr"]) == 0
    assert main(["masks", "--redis-prefix", prefix, "rm", url, "fr"]) == 1
    (tmp_path / "bad.s3mask").write_bytes(b"nope")
    assert main(["masks", "--redis-prefix", prefix, "push", url, str(tmp_path / "bad.s3mask")]) == 1
    capsys.readouterr()
