"""API keys on the inference endpoints: bearer keys, per-key rate limits and mask lists, metrics by key ID."""

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from helpers import audio_bytes, tiny_engine_factory
from router_core.errors import AuthenticationError, RateLimitedError
from service.app import create_app
from service.pipeline.api_keys import ApiKeyChecker, parse_api_keys
from service.settings import ServiceSettings

ALPHA = "alpha-key-0123456789"
BETA = "beta-key-0123456789x"
KEYS = f"alpha:{ALPHA}:masks=fr|cls_speaker, beta:{BETA}:rps=2"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_parsing_entries_files_and_mistakes(tmp_path):
    keys = parse_api_keys(KEYS)
    assert [(k.id, k.rps, k.masks) for k in keys] == [("alpha", None, frozenset({"fr", "cls_speaker"})),
                                                       ("beta", 2.0, None)]
    listed = tmp_path / "keys.txt"
    listed.write_text(f"# tenants\nalpha:{ALPHA}\n\nbeta:{BETA}:rps=0.5  # slow\n")
    assert [k.id for k in parse_api_keys(f"@{listed}")] == ["alpha", "beta"]
    for bad in ["alpha:short", f"a:{ALPHA}:rps=0", f"a:{ALPHA}:rps=x", f"a:{ALPHA}:colour=red", f"a:{ALPHA},a:{BETA}",
                "@/no/such/file"]:
        with pytest.raises(ValueError):
            parse_api_keys(bad)
    with pytest.raises(ValidationError, match="api_keys"):
        ServiceSettings(api_keys="alpha:short")


def test_the_rate_limit_is_a_token_bucket():
    checker = ApiKeyChecker(parse_api_keys(f"beta:{BETA}:rps=2"))
    header = f"Bearer {BETA}"
    key = checker.authenticate(header)
    checker.admit(key, now=10.0)
    checker.admit(key, now=10.0)  # a bucket of 2
    with pytest.raises(RateLimitedError, match="over its limit") as refused:
        checker.admit(key, now=10.1)
    assert refused.value.retry_after == pytest.approx(0.4)  # 0.2 tokens came back; 0.8 more take 0.4 s at 2/s
    checker.admit(key, now=10.5)  # 1.0 token by then


def test_the_bearer_scheme_is_read_as_rfc_7235_writes_it():
    checker = ApiKeyChecker(parse_api_keys(KEYS))
    for header in (f"Bearer {ALPHA}", f"bearer {ALPHA}", f"BEARER  {ALPHA}", f"Bearer {ALPHA} "):
        assert checker.authenticate(header).id == "alpha", header
    for header in (f"Bearer{ALPHA}", f"Basic {ALPHA}", f"Bearer {ALPHA}x", f"Bearer {ALPHA[:-1]}", ALPHA, "", None):
        with pytest.raises(AuthenticationError):
            checker.authenticate(header)


def test_keys_guard_inference_and_leave_health_open(tmp_path):
    settings = ServiceSettings(registry=str(tmp_path / "registry"), max_wait_ms=1, vad=False, api_keys=KEYS)
    with TestClient(create_app(settings, tiny_engine_factory())) as c:
        wav = audio_bytes(1.0)
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200
        missing = c.post("/transcribe?lang=fr", content=wav)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "AuthenticationError"
        assert c.post("/transcribe?lang=fr", content=wav, headers=_bearer("wrong-key-0123456789")).status_code == 401
        files = {"file": ("a.wav", wav, "audio/wav")}
        assert c.post("/v1/audio/transcriptions", files=files, data={"model": "fr"}).status_code == 401
        assert c.post("/transcribe?lang=fr", content=wav, headers=_bearer(ALPHA)).status_code == 200
        assert c.post("/classify?task=cls_speaker", content=wav, headers=_bearer(ALPHA)).status_code == 200
        forbidden = c.post("/transcribe?lang=de", content=wav, headers=_bearer(ALPHA))
        assert forbidden.status_code == 403 and "may not use mask 'de'" in forbidden.json()["error"]["message"]
        openai = c.post("/v1/audio/transcriptions", files=files, data={"model": "fr"}, headers=_bearer(ALPHA))
        assert openai.status_code == 200
        assert c.post("/v1/audio/transcriptions", files=files, data={"model": "de"},
                      headers=_bearer(ALPHA)).status_code == 403
        answers = [c.post("/transcribe?lang=de", content=wav, headers=_bearer(BETA)) for _ in range(4)]
        codes = [a.status_code for a in answers]
        assert codes.count(200) >= 2 and 429 in codes, codes  # 2 requests/s, a bucket of 2
        limited = next(a for a in answers if a.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        metrics = c.get("/metrics").text
        assert 's3router_requests_by_key_total{key="alpha",status="200"} 3.0' in metrics  # fr, classify, OpenAI fr
        assert 's3router_requests_by_key_total{key="alpha",status="403"} 2.0' in metrics
        assert 's3router_requests_by_key_total{key="beta",status="429"}' in metrics
        assert ALPHA not in metrics and BETA not in metrics


def test_the_model_list_needs_a_key_and_shows_only_the_masks_it_may_use(tmp_path):
    settings = ServiceSettings(registry=str(tmp_path / "registry"), max_wait_ms=1, vad=False, api_keys=KEYS)
    with TestClient(create_app(settings, tiny_engine_factory())) as c:
        missing = c.get("/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "AuthenticationError"
        limited = [m["id"] for m in c.get("/v1/models", headers=_bearer(ALPHA)).json()["data"]]
        everything = [m["id"] for m in c.get("/v1/models", headers=_bearer(BETA)).json()["data"]]
        assert limited == ["s3router", "fr"] and {"s3router", "fr", "de"} <= set(everything)
        metrics = c.get("/metrics").text
        assert 's3router_requests_by_key_total{key="alpha",status="200"} 1.0' in metrics
        # the schema declares what keys add to every speech endpoint
        paths = c.get("/openapi.json").json()["paths"]
        for path, method in (("/transcribe", "post"), ("/classify", "post"), ("/v1/audio/transcriptions", "post"),
                             ("/v1/models", "get")):
            assert {"401", "429"} <= set(paths[path][method]["responses"]), path
        assert "403" in paths["/transcribe"]["post"]["responses"]


def test_the_compose_env_file_loads_with_its_empty_secrets(monkeypatch):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    for line in (root / ".env.example").read_text().splitlines():
        if line.startswith("S3R_"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, value)
    settings = ServiceSettings()
    assert settings.admin_token is None and settings.api_keys is None and settings.vad
