"""Driving the real docker-compose.yml for tests/test_compose_stack.py: a project of its own (so a stack the
user runs is never touched), free host ports, and every container, volume and network it made recorded by
id, so that teardown removes exactly those."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def wait_for(what: str, condition: Callable[[], bool], seconds: float, every: float = 0.5) -> float:
    """Poll ``condition`` until it holds; the seconds it took. Raises ``TimeoutError`` naming ``what``.
    For state of other processes that offer no event to wait on (a Prometheus scrape, a replica's counters,
    a mask reaching another replica); the engine's own changes are awaited with :meth:`ComposeStack.await_event`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            raise TimeoutError(f"{what}: not within {seconds:g} s")
        time.sleep(every)
    return time.monotonic() - start


@dataclass
class Resources:
    """What a compose project has on the engine, by id."""

    containers: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.containers or self.volumes or self.networks)

    def __or__(self, other: Resources) -> Resources:
        return Resources(self.containers | other.containers, self.volumes | other.volumes,
                         self.networks | other.networks)


@dataclass
class ComposeStack:
    compose: str  # the compose v2 binary
    project: str = field(default_factory=lambda: f"s3r-test-{uuid.uuid4().hex[:8]}")
    admin_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    lb_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    seen: Resources = field(default_factory=Resources)

    @property
    def env(self) -> dict[str, str]:
        """The shell a user would run compose from, with the secrets and ports compose interpolates."""
        return {**os.environ, "S3R_ADMIN_TOKEN": self.admin_token, "LB_PORT": str(self.lb_port),
                "PROMETHEUS_PORT": str(self.prometheus_port), "GRAFANA_PORT": str(free_port())}

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [self.compose, "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), *args]
        return subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def up(self, services: list[str], timeout: float = 420) -> None:
        done = self.run("up", "--detach", "--wait", "--no-build", *services, timeout=timeout)
        self.seen = self.seen | self.resources()
        if done.returncode != 0:
            logs = self.run("logs", "--no-color", "--tail", "40").stdout
            raise RuntimeError(f"compose up failed ({done.returncode}):\n{done.stderr[-3000:]}\n{logs[-6000:]}")

    def down(self) -> subprocess.CompletedProcess[str]:
        self.seen = self.seen | self.resources()
        return self.run("down", "--volumes", "--remove-orphans", "--timeout", "20")

    def resources(self) -> Resources:
        label = f"label=com.docker.compose.project={self.project}"
        return Resources(set(docker("ps", "-aq", "--no-trunc", "--filter", label).split()),
                         set(docker("volume", "ls", "-q", "--filter", label).split()),
                         set(docker("network", "ls", "-q", "--no-trunc", "--filter", label).split()))

    @staticmethod
    def still_there(resources: Resources) -> Resources:
        """Those of ``resources`` that the engine still has."""
        def there(kind: str, ids: set[str]) -> set[str]:
            return {i for i in ids if subprocess.run(["docker", kind, "inspect", i], capture_output=True,
                                                     timeout=60).returncode == 0}

        return Resources(there("container", resources.containers), there("volume", resources.volumes),
                         there("network", resources.networks))

    def remove_leftovers(self) -> Resources:
        """Remove, by id, whatever this stack made that is still there; what was left."""
        left = self.still_there(self.seen)
        for c in left.containers:
            docker("rm", "-f", "-v", c, check=False)
        for v in left.volumes:
            docker("volume", "rm", "-f", v, check=False)
        for n in left.networks:
            docker("network", "rm", n, check=False)
        return left

    def container(self, service: str) -> str:
        ids = self.run("ps", "-q", "--all", service).stdout.split()
        assert len(ids) == 1, f"{service}: expected one container, got {ids}"
        self.seen.containers.add(docker("inspect", "-f", "{{.Id}}", ids[0]))
        return ids[0]

    def state(self, service: str) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.container(service)))

    def restarts(self, service: str) -> int:
        return int(docker("inspect", "-f", "{{.RestartCount}}", self.container(service)))

    def url(self, service: str, port: int = 8000) -> str:
        """The service's own address on the project network (reachable from the host on Linux)."""
        ips = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                     self.container(service)).split()
        return f"http://{ips[0]}:{port}"

    def await_event(self, service: str, status: str, since: str, seconds: float) -> None:
        """Block until the engine reports ``status`` (e.g. ``health_status: healthy``) for the service's
        container at or after ``since`` (an engine timestamp: events before the call are not missed)."""
        watch = subprocess.Popen(["docker", "events", "--since", since, "--filter",
                                  f"container={self.container(service)}", "--format", "{{.Status}}"],
                                 stdout=subprocess.PIPE, text=True)
        timer = threading.Timer(seconds, watch.kill)  # ends the stream, and with it the loop below
        timer.start()
        try:
            assert watch.stdout is not None
            if not any(line.strip() == status for line in watch.stdout):
                raise TimeoutError(f"{service}: no {status!r} within {seconds:g} s")
        finally:
            timer.cancel()
            watch.kill()
            watch.wait()

    def engine_time(self) -> str:
        """The engine's clock now, as ``docker events --since`` takes it."""
        return docker("info", "-f", "{{.SystemTime}}")

    def exec(self, service: str, *cmd: str) -> str:
        return docker("exec", self.container(service), *cmd)

    @property
    def lb(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"
