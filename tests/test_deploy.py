"""Deployment artefacts, checked with real tools: hadolint, the compose specification, Kubernetes schemas,
and a real Prometheus scraping a real `s3router serve` for every Grafana panel's query."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import torch
import yaml

from helpers import audio_bytes, dashboard_panels_without_data, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]


def _bin(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(found).exists(), f"{name} is not installed (make install / .ci/run install it)"
    return found


def test_dockerfiles_pass_hadolint():
    """The image's, and the stand-in base images' that make docker-test builds where no registry answers."""
    files = [ROOT / "Dockerfile", *sorted((ROOT / "deploy" / "test").glob("*.Dockerfile"))]
    assert len(files) == 6
    done = subprocess.run([_bin("hadolint"), "--failure-threshold", "info", *map(str, files)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and "USER 999" in text and text.count("FROM ") >= 2


def test_compose_file_follows_the_specification_and_wires_health():
    done = subprocess.run([_bin("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                           str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    apis = [n for n in services if n.startswith("api")]
    assert len(apis) >= 2 and {"lb", "redis", "prometheus", "grafana", "masks-init"} <= set(services)
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"masks-init"}
    for name, service in services.items():
        # each long-running service's own (the API replicas' merged from the x-api anchor by the YAML loader)
        assert name in one_shot or service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep_name, dep in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dep_name in one_shot else "service_healthy"
            assert dep["condition"] == wanted, (name, dep_name)
    # the replicas start only on a seeded store, from the image that carries the bundle it is seeded from
    assert all(services[a]["depends_on"] == {"masks-init": {"condition": "service_completed_successfully"}}
               for a in apis)
    assert services["masks-init"]["entrypoint"] == ["s3router", "masks", "seed"]
    assert {services[n]["image"] for n in [*apis, "masks-init"]} == {"s3router:latest"}
    assert "--appendonly" in services["redis"]["command"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(t.split(":")[0] for t in targets) == sorted(apis)
    env_keys = {line.split("=")[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert {"S3R_REGISTRY", "S3R_ADMIN_TOKEN", "S3R_MAX_BATCH_SIZE"} <= env_keys


def test_kubernetes_manifests_validate_against_their_schemas():
    kinds = set()
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, "1.30", strict=True)
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "StatefulSet"} <= kinds


@pytest.mark.slow
def test_real_prometheus_scrapes_serve_and_every_dashboard_query_has_data(tmp_path):
    prometheus = _bin("prometheus")
    api_port, prom_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(api_port),
                               "--registry", str(tmp_path / "reg"), "--log-level", "warning",
                               "--no-vad"])  # a synthetic tone is sent
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "s3router", "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}],
    }))
    prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = f"http://127.0.0.1:{api_port}"
        wait_until_ready(f"{api}/readyz", 120)
        wait_until_ready(f"http://127.0.0.1:{prom_port}/-/ready", 60)
        wav = audio_bytes(1.0)
        deadline = time.monotonic() + 8  # several scrapes with traffic in between
        while time.monotonic() < deadline:
            httpx.post(f"{api}/transcribe?lang=en", content=wav, timeout=30)
            httpx.post(f"{api}/classify?task=speaker", content=wav, timeout=30)
            httpx.post(f"{api}/transcribe?lang=nope", content=wav, timeout=30)
            time.sleep(0.3)
        missing = dashboard_panels_without_data(f"http://127.0.0.1:{prom_port}", gpu=torch.cuda.is_available())
        assert missing == [], f"panels without data: {missing}"
    finally:
        for proc in (prom, server):
            proc.terminate()
            proc.wait(20)


def test_docker_test_says_why_a_machine_cannot_run_it():
    """.ci/run runs make docker-test only where `docker_test.sh --why-not` finds room; otherwise it prints why."""
    script = str(ROOT / "scripts" / "docker_test.sh")
    full = subprocess.run(["bash", script, "--why-not"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "S3R_DOCKER_TEST_DISK_GB": "1000000"})
    assert full.returncode == 1 and full.stdout.startswith("only ") and "need about 1000000 GB" in full.stdout
    refused = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "S3R_DOCKER_TEST_DISK_GB": "1000000"})
    assert refused.returncode == 1 and "make docker-test cannot run: only " in refused.stderr
    if os.geteuid() == 0:  # root may install and start Docker: room is the only condition
        room = subprocess.run(["bash", script, "--why-not"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "S3R_DOCKER_TEST_DISK_GB": "0"})
        assert room.returncode == 0 and room.stdout == ""
