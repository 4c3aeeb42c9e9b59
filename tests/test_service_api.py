"""Every endpoint and error path of the HTTP service, through the real app (FastAPI TestClient/httpx)."""

import concurrent.futures
import math
import threading
import time
import urllib.parse

import pytest
from fastapi.testclient import TestClient

from helpers import (
    ADMIN_TOKEN,
    audio_bytes,
    ctc_spec,
    language_id_mask,
    tiny_backbone,
    tiny_engine_factory,
    unsure_language_masks,
)
from router_core.errors import InvalidMaskNameError
from router_core.mask_builder import random_mask
from router_core.mask_file import encode_mask, validate_mask_name
from service.app import create_app
from service.settings import ServiceSettings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _settings(tmp_path, **kw):
    # vad=False: these tests send a synthetic tone, which the speech gate (tested on its own) would stop
    base = dict(registry=str(tmp_path / "registry"), admin_token=ADMIN_TOKEN, max_wait_ms=5, max_audio_seconds=10,
                max_longform_seconds=30, vad=False)
    return ServiceSettings(**{**base, **kw})


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(_settings(tmp_path), tiny_engine_factory())) as c:
        yield c


def test_health_ready_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["masks_available"] == 3 and ready["kernel"] == "cpu"
    assert "/transcribe" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "fmt,rate,channels", [("WAV", 16000, 1), ("FLAC", 44100, 2), ("OGG", 22050, 1), ("MP3", 48000, 2)]
)
def test_transcribe_any_format_rate_and_channels(client, fmt, rate, channels):
    r = client.post(
        "/transcribe?lang=fr", content=audio_bytes(1.5, rate, channels, fmt), headers={"content-type": "audio/x"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language"] == "fr" and body["mask"] == "fr" and body["decoder"] == "greedy"
    assert body["duration"] == pytest.approx(1.5, abs=0.06)
    timing = body["timing"]
    assert set(timing) == {"queue_ms", "inference_ms", "items", "total_ms"} and timing["items"] == 1
    assert 0 < timing["inference_ms"] <= timing["total_ms"] and timing["queue_ms"] <= timing["total_ms"]
    assert all(w["start"] <= w["end"] for w in body["words"])


def test_multipart_upload_and_classify_top_k(client):
    files = {"file": ("a.wav", audio_bytes(1.0), "audio/wav")}
    r = client.post("/classify?task=cls_speaker&top_k=2", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "cls_speaker" and len(body["labels"]) == 2
    assert (
        body["label"] == body["labels"][0]["label"]
        and body["labels"][0]["probability"] >= body["labels"][1]["probability"]
    )
    t = client.post("/transcribe?lang=de", files=files)
    assert t.status_code == 200 and t.json()["language"] == "de"


def test_bad_input_gets_clear_4xx(client, tmp_path):
    wav = audio_bytes(1.0)
    cases = [
        (client.post("/transcribe?lang=fr", content=b"definitely not audio" * 10), 415, "decode"),
        (client.post("/transcribe?lang=fr", content=b""), 400, "no audio"),
        (client.post("/transcribe?lang=xx", content=wav), 404, "available: cls_speaker, de, fr"),
        (client.post("/transcribe?lang=cls_speaker", content=wav), 422, "classify mask"),
        (client.post("/classify?task=fr", content=wav), 422, "ctc mask"),
        (client.post("/transcribe?lang=fr", content=audio_bytes(31.0)), 413, "limit is 30"),
        (client.post("/classify?task=cls_speaker", content=audio_bytes(11.0)), 413, "limit is 10"),
        (client.post("/transcribe?lang=fr", content=audio_bytes(0.002)), 400, "too short"),
        (client.post("/transcribe?lang=../x", content=wav), 422, "should match pattern"),
        (client.post("/transcribe?lang=fr", files={"other": ("a", wav)}), 400, "no 'file' field"),
    ]
    for response, status, text in cases:
        assert response.status_code == status, response.text
        assert text in response.json()["error"]["message"]
    assert client.post("/transcribe", content=wav).status_code == 422  # lang missing: FastAPI validation


def test_upload_size_limit(tmp_path):
    settings = _settings(tmp_path, max_upload_bytes=2048)
    with TestClient(create_app(settings, tiny_engine_factory())) as c:
        r = c.post("/transcribe?lang=fr", content=audio_bytes(1.0))
        assert r.status_code == 413 and "2048" in r.json()["error"]["message"]


def test_masks_listing_and_admin_lifecycle(client):
    listing = client.get("/masks").json()
    assert {m["name"] for m in listing["masks"]} == {"fr", "de", "cls_speaker"}
    fr = client.get("/masks/fr").json()
    assert fr["kind"] == "ctc" and fr["keep_ratio"] == pytest.approx(0.9, abs=0.01) and fr["vocabulary_size"] == 12
    assert client.get("/masks/zz").status_code == 404

    bb = tiny_backbone()
    new = encode_mask(random_mask(bb.spec(), "es", ctc_spec(), bb.default_layer_names(), 0.9, seed=5))
    assert client.put("/masks/es", content=new).status_code == 401
    assert client.put("/masks/es", content=new, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.put("/masks/es", content=new, headers=ADMIN).status_code == 201
    assert client.post("/transcribe?lang=es", content=audio_bytes(1.0)).status_code == 200

    corrupt = bytearray(new)
    corrupt[-2] ^= 0xFF
    r = client.put("/masks/es", content=bytes(corrupt), headers=ADMIN)
    assert r.status_code == 400 and "checksum" in r.json()["error"]["message"]
    foreign = encode_mask(random_mask(tiny_backbone(seed=4).spec(), "es", ctc_spec(), bb.default_layer_names()))
    assert client.put("/masks/es", content=foreign, headers=ADMIN).status_code == 409
    assert client.put("/masks/de", content=new, headers=ADMIN).status_code == 400  # file holds 'es'
    assert client.post("/transcribe?lang=es", content=audio_bytes(1.0)).status_code == 200  # old one still serves

    assert client.post("/masks/es/load", headers=ADMIN).status_code == 200
    assert client.delete("/masks/es", headers=ADMIN).status_code == 204
    assert client.delete("/masks/es", headers=ADMIN).status_code == 404
    assert client.post("/transcribe?lang=es", content=audio_bytes(1.0)).status_code == 404


def test_admin_endpoints_are_off_without_a_token(tmp_path):
    with TestClient(create_app(_settings(tmp_path, admin_token=None), tiny_engine_factory())) as c:
        assert c.delete("/masks/fr", headers=ADMIN).status_code == 403
        assert c.get("/masks/fr").status_code == 200


def test_readyz_reports_a_failed_start_and_requests_get_503(tmp_path):
    def broken(settings):
        raise RuntimeError("backbone folder is empty")

    with TestClient(create_app(_settings(tmp_path), broken)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "backbone folder is empty" in r.json()["reason"]
        assert c.post("/transcribe?lang=fr", content=audio_bytes(1.0)).status_code == 503
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("refuse", [False, True], ids=["tuned", "kernel-refused"])
def test_start_up_prepares_the_kernels_for_the_largest_batch_the_settings_allow(tmp_path, refuse):
    import dataclasses

    from router_core.errors import KernelUnavailableError

    prepared = []

    def prepare(shapes, dtype, device, max_rows):
        prepared.append(max_rows)
        if refuse:
            raise KernelUnavailableError("the triton masked-matmul kernel is wrong on this device at 64x32->37")

    def factory(settings):
        engine = tiny_engine_factory()(settings)
        engine.router.backend = dataclasses.replace(engine.router.backend, prepare=prepare)
        return engine

    with TestClient(create_app(_settings(tmp_path, max_batch_size=3, max_audio_seconds=4), factory)) as c:
        frames_per_item = round(4 / tiny_backbone().seconds_per_frame) + 1  # tiny conv stack: 5 ms frames
        assert prepared == [3 * frames_per_item]
        r = c.get("/readyz")
        if refuse:
            assert r.status_code == 503 and "wrong on this device" in r.json()["reason"]
        else:
            assert r.status_code == 200 and r.json()["ready"]


def test_concurrent_mixed_masks_equal_sequential_results(client):
    requests = [("fr", 1), ("de", 2), ("fr", 3), ("de", 4), ("fr", 5), ("de", 6)]
    audio = {seed: audio_bytes(1.0 + seed / 10, seed=seed) for _, seed in requests}

    def call(lang, seed):
        r = client.post(f"/transcribe?lang={lang}", content=audio[seed])
        assert r.status_code == 200, r.text
        return r.json()["text"], r.json()["words"]

    sequential = [call(lang, seed) for lang, seed in requests]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        concurrent_results = list(pool.map(lambda a: call(*a), requests))
    assert concurrent_results == sequential


def test_metrics_present_and_increasing(client):
    def scrape():
        values = {}
        for line in client.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    client.post("/transcribe?lang=fr", content=audio_bytes(1.0))
    before = scrape()
    for _ in range(3):
        client.post("/transcribe?lang=fr", content=audio_bytes(1.0))
    client.post("/transcribe?lang=xx", content=audio_bytes(1.0))
    after = scrape()
    key = 's3router_requests_total{endpoint="/transcribe",mask="fr",status="200"}'
    assert after[key] == before[key] + 3
    assert after["s3router_audio_processed_seconds_total"] == pytest.approx(
        before["s3router_audio_processed_seconds_total"] + 3.0
    )
    assert after["s3router_batch_size_count"] >= before["s3router_batch_size_count"] + 1
    assert after['s3router_requests_total{endpoint="/transcribe",mask="-",status="404"}'] >= 1
    assert (
        after["s3router_masks_resident"] == 3
        and after["s3router_mask_cache_hits_total"] > before["s3router_mask_cache_hits_total"]
    )
    assert any(k.startswith("s3router_model_info{") for k in after)
    assert "s3router_queue_wait_seconds_bucket" in client.get("/metrics").text
    assert after["s3router_mask_loads_total"] == before["s3router_mask_loads_total"] >= 3  # warm hits load nothing
    client.post("/masks/de/load", headers=ADMIN)
    assert scrape()["s3router_mask_loads_total"] == after["s3router_mask_loads_total"] + 1


def test_overload_answers_503_with_retry_after_and_keeps_accepted_work(tmp_path):
    settings = _settings(tmp_path, max_queue=1, max_batch_size=1, max_wait_ms=0)
    with TestClient(create_app(settings, tiny_engine_factory(run_delay=0.3))) as c:
        wav = audio_bytes(1.0)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: c.post("/transcribe?lang=fr", content=wav), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["error"]["message"]


def test_request_past_its_deadline_gets_504(tmp_path):
    settings = _settings(tmp_path, request_timeout_s=0.1)
    with TestClient(create_app(settings, tiny_engine_factory(run_delay=0.5))) as c:
        r = c.post("/transcribe?lang=fr", content=audio_bytes(1.0))
        assert r.status_code == 504 and "deadline" in r.json()["error"]["message"]


@pytest.mark.parametrize("margin, confident", [(6.0, {"lid_confident": 0.99}), (40.0, {})])
def test_lang_auto_detects_then_transcribes_with_that_language(tmp_path, margin, confident):
    """A confident language-ID mask decides alone: p = sigmoid(6) against S3R_LID_CONFIDENT=0.99, and with the
    default (1.0) a probability that rounds to 1 (an LDA-fitted head's usual answer)."""
    bias = (-margin / 2, margin / 2)  # [fr, de]: de, p = sigmoid(margin)
    factory = tiny_engine_factory(more_masks=lambda bb: [language_id_mask(bb, bias)])
    with TestClient(create_app(_settings(tmp_path, **confident), factory)) as c:
        wav = audio_bytes(1.0)
        auto = c.post("/transcribe?lang=auto", content=wav).json()
        assert auto["language"] == "de" and auto["mask"] == "de"
        assert auto["language_probability"] == pytest.approx(1 / (1 + math.exp(-margin)), abs=1e-5)
        assert auto["text"] == c.post("/transcribe?lang=de", content=wav).json()["text"]
        files = {"file": ("a.wav", wav, "audio/wav")}
        assert (
            c.post("/v1/audio/transcriptions", files=files, data={"model": "s3router"}).json()["text"] == auto["text"]
        )


@pytest.mark.parametrize("candidates, language, text", [(3, "de", ""), (1, "fr", "x")])
def test_lang_auto_transcribes_the_candidates_and_keeps_the_best_explained(tmp_path, candidates, language, text):
    """The language-ID mask leans to fr (p = 0.55); the fr mask explains its own output poorly, the de mask
    perfectly: decoding both picks de. With one candidate the mask alone decides (fr)."""
    factory = tiny_engine_factory(more_masks=unsure_language_masks)
    settings = _settings(tmp_path, lid_candidates=candidates)
    with TestClient(create_app(settings, factory)) as c:
        auto = c.post("/transcribe?lang=auto", content=audio_bytes(1.0)).json()
        assert (auto["language"], auto["mask"], auto["text"]) == (language, language, text)
        p_de = 1 / (1 + math.exp(0.2))
        assert auto["language_probability"] == pytest.approx(p_de if language == "de" else 1 - p_de, abs=1e-5)
        # the timing counts every item the request ran: the language-ID mask's, then each candidate's
        assert auto["timing"]["items"] == 1 + (2 if candidates > 1 else 1)
        assert auto["timing"]["inference_ms"] <= auto["timing"]["total_ms"] * auto["timing"]["items"]
        metrics = c.get("/metrics").text
        decided, other = ("decoding", "mask") if candidates > 1 else ("mask", "decoding")
        assert f's3router_language_id_total{{decided_by="{decided}"}} 1.0' in metrics
        assert f's3router_language_id_total{{decided_by="{other}"}} 0.0' in metrics


def test_a_mask_swapped_to_another_kind_while_a_request_waits_gets_422_not_500(tmp_path):
    """An admin may replace 'fr' with a classification mask; requests admitted as transcriptions must get
    a clean 422 (they got a plain-text 500 from an assert)."""
    from router_core.heads import HeadSpec

    armed, entered, release = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:  # the request's batch waits in the forward pass until the mask was replaced
        if armed.is_set():
            entered.set()
            release.wait(30)

    with TestClient(create_app(_settings(tmp_path), tiny_engine_factory(before_forward=hold))) as c:
        bb = tiny_backbone()
        classifier = random_mask(bb.spec(), "fr", HeadSpec(kind="classify", labels=["a", "b"]),
                                 bb.default_layer_names(), 0.9, seed=4)
        armed.set()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(c.post, "/transcribe?lang=fr", content=audio_bytes(1.0))
            assert entered.wait(30)  # admitted as a transcription, in the forward pass
            assert c.put("/masks/fr", content=encode_mask(classifier), headers=ADMIN).status_code == 201
            release.set()
            answer = pending.result()
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["type"] == "MaskKindError" and "became a classify mask" in answer.text


@pytest.mark.parametrize("name", ["fr%0A", "fr%0D", "fr%20", "fr%0A%0A", "fr.", "a..b"])
def test_mask_names_with_a_trailing_newline_or_space_are_refused(client, name):
    """Checked by the declared parameter pattern (422) and again by the registry (400)."""
    assert client.post(f"/transcribe?lang={name}", content=audio_bytes(1.0)).status_code == 422
    put = client.put(f"/masks/{name}", content=b"x" * 10, headers=ADMIN)
    assert put.status_code == 422 and "should match pattern" in put.json()["error"]["message"]
    with pytest.raises(InvalidMaskNameError):
        validate_mask_name(urllib.parse.unquote(name))


def test_a_full_queue_refuses_before_decoding(tmp_path):
    """Under overload a 503 costs no decoding: garbage audio gets 503 (not 415) while the queue is full."""
    settings = _settings(tmp_path, max_queue=1, max_batch_size=1, max_wait_ms=0)
    with TestClient(create_app(settings, tiny_engine_factory(run_delay=0.6))) as c:
        wav = audio_bytes(1.0)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.post, "/transcribe?lang=fr", content=wav)  # runs
            time.sleep(0.2)
            second = pool.submit(c.post, "/transcribe?lang=fr", content=wav)  # waits in the queue
            time.sleep(0.2)
            garbage = c.post("/transcribe?lang=fr", content=b"not audio at all")
            assert garbage.status_code == 503 and int(garbage.headers["retry-after"]) >= 1
            assert first.result().status_code == 200 and second.result().status_code == 200
        assert c.post("/transcribe?lang=fr", content=b"not audio at all").status_code == 415  # room again


def test_bad_openai_options_are_refused_before_inference(tmp_path):
    with TestClient(create_app(_settings(tmp_path), tiny_engine_factory(run_delay=2.0))) as c:
        files = {"file": ("a.wav", audio_bytes(1.0), "audio/wav")}
        started = time.monotonic()
        bad = c.post("/v1/audio/transcriptions", files=files, data={"model": "fr", "response_format": "xml"})
        assert bad.status_code == 400 and time.monotonic() - started < 1.5  # the forward pass alone takes 2 s
        bad = c.post("/v1/audio/transcriptions", files=files,
                     data={"model": "fr", "timestamp_granularities[]": "char"})
        assert bad.status_code == 400 and time.monotonic() - started < 3.0


def test_every_status_the_app_produces_has_the_one_error_body(client):
    wav = audio_bytes(1.0)
    answers = {
        "unknown route": client.get("/nowhere"),
        "wrong method": client.get("/transcribe?lang=fr"),
        "missing query": client.post("/transcribe", content=wav),
        "bad query": client.post("/classify?task=cls_speaker&top_k=0", content=wav),
        "broken multipart": client.post("/transcribe?lang=fr", content=b"--x\r\nbroken",
                                        headers={"content-type": "multipart/form-data; boundary=x"}),
        "unknown mask": client.post("/transcribe?lang=xx", content=wav),
        "not audio": client.post("/transcribe?lang=fr", content=b"hello"),
        "two file parts": client.post("/transcribe?lang=fr", files=[("file", ("a.wav", wav)), ("file", ("b", wav))]),
    }
    expected = {"unknown route": 404, "wrong method": 405, "missing query": 422, "bad query": 422,
                "broken multipart": 400, "unknown mask": 404, "not audio": 415, "two file parts": 400}
    for what, answer in answers.items():
        assert answer.status_code == expected[what], (what, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert set(error) == {"type", "message"} and error["message"], (what, error)
    assert answers["wrong method"].headers["allow"] == "POST"
    assert client.patch("/masks/fr").headers["allow"] == "DELETE, GET, PUT"  # every route at the path
    assert answers["unknown route"].json()["error"]["type"] == "NotFound"


def test_a_file_part_without_a_filename_is_audio(client):
    wav = audio_bytes(1.0)
    boundary = "s3rboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n").encode() + wav + (
        f"\r\n--{boundary}--\r\n").encode()
    answer = client.post("/transcribe?lang=fr", content=body,
                         headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["text"] == client.post("/transcribe?lang=fr", content=wav).json()["text"]


def _spoken(text: str, voice: str = "de") -> bytes:
    import subprocess

    return subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout


def _wav(samples) -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype="float32"), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_silence_and_noise_give_an_empty_transcript_and_speech_does_not(tmp_path):
    """The speech gate (silero-vad): 5 s of silence gave "il est internes de la liste est instants"."""
    import numpy as np

    rng = np.random.default_rng(0)
    with TestClient(create_app(_settings(tmp_path, vad=True), tiny_engine_factory())) as c:
        for what, wav in [("silence", _wav(np.zeros(80_000))), ("noise", _wav(0.1 * rng.standard_normal(80_000))),
                          ("hum", audio_bytes(5.0))]:
            body = c.post("/transcribe?lang=fr", content=wav).json()
            assert body["text"] == "" and body["words"] == [] and body["no_speech_prob"] > 0.5, (what, body)
            assert body["decoder"] == "none (no speech)" and body["duration"] == 5.0
            files = {"file": ("a.wav", wav, "audio/wav")}
            openai = c.post("/v1/audio/transcriptions", files=files, data={"model": "fr", "response_format": "text"})
            assert openai.status_code == 200 and openai.text == "\n", what
            assert c.post("/transcribe?lang=xx", content=wav).status_code == 404  # the mask is still checked
        speech = c.post("/transcribe?lang=fr", content=_spoken("Der Hund spielt jeden Morgen im Garten.")).json()
        assert speech["decoder"] != "none (no speech)" and speech["no_speech_prob"] < 0.5


def test_warm_up_runs_one_mask_of_each_kind(tmp_path):
    """It warmed the first two names, which with the bundle are two CTC masks."""
    from service.pipeline.lifespan import warm_up

    settings = _settings(tmp_path)
    engine = tiny_engine_factory(mask_names=("de", "es", "fr", "zz_speaker"))(settings)
    from router_core.heads import HeadSpec

    bb = engine.backbone
    engine.registry.put(encode_mask(random_mask(bb.spec(), "zz_speaker", HeadSpec(kind="classify", labels=["a", "b"]),
                                                bb.default_layer_names(), 0.9, seed=2)))
    warmed = warm_up(engine, settings)
    assert sorted(engine.registry.get(name).kind for name in warmed) == ["classify", "ctc"]


def test_warm_up_loads_a_bounded_number_of_masks(tmp_path, monkeypatch):
    """A store of CTC masks only: warm-up looks at the first WARM_UP_TRIES, not every mask in the store."""
    from service.pipeline.lifespan import WARM_UP_TRIES, warm_up

    settings = _settings(tmp_path)
    engine = tiny_engine_factory(mask_names=tuple(f"m{i:02d}" for i in range(WARM_UP_TRIES + 4)))(settings)
    looked_up = []
    get = engine.registry.get
    monkeypatch.setattr(engine.registry, "get", lambda name: looked_up.append(name) or get(name))
    assert len(warm_up(engine, settings)) == 1  # one CTC mask warmed; no classification mask in reach
    assert len(set(looked_up)) == WARM_UP_TRIES  # the forward pass looks its mask up again
