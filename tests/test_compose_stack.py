"""The image and docker-compose.yml, built and run for real: Redis seeded by masks-init, two replicas behind
nginx, Prometheus (Grafana has no image that runs here; its provisioning is checked in test_deploy.py).

Run by ``make docker-test`` (scripts/docker_test.sh installs Docker, builds the base images or their
stand-ins and the project image, then runs this module); skipped elsewhere (conftest.py). The stack runs as
a compose project of its own on free host ports, and every container, volume and network it made is
removed by id at the end. Measurements go to bench/results/docker_stack.json, which the script prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from compose_stack import ROOT, ComposeStack, docker, wait_for
from prometheus_client.parser import text_string_to_metric_families

from helpers import dashboard_panels_without_data
from router_core.mask_file import decode_mask, encode_mask

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVICES = ["redis", "masks-init", "api-1", "api-2", "lb", "prometheus"]  # all but Grafana
REPLICAS = ("api-1", "api-2")
BUNDLED = sorted(p.stem for p in (ROOT / "masks" / "registry").glob("*.s3mask"))
SENTENCE, EXPECTED = "Der Hund spielt jeden Morgen im Garten.", "der hund spielt jeden morgen im garten"
REPORT_FILE = ROOT / "bench" / "results" / "docker_stack.json"
report: dict[str, object] = {}


@pytest.fixture(scope="module")
def german() -> bytes:
    """The README's first request: espeak-ng's German voice."""
    return subprocess.run(["espeak-ng", "-v", "de", "--stdout", SENTENCE], capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def stack():
    stack = ComposeStack(os.environ["S3R_COMPOSE"])
    image = os.environ.get("S3R_IMAGE", "s3router:latest")
    report["image"] = image
    report["image_mb"] = round(int(docker("image", "inspect", "-f", "{{.Size}}", image)) / 1e6)
    try:
        start = time.monotonic()
        stack.up(SERVICES)
        report["compose_up_wait_s"] = round(time.monotonic() - start, 1)
        yield stack
    finally:
        stack.down()
        report["left_after_teardown"] = dataclasses.asdict(stack.remove_leftovers())
        REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
        REPORT_FILE.write_text(json.dumps(report, indent=1, default=sorted) + "\n")


def transcribe(base: str, audio: bytes, lang: str = "de", timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{base}/transcribe", params={"lang": lang}, content=audio, timeout=timeout)


def served(stack: ComposeStack, replica: str, endpoint: str = "/transcribe", status: str = "200") -> float:
    """How many requests the replica itself counted (its own /metrics, not through nginx)."""
    text = httpx.get(f"{stack.url(replica)}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "s3router_requests_total" and sample.labels.get("endpoint") == endpoint
               and sample.labels.get("status") == status)


def test_masks_init_seeds_redis_and_both_replicas_serve_the_bundled_model(stack):
    init = stack.state("masks-init")
    assert init["Status"] == "exited" and init["ExitCode"] == 0
    assert sorted(stack.exec("redis", "redis-cli", "SMEMBERS", "s3router:names").split()) == BUNDLED
    for replica in REPLICAS:
        ready = httpx.get(f"{stack.url(replica)}/readyz", timeout=10).json()
        assert ready["ready"] and not ready["demo"] and ready["registry"] == "ok", ready
        assert ready["masks_available"] == len(BUNDLED) and "bundled" in ready["model"], ready
    # a second seeding (a restart of the stack) leaves the store alone
    again = stack.run("run", "--rm", "--no-deps", "masks-init")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["seeded"] == [] and json.loads(again.stdout)["already_held"] == len(BUNDLED)


def test_transcriptions_through_nginx_reach_both_replicas(stack, german):
    before = {r: served(stack, r) for r in REPLICAS}
    for _ in range(6):
        r = transcribe(stack.lb, german)
        assert r.status_code == 200 and r.json()["text"] == EXPECTED, r.text
    gained = {r: served(stack, r) - before[r] for r in REPLICAS}
    assert sum(gained.values()) == 6 and all(n > 0 for n in gained.values()), gained


def test_websocket_streams_and_server_sent_events_pass_through_nginx(stack, german, tmp_path):
    clip = tmp_path / "de.wav"
    clip.write_bytes(german)
    ws_url = stack.lb.replace("http://", "ws://")
    streamed = subprocess.run([sys.executable, "-m", "service.cli", "stream", str(clip), "--lang", "de", "--speed", "0",
                               "--url", ws_url], capture_output=True, text=True, timeout=120)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip().endswith(f"de: {EXPECTED}"), streamed.stdout
    with httpx.stream("POST", f"{stack.lb}/v1/audio/transcriptions", files={"file": ("de.wav", german)},
                      data={"model": "s3router", "language": "de", "stream": "true"}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events and events[-1]["text"] == EXPECTED, events


def test_a_mask_uploaded_to_one_replica_serves_on_the_other(stack, german):
    name = f"de-upload-{uuid.uuid4().hex[:6]}"
    mask = dataclasses.replace(decode_mask((ROOT / "masks" / "registry" / "de.s3mask").read_bytes()), name=name)
    admin = {"Authorization": f"Bearer {stack.admin_token}"}
    put = httpx.put(f"{stack.url('api-1')}/masks/{name}", content=encode_mask(mask), headers=admin, timeout=60)
    assert put.status_code == 201, put.text
    other = stack.url("api-2")
    took = wait_for(f"{name} on api-2", lambda: transcribe(other, german, name).status_code == 200, 20)
    report["mask_put_to_other_replica_s"] = round(took, 2)
    assert transcribe(other, german, name).json()["text"] == EXPECTED
    assert httpx.delete(f"{other}/masks/{name}", headers=admin, timeout=30).status_code == 204
    wait_for(f"{name} gone from api-1", lambda: transcribe(stack.url("api-1"), german, name).status_code == 404, 20)


def test_prometheus_scrapes_both_replicas_and_every_dashboard_panel_has_data(stack, german):
    for lang in ("de", "auto", "no-such-mask"):
        transcribe(stack.lb, german, lang)
    httpx.post(f"{stack.lb}/classify", params={"task": "speaker"}, content=german, timeout=60)

    def targets_up() -> bool:
        result = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": 'up{job="s3router"}'},
                           timeout=10).json()["data"]["result"]
        return sorted(s["metric"]["instance"] for s in result if s["value"][1] == "1") == ["api-1:8000", "api-2:8000"]

    wait_for("both replicas scraped", targets_up, 60, every=1)
    # rates need two scrapes after the traffic (scrape_interval 15 s)
    wait_for("data in every panel", lambda: not dashboard_panels_without_data(stack.prometheus), 90, every=3)
    rules = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert sum(len(g["rules"]) for g in rules) >= 5


def test_a_killed_replica_loses_only_requests_in_flight_and_comes_back(stack, german):
    """SIGKILL api-1's server process (a crash, which ``restart: unless-stopped`` restarts) under load."""
    calls: list[tuple[float, float, int | str, str]] = []  # start, end, status or error, text
    stop, flowing = threading.Event(), threading.Event()

    def client() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                r = transcribe(stack.lb, german, timeout=90)
                outcome, text = r.status_code, r.json().get("text", "") if r.status_code == 200 else r.text
            except httpx.HTTPError as exc:
                outcome, text = type(exc).__name__, ""
            calls.append((start, time.monotonic(), outcome, text))
            if len(calls) >= 6:
                flowing.set()

    workers = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        assert flowing.wait(60), "no traffic"
        restarts, pid = stack.restarts("api-1"), stack.state("api-1")["Pid"]
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        since = stack.engine_time()  # after the kill: a health report of the old process cannot count
        stack.await_event("api-1", "health_status: healthy", since, 240)
        report["replica_back_healthy_after_kill_s"] = round(time.monotonic() - killed_at, 1)
        assert stack.restarts("api-1") == restarts + 1
        # nginx sends to the restarted process again (its counters start from zero)
        wait_for("api-1 serving through nginx again", lambda: served(stack, "api-1") > 0, 60, every=0.5)
    finally:
        stop.set()
        for w in workers:
            w.join(120)
    after_kill = [c for c in calls if c[0] >= killed_at]
    lost = [c for c in after_kill if c[2] != 200 or c[3] != EXPECTED]
    in_flight = [c for c in calls if c[0] < killed_at < c[1]]
    failed_in_flight = [c for c in in_flight if c[2] != 200]
    report["kill_test"] = {"requests": len(calls), "after_kill": len(after_kill), "in_flight_at_kill": len(in_flight),
                           "failed_in_flight": len(failed_in_flight)}
    assert after_kill and lost == [], f"requests sent after the kill that failed: {lost[:5]}"
    assert len(failed_in_flight) <= len(workers)


def test_compose_down_leaves_nothing(stack):
    seen = stack.seen | stack.resources()
    assert seen.containers and seen.volumes and seen.networks
    done = stack.down()
    assert done.returncode == 0, done.stderr
    assert not stack.resources()
    assert not stack.still_there(seen), "compose down left these behind"
