"""``s3router serve`` in a child process for benchmarks and end-to-end tests, and a WebSocket streaming client."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import httpx
import numpy as np


@contextlib.contextmanager
def serving(*flags: str, ready_s: float = 300.0, log: IO[bytes] | None = None,
            checkout: str | None = None) -> Iterator[str]:
    """Run ``s3router serve FLAGS`` on a free loopback port; yield its base URL once ``/readyz`` says so.
    ``log``: where the server's stderr goes, at log level info (default: this process's stderr, warnings only).
    ``checkout``: serve that checkout's code (another commit, e.g. a ``git worktree``) with this venv."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    level = "warning" if log is None else "info"
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-level", level, *flags]
    env = None if checkout is None else {**os.environ, "PYTHONPATH": checkout}
    server = subprocess.Popen(command, stderr=log, cwd=checkout, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"s3router serve exited with {server.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"s3router serve was not ready after {ready_s:g} s")
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(60)


def stream_audio(url: str, audio: np.ndarray, speed: float, lang: str = "auto") -> list[tuple[float, dict[str, Any]]]:
    """Stream 16 kHz ``audio`` to ``WS /v1/stream`` in 100 ms chunks at ``speed`` x real time; (seconds
    since the start, message) for every message up to ``done``."""
    from websockets.sync.client import connect

    pcm = (audio.clip(-1, 1) * 32767).astype("<i2").tobytes()
    step = 16_000 // 10 * 2
    with connect(f"{url.replace('http', 'ws', 1)}/v1/stream?lang={lang}") as ws:
        started = time.monotonic()

        def send() -> None:
            for n, i in enumerate(range(0, len(pcm), step)):
                time.sleep(max(0.0, started + n * 0.1 / speed - time.monotonic()))
                ws.send(pcm[i : i + step])
            ws.send(json.dumps({"type": "end"}))

        threading.Thread(target=send, daemon=True).start()
        messages = []
        for raw in ws:
            messages.append((time.monotonic() - started, json.loads(raw)))
            if messages[-1][1]["type"] == "done":
                break
    return messages
