"""The WebSocket stream on a tiny model (VAD off: fixed windows; a tone): protocol, results, limits."""

import io
import re

import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from helpers import audio_bytes, language_id_mask, tiny_engine_factory, unsure_language_masks
from service.app import create_app
from service.settings import ServiceSettings


def _settings(tmp_path, **kw):
    base = dict(registry=str(tmp_path / "registry"), max_wait_ms=2, max_audio_seconds=10, max_longform_seconds=30,
                vad=False, segment_max_s=4.0, stream_partial_interval_s=0.5)
    return ServiceSettings(**{**base, **kw})


def _pcm(seconds: float, rate: int = 16_000) -> bytes:
    audio, _ = sf.read(io.BytesIO(audio_bytes(seconds, rate)), dtype="int16")
    return audio.astype("<i2").tobytes()


def _stream(ws, pcm: bytes, chunk_s: float = 0.1, rate: int = 16_000) -> list[dict]:
    step = int(chunk_s * rate) * 2
    for i in range(0, len(pcm), step):
        ws.send_bytes(pcm[i : i + step])
    ws.send_text('{"type": "end"}')
    messages = []
    while True:
        message = ws.receive_json()
        messages.append(message)
        if message["type"] == "done":
            return messages


def test_a_stream_sends_partials_then_finals_that_match_the_whole_file(tmp_path):
    with TestClient(create_app(_settings(tmp_path), tiny_engine_factory())) as client:
        with client.websocket_connect("/v1/stream?lang=fr") as ws:
            messages = _stream(ws, _pcm(6.0))
        whole = client.post("/transcribe?lang=fr", content=audio_bytes(6.0)).json()
        metric = re.search(r"^s3router_stream_audio_seconds_total (\S+)$", client.get("/metrics").text, re.M)
        assert metric and float(metric.group(1)) == pytest.approx(6.0)
    finals = [m for m in messages if m["type"] == "final"]
    assert [m["type"] for m in messages][-1] == "done" and any(m["type"] == "partial" for m in messages)
    assert [(f["start"], f["end"]) for f in finals] == [(0.0, 4.0), (4.0, 6.0)]  # 4 s windows without a VAD
    assert " ".join(f["text"] for f in finals) == whole["text"]  # the same windows as /transcribe cuts
    words = [w for f in finals for w in f["words"]]
    assert words == whole["words"] and all(f["language"] == "fr" for f in finals)


def test_auto_stream_partials_take_the_language_id_mask_and_finals_are_decided_by_decoding(tmp_path):
    """Partials are cheap (the language-ID mask alone: fr); a final tries the candidates (de wins)."""
    factory = tiny_engine_factory(more_masks=unsure_language_masks)
    with TestClient(create_app(_settings(tmp_path), factory)) as client, \
            client.websocket_connect("/v1/stream?lang=auto") as ws:
        messages = _stream(ws, _pcm(3.0))
    partials = [m for m in messages if m["type"] == "partial"]
    finals = [m for m in messages if m["type"] == "final"]
    assert partials and all((m["language"], m["text"]) == ("fr", "x") for m in partials)
    assert finals and all((m["language"], m["text"]) == ("de", "") for m in finals)


def test_a_stream_at_another_rate_is_resampled(tmp_path):
    with TestClient(create_app(_settings(tmp_path), tiny_engine_factory())) as client, \
            client.websocket_connect("/v1/stream?lang=de&rate=8000") as ws:
        finals = [m for m in _stream(ws, _pcm(3.0, 8000), rate=8000) if m["type"] == "final"]
    assert len(finals) == 1 and finals[0]["end"] == pytest.approx(3.0, abs=0.01)


def test_a_stream_at_8_khz_in_20_ms_messages_gives_what_the_whole_file_gives(tmp_path):
    """One resampler for the whole stream: its 16 kHz audio, hence its windows and transcripts, are the
    upload's (resampling each message alone puts an edge into the audio every 20 ms)."""
    with TestClient(create_app(_settings(tmp_path), tiny_engine_factory())) as client:
        with client.websocket_connect("/v1/stream?lang=fr&rate=8000") as ws:
            finals = [m for m in _stream(ws, _pcm(6.0, 8000), chunk_s=0.02, rate=8000) if m["type"] == "final"]
        whole = client.post("/transcribe?lang=fr", content=audio_bytes(6.0, 8000)).json()
    assert [(f["start"], f["end"]) for f in finals] == [(0.0, 4.0), (4.0, 6.0)]
    assert " ".join(f["text"] for f in finals) == whole["text"]
    assert [w for f in finals for w in f["words"]] == whole["words"]


