"""Deployment artefacts, checked with real tools: hadolint, the compose specification, Kubernetes schemas,
and a real Prometheus scraping a real `s3router serve` for every Grafana panel's query."""

import json
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

from helpers import audio_bytes, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "s3router.json"


def _bin(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(found).exists(), f"{name} is not installed (make install / .ci/run install it)"
    return found


def test_dockerfile_passes_hadolint():
    done = subprocess.run([_bin("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
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
    assert len(apis) >= 2 and {"lb", "redis", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        # each service's own (the API replicas' merged from the x-api anchor by the YAML loader)
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep in (service.get("depends_on") or {}).values():
            assert dep["condition"] == "service_healthy"
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
        panels = json.loads(DASHBOARD.read_text())["panels"]
        missing = []
        for panel in panels:
            if "gpu" in panel["title"].lower() and not torch.cuda.is_available():
                continue  # GPU memory exists only on GPU replicas
            for target in panel["targets"]:
                r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": target["expr"]}).json()
                if r["status"] != "success" or not r["data"]["result"]:
                    missing.append(panel["title"])
        assert missing == [], f"panels without data: {missing}"
    finally:
        for proc in (prom, server):
            proc.terminate()
            proc.wait(20)
