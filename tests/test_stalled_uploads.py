"""Slow and broken clients against a real uvicorn server run as `s3router serve` runs it: a stalled upload
is answered 408 within the upload timeout instead of holding its connection open forever, and a request
that is not HTTP gets the service's JSON error body; and a credential sent in the URL never reaches the log."""

import json
import re
import socket
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers import audio_bytes, serve_in_thread, tiny_engine_factory
from service.app import create_app
from service.http_server import uvicorn_options
from service.settings import ServiceSettings


def test_a_stalled_upload_gets_408_within_the_upload_timeout(tmp_path):
    settings = ServiceSettings(registry=str(tmp_path / "registry"), upload_timeout_s=1.0, max_wait_ms=1)
    app = create_app(settings, tiny_engine_factory())
    with serve_in_thread(app, **uvicorn_options(settings)) as url:  # as `s3router serve` runs it
        port = int(url.rsplit(":", 1)[1])
        clients = []
        for _ in range(5):  # each declares 100,000 bytes and sends 4
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(b"POST /transcribe?lang=fr HTTP/1.1\r\nHost: test\r\nContent-Type: audio/wav\r\n"
                         b"Content-Length: 100000\r\n\r\nRIFF")
            clients.append(conn)
        started = time.monotonic()
        for conn in clients:
            answer = b""
            while b"}}" not in answer and (chunk := conn.recv(65536)):
                answer += chunk
            answer = answer.decode("latin-1")
            assert answer.startswith("HTTP/1.1 408"), answer[:200]
            assert '"UploadTimeoutError"' in answer and "not received within 1 s (4 bytes came)" in answer
            conn.close()
        assert time.monotonic() - started < 4.0


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
]


@pytest.mark.parametrize("garbage", MALFORMED)
def test_a_malformed_http_request_gets_the_json_error_body(tmp_path, garbage):
    settings = ServiceSettings(registry=str(tmp_path / "registry"), max_wait_ms=1)
    with serve_in_thread(create_app(settings, tiny_engine_factory()), **uvicorn_options(settings)) as url:
        conn = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
        conn.sendall(garbage)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        conn.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower(), answer
    error = json.loads(body)["error"]
    assert error["type"] == "MalformedHTTPRequest" and error["message"]


def test_a_key_sent_in_the_url_is_refused_and_never_written_to_the_log(tmp_path, capfd):
    secret = "url-secret-0123456789"
    settings = ServiceSettings(registry=str(tmp_path / "registry"), max_wait_ms=1, vad=False,
                               api_keys=f"alpha:{secret}")
    with serve_in_thread(create_app(settings, tiny_engine_factory()), **uvicorn_options(settings)) as url:
        refused = httpx.post(f"{url}/transcribe?lang=fr&api_key={secret}", content=audio_bytes(1.0), timeout=30)
        stream = f"{url.replace('http', 'ws')}/v1/stream?token={secret}&lang=fr"
        with pytest.raises(ConnectionClosed), connect(stream) as ws:
            ws.recv(timeout=10)
    assert refused.status_code == 401
    logged = capfd.readouterr()
    assert secret not in logged.out + logged.err
    assert "/transcribe?lang=fr&api_key=***" in logged.out
    assert "/v1/stream?token=***&lang=fr" in logged.out + logged.err


def test_an_event_stream_whose_client_leaves_is_counted_as_499_not_200(tmp_path):
    """Server-sent events of a four-segment recording, one segment per batch: the client reads the first event
    and leaves, and only then do the later passes run. The request is counted as the client's, 499."""
    settings = ServiceSettings(registry=str(tmp_path / "registry"), max_wait_ms=1, vad=False, max_batch_size=1,
                               segment_max_s=4.0, max_audio_seconds=10, max_longform_seconds=60)
    armed, client_left, passes = threading.Event(), threading.Event(), []

    def hold_after_the_first_pass() -> None:  # the request's passes (not the start-up warm-up's)
        if armed.is_set():
            passes.append(None)
            if len(passes) > 1:
                client_left.wait(30)

    app = create_app(settings, tiny_engine_factory(before_forward=hold_after_the_first_pass))
    counted: list[int] = []
    recorded = threading.Event()
    metrics = app.state.s3r.metrics
    observe = metrics.observe_request

    def observe_and_tell(endpoint: str, mask: str, status: int, *rest: object) -> None:
        observe(endpoint, mask, status, *rest)  # type: ignore[arg-type]
        if endpoint == "/v1/audio/transcriptions":
            counted.append(status)
            recorded.set()

    metrics.observe_request = observe_and_tell  # type: ignore[method-assign]
    with serve_in_thread(app, **uvicorn_options(settings)) as url:
        armed.set()
        form = {"model": "s3router", "language": "fr", "stream": "true"}
        with httpx.stream("POST", f"{url}/v1/audio/transcriptions", data=form, timeout=30,
                          files={"file": ("a.wav", audio_bytes(16.0))}) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
        client_left.set()
        assert r.status_code == 200 and "transcript.text.delta" in first
        assert recorded.wait(30), "the request was never counted"
        exported = re.search(r'^s3router_requests_total\{endpoint="/v1/audio/transcriptions",mask="[^"]*",'
                             r'status="499"\} 1\.0$', httpx.get(f"{url}/metrics").text, re.M)
    assert counted == [499] and exported


def _read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    return answer


def test_idle_connections_are_closed_and_the_limit_answers_in_json(tmp_path):
    """Sockets that send nothing (or half a head) no longer hold the connection limit: they are closed after
    the header timeout (a half head gets a 408 first). While they are open, a request past the limit gets a
    503 in the service's error body with Retry-After (it was a bare plain-text 503, and the sockets were never
    closed: with S3R_MAX_CONNECTIONS=8, no request got through while they stayed)."""
    settings = ServiceSettings(registry=str(tmp_path / "registry"), max_wait_ms=1, max_connections=8,
                               header_timeout_s=1.0)
    with serve_in_thread(create_app(settings, tiny_engine_factory()), **uvicorn_options(settings)) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(12)]
        idle[0].sendall(b"POST /transcribe?lang=fr HTTP/1.1\r\nHost: x\r\n")  # half a head
        refused = httpx.get(f"{url}/healthz", timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "OverloadedError"
        answers = [_read_all(conn) for conn in idle]  # each returns when the server closes it
        assert answers[0].startswith(b"HTTP/1.1 408") and b"RequestHeaderTimeout" in answers[0]
        assert answers[1:] == [b""] * 11
        for conn in idle:
            conn.close()
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_connection_that_sent_its_request_is_not_cut_by_the_header_timeout(tmp_path):
    """The header timeout covers the head only: a request whose batch takes longer than it still gets its
    answer, over keep-alive a second time too."""
    settings = ServiceSettings(registry=str(tmp_path / "registry"), max_wait_ms=1, header_timeout_s=0.5)
    app = create_app(settings, tiny_engine_factory(run_delay=1.0))
    with serve_in_thread(app, **uvicorn_options(settings)) as url, httpx.Client(timeout=30) as client:
        for _ in range(2):
            assert client.post(f"{url}/transcribe?lang=fr", content=audio_bytes(1.0)).status_code == 200