def test_a_stream_at_an_odd_rate_is_read_at_the_nearest_25_hz_as_uploads_are(tmp_path):
    """16,001 Hz is read as 16,000 Hz (resampling 16001:16000 exactly took gigabytes and blocked the loop)."""
    pcm = _pcm(3.0)
    with TestClient(create_app(_settings(tmp_path), tiny_engine_factory())) as client:
        results = []
        for rate in (16_000, 16_001):
            with client.websocket_connect(f"/v1/stream?lang=fr&rate={rate}") as ws:
                results.append([m for m in _stream(ws, pcm) if m["type"] == "final"])
    assert results[0] and results[1] == results[0]


@pytest.mark.parametrize(
    "query,settings,send,code,reason",
    [
        ("lang=xx", {}, None, 1008, "no mask named 'xx'"),
        ("lang=cls_speaker", {}, None, 1008, "not a transcription (ctc) mask"),
        ("lang=fr", {}, "text:hello", 1008, "send binary"),
        ("lang=fr", {}, "bytes:odd", 1008, "even number"),
        ("lang=fr", {}, "bytes:long", 1009, "shorter chunks"),
        ("lang=fr", {"stream_idle_s": 0.2}, "wait", 1008, "idle"),
        ("lang=fr", {"max_longform_seconds": 5.0}, "bytes:many", 1009, "passed 5 s"),
        ("lang=fr", {"stream_max_speed": 0.5}, "bytes:many", 1008, "faster than 0.5x"),
    ],
)
def test_bad_streams_are_closed_with_a_code_and_a_reason(tmp_path, query, settings, send, code, reason):
    app = create_app(_settings(tmp_path, **settings), tiny_engine_factory())
    with TestClient(app) as client, pytest.raises(WebSocketDisconnect) as closed, \
            client.websocket_connect(f"/v1/stream?{query}") as ws:
        if send == "text:hello":
            ws.send_text("hello")
        elif send == "bytes:odd":
            ws.send_bytes(b"\x00\x01\x02")
        elif send == "bytes:long":
            ws.send_bytes(_pcm(5.0))
        elif send == "bytes:many":
            for _ in range(3):
                ws.send_bytes(_pcm(2.0))
        while True:
            ws.receive_json()
    assert closed.value.code == code and reason in closed.value.reason, closed.value.reason


def test_streams_over_the_bound_are_refused_until_one_closes(tmp_path):
    with TestClient(create_app(_settings(tmp_path, max_streams=1), tiny_engine_factory())) as client:
        with client.websocket_connect("/v1/stream?lang=fr") as first:
            url = "/v1/stream?lang=fr"
            with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(url) as second:
                second.receive_json()
            assert refused.value.code == 1013 and "try again" in refused.value.reason
            assert "s3router_streams_open 1.0" in client.get("/metrics").text
            _stream(first, _pcm(1.0))
        with client.websocket_connect("/v1/stream?lang=fr") as again:
            assert _stream(again, _pcm(1.0))[-1] == {"type": "done"}


