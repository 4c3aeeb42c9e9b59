"""A live server on loopback: the official openai client unchanged, and `s3router serve` start-up."""

import subprocess
import sys

import httpx
import openai
import pytest
from pydantic import ValidationError

from helpers import audio_bytes, free_port, serve_in_thread, tiny_engine_factory, wait_until_ready
from service.app import create_app
from service.settings import ServiceSettings


@pytest.fixture(scope="module")
def live_url(tmp_path_factory):
    settings = ServiceSettings(registry=str(tmp_path_factory.mktemp("reg")), max_wait_ms=5, vad=False)  # a tone
    with serve_in_thread(create_app(settings, tiny_engine_factory())) as url:
        yield url


@pytest.fixture(scope="module")
def client(live_url):
    return openai.OpenAI(base_url=f"{live_url}/v1", api_key="unused", max_retries=0)


def test_openai_json_text_and_verbose(client):
    audio = ("speech.wav", audio_bytes(2.0), "audio/wav")
    plain = client.audio.transcriptions.create(model="fr", file=audio)
    assert isinstance(plain.text, str)
    text = client.audio.transcriptions.create(model="s3router", language="fr", file=audio, response_format="text")
    assert text.strip() == plain.text
    verbose = client.audio.transcriptions.create(
        model="fr", file=audio, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert verbose.language == "fr" and verbose.duration == pytest.approx(2.0, abs=0.01)
    assert verbose.text == plain.text
    assert [w.word for w in verbose.words] == plain.text.split()
    assert " ".join(s.text for s in verbose.segments) == plain.text
    assert all(0 < w.model_extra["probability"] <= 1 for w in verbose.words)  # from the CTC posteriors
    assert all(s.avg_logprob < 0 for s in verbose.segments)


def test_openai_subtitles_and_errors(client):
    audio = ("speech.flac", audio_bytes(2.0, 44100, 2, "FLAC"), "audio/flac")
    srt = client.audio.transcriptions.create(model="de", file=audio, response_format="srt")
    vtt = client.audio.transcriptions.create(model="de", file=audio, response_format="vtt")
    assert vtt.startswith("WEBVTT")
    if srt.strip():
        assert srt.startswith("1\n") and " --> " in srt and "," in srt.splitlines()[1]
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="s3router", language="zz", file=audio)
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="s3router", file=audio)  # no language, no mask as model
    with pytest.raises(openai.UnprocessableEntityError):
        client.audio.transcriptions.create(model="cls_speaker", file=audio)


def test_models_list_the_service_model_and_its_transcription_masks(client):
    client.audio.transcriptions.create(model="fr", file=("a.wav", audio_bytes(1.0), "audio/wav"))
    with pytest.raises(openai.UnprocessableEntityError):  # loads cls_speaker: now known to classify
        client.audio.transcriptions.create(model="cls_speaker", file=("a.wav", audio_bytes(1.0), "audio/wav"))
    models = {m.id: m for m in client.models.list()}
    assert {"s3router", "fr", "de"} <= set(models) and "cls_speaker" not in models
    assert models["fr"].owned_by == "s3router" and models["fr"].model_extra["parent"] == "s3router"
    assert models["s3router"].model_extra["parent"] is None


def test_translations_are_refused_with_501_and_a_stream_answers_with_events(client, live_url):
    with pytest.raises(openai.APIStatusError) as refused:
        client.audio.translations.create(model="s3router", file=("a.wav", audio_bytes(1.0), "audio/wav"))
    assert refused.value.status_code == 501 and "not supported" in refused.value.message
    plain = client.audio.transcriptions.create(model="fr", file=("a.wav", audio_bytes(2.0), "audio/wav"))
    events = list(client.audio.transcriptions.create(model="fr", file=("a.wav", audio_bytes(2.0), "audio/wav"),
                                                     stream=True))
    assert [e.type for e in events][-1] == "transcript.text.done" and events[-1].text == plain.text
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == plain.text


def test_invalid_settings_fail_clearly(monkeypatch):
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServiceSettings(max_batch_size=0)
    monkeypatch.setenv("S3R_DEVICE", "toaster")
    with pytest.raises(ValidationError, match="not a torch device"):
        ServiceSettings()
    monkeypatch.delenv("S3R_DEVICE")
    monkeypatch.setenv("S3R_ADMIN_TOKEN", "short")
    with pytest.raises(ValidationError, match="admin_token"):
        ServiceSettings()


@pytest.mark.slow
def test_s3router_serve_starts_the_demo_model_and_rejects_bad_flags(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--max-batch-size", "-3"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "max_batch_size" in bad.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{url}/readyz", 90)
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["model"]
        r = httpx.post(f"{url}/transcribe?lang=en", content=audio_bytes(1.0), timeout=30)
        assert r.status_code == 200 and "text" in r.json()
    finally:
        proc.terminate()
        proc.wait(15)
