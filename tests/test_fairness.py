"""No request hurts another: a long upload's speech detection does not hold up a short request, and a
request that the queue ahead of it would make late is refused at once (503 + Retry-After), not timed out."""

import threading

import httpx

from helpers import ADMIN_TOKEN, audio_bytes, serve_in_thread, tiny_engine_factory
from service.app import create_app
from service.http_server import uvicorn_options
from service.settings import ServiceSettings

LONG_READ = 500  # VAD windows (16 s): only the long upload's detection reads this many at once


def test_a_long_uploads_speech_detection_does_not_hold_up_a_short_request(tmp_path):
    """The long upload's VAD is held inside the detector; a 1 s clip sent meanwhile is answered. (The
    detector ran under one global lock: a 3-hour silent upload kept every other request waiting.)"""
    settings = ServiceSettings(registry=str(tmp_path / "registry"), admin_token=ADMIN_TOKEN, max_wait_ms=5,
                               max_longform_seconds=120, vad=True)
    app = create_app(settings, tiny_engine_factory())
    with serve_in_thread(app, **uvicorn_options(settings)) as url:
        detector = app.state.s3r.speech_detector
        entered, release = threading.Event(), threading.Event()
        read = detector.read

        def held_when_long(state, windows):
            if windows.shape[0] >= LONG_READ * 512:
                entered.set()
                assert release.wait(60)
            return read(state, windows)

        detector.read = held_when_long
        answers = {}
        long_upload = threading.Thread(target=lambda: answers.update(
            long=httpx.post(f"{url}/transcribe?lang=fr", content=audio_bytes(60.0), timeout=120)))
        long_upload.start()
        try:
            assert entered.wait(60)  # the long upload is inside its speech detection
            short = httpx.post(f"{url}/transcribe?lang=fr", content=audio_bytes(1.0), timeout=60)
            assert short.status_code == 200 and long_upload.is_alive()
        finally:
            release.set()
            long_upload.join(120)
        assert answers["long"].status_code == 200


def test_a_request_the_queue_would_make_late_is_refused_at_once_with_the_wait(tmp_path):
    """A batch is held in the model and three 1 s clips wait behind it; at the measured rate (about 1 s of
    batch time per audio second here) a 3 s clip sent now would wait about 4 s and be done after about 7 s,
    past its 5 s deadline: it gets a 503 with Retry-After at once, not a 504 when the deadline passes."""
    hold, entered = threading.Event(), threading.Event()
    hold.set()

    def before_forward():
        entered.set()
        assert hold.wait(60)

    settings = ServiceSettings(registry=str(tmp_path / "registry"), max_wait_ms=1, max_batch_size=1,
                               request_timeout_s=5.0, vad=False)
    app = create_app(settings, tiny_engine_factory(run_delay=1.0, before_forward=before_forward))
    with serve_in_thread(app, **uvicorn_options(settings)) as url:
        assert httpx.post(f"{url}/transcribe?lang=fr", content=audio_bytes(1.0), timeout=30).status_code == 200
        hold.clear()
        entered.clear()
        batcher = app.state.s3r.batcher
        four_queued, submitted, submit = threading.Event(), [], batcher.submit

        def submit_and_count(*args, **kwargs):
            item = submit(*args, **kwargs)
            submitted.append(item)
            if len(submitted) == 4:
                four_queued.set()
            return item

        batcher.submit = submit_and_count
        answers: list[int] = []
        queued = [threading.Thread(target=lambda: answers.append(httpx.post(
            f"{url}/transcribe?lang=fr", content=audio_bytes(1.0), timeout=30).status_code)) for _ in range(4)]
        try:
            for thread in queued:
                thread.start()
            assert entered.wait(30)  # one batch is in the model, and stays there: the others queue behind it
            assert four_queued.wait(30), f"{len(submitted)} submitted, answers {answers}"
            assert batcher.queue_length == 3
            refused = httpx.post(f"{url}/transcribe?lang=fr", content=audio_bytes(3.0), timeout=30)
        finally:
            hold.set()
            for thread in queued:
                thread.join(60)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 3 and "would wait" in refused.json()["error"]["message"]
        assert answers == [200] * 4