def test_the_stream_command_prints_each_final_result(tmp_path, capsys):
    """``s3router stream FILE`` against a live server (uvicorn's WebSocket stack, not the test client)."""
    from helpers import serve_in_thread
    from service.cli import main

    (tmp_path / "a.flac").write_bytes(audio_bytes(6.0, 44_100, 2, "FLAC"))
    with serve_in_thread(create_app(_settings(tmp_path), tiny_engine_factory()), log_level="error") as url:
        code = main(["stream", str(tmp_path / "a.flac"), "--url", url.replace("http", "ws"), "--lang", "fr",
                     "--speed", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].startswith("[    0.00     4.00] fr:"), lines


def test_a_stream_of_encoded_chunks_reads_each_as_a_file(tmp_path):
    """``audio=encoded``: each message a short FLAC (44.1 kHz stereo here), decoded as uploads are."""
    with TestClient(create_app(_settings(tmp_path), tiny_engine_factory())) as client, \
            client.websocket_connect("/v1/stream?lang=fr&audio=encoded") as ws:
        for seed in range(3):
            ws.send_bytes(audio_bytes(1.0, 44_100, 2, "FLAC", seed=seed))
        ws.send_text('{"type": "end"}')
        messages = []
        while not messages or messages[-1]["type"] != "done":
            messages.append(ws.receive_json())
    finals = [m for m in messages if m["type"] == "final"]
    assert len(finals) == 1 and finals[0]["end"] == pytest.approx(3.0, abs=0.01)


LIMITED = "lim-key-0123456789abc"


def _limited_settings(tmp_path, **kw):
    """A key that may use the language-ID mask and fr only (as in the issue's live check)."""
    return _settings(tmp_path, api_keys=f"lim:{LIMITED}:masks=language|fr", **kw)


def test_an_auto_stream_decides_among_the_masks_its_key_may_use_as_http_does(tmp_path):
    """The language-ID mask is unsure (fr 0.55, de 0.45) and decoding prefers de; the key may not use de."""
    auth = {"Authorization": f"Bearer {LIMITED}"}
    factory = tiny_engine_factory(more_masks=unsure_language_masks)
    with TestClient(create_app(_limited_settings(tmp_path), factory)) as client:
        http = client.post("/transcribe?lang=auto", content=audio_bytes(3.0), headers=auth)
        with client.websocket_connect("/v1/stream?lang=auto", headers=auth) as ws:
            messages = _stream(ws, _pcm(3.0))
    assert http.status_code == 200 and http.json()["mask"] == "fr"
    finals = [m for m in messages if m["type"] == "final"]
    assert finals and {m["language"] for m in messages if "language" in m} == {"fr"}


def test_an_auto_stream_that_hears_a_language_its_key_may_not_use_is_closed_as_http_refuses_it(tmp_path):
    """The language-ID mask alone decides (lid_candidates=1) and hears de, which the key may not use: HTTP
    answers 403, and the stream closes with 1008 rather than transcribe it."""
    auth = {"Authorization": f"Bearer {LIMITED}"}
    factory = tiny_engine_factory(more_masks=lambda bb: [language_id_mask(bb, (-5.0, 5.0))])
    with TestClient(create_app(_limited_settings(tmp_path, lid_candidates=1), factory)) as client:
        http = client.post("/transcribe?lang=auto", content=audio_bytes(3.0), headers=auth)
        with client.websocket_connect("/v1/stream?lang=auto", headers=auth) as ws:
            step = int(0.1 * 16_000) * 2
            pcm = _pcm(3.0)
            for i in range(0, len(pcm), step):
                ws.send_bytes(pcm[i : i + step])
            ws.send_text('{"type": "end"}')
            received = []
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    received.append(ws.receive_json())
    assert http.status_code == 403 and http.json()["error"]["type"] == "MaskForbiddenError"
    assert closed.value.code == 1008 and "may not use mask 'de'" in closed.value.reason
    assert not [m for m in received if m.get("language") == "de"]


def test_connects_arriving_together_never_pass_the_stream_bound_and_the_refused_read_1013(tmp_path):
    """A real server (uvicorn): twelve clients connect at once to a bound of three. Exactly three streams
    open; the others complete the handshake and read close code 1013 and its reason (not a bare 403)."""
    import asyncio
    import json

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from helpers import serve_in_thread

    async def clients(url: str) -> list[tuple[str, object]]:
        sockets = await asyncio.gather(*(connect(f"{url}/v1/stream?lang=fr") for _ in range(12)))
        outcomes: list[tuple[str, object]] = []
        for ws in sockets:  # every handshake is done before any stream ends
            try:
                await ws.send(json.dumps({"type": "end"}))
                outcomes.append(("answered", json.loads(await ws.recv())["type"]))
            except ConnectionClosed as closed:
                outcomes.append(("closed", (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None))
            await ws.close()
        return outcomes

    app = create_app(_settings(tmp_path, max_streams=3), tiny_engine_factory())
    with serve_in_thread(app, log_level="error") as url:
        outcomes = asyncio.run(clients(url.replace("http", "ws")))
    assert sorted(kind for kind, _ in outcomes) == ["answered"] * 3 + ["closed"] * 9, outcomes
    assert all(what == "done" for kind, what in outcomes if kind == "answered")
    assert {what for kind, what in outcomes if kind == "closed"} == {
        (1013, "3 streams are open; try again later")}
