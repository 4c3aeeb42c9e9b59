"""``s3router stream``: send a file, or raw PCM from stdin (a microphone), to ``WS /v1/stream`` and print
the results: partial results on stderr (overwritten in place), final ones on stdout, one line each."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

CHUNK_S = 0.1  # audio per message


def _file_chunks(path: str) -> tuple[int, Iterator[bytes]]:
    """(16000, 100 ms chunks of 16-bit PCM) of an audio file in any format the service reads."""
    from router_core.audio import load_audio_file

    pcm = (load_audio_file(path, max_seconds=10_800.0).clamp(-1, 1) * 32767).short().numpy().astype("<i2").tobytes()
    step = int(16_000 * CHUNK_S) * 2
    return 16_000, (pcm[i : i + step] for i in range(0, len(pcm), step))


def _stdin_chunks(rate: int) -> Iterator[bytes]:
    """100 ms chunks of raw 16-bit little-endian PCM at ``rate`` from stdin, until it ends."""
    step = int(rate * CHUNK_S) * 2
    while chunk := sys.stdin.buffer.read(step):
        yield chunk[: len(chunk) - len(chunk) % 2]


def _send(ws: Any, chunks: Iterator[bytes], rate: int, speed: float) -> None:
    started, sent = time.monotonic(), 0.0
    for chunk in chunks:
        if speed > 0:  # pace as a live source would
            time.sleep(max(0.0, started + sent / speed - time.monotonic()))
        ws.send(chunk)
        sent += len(chunk) / 2 / rate
    ws.send(json.dumps({"type": "end"}))


def run_stream(args: argparse.Namespace) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    rate, chunks = (args.rate, _stdin_chunks(args.rate)) if args.input == "-" else _file_chunks(args.input)
    url = f"{args.url.rstrip('/')}/v1/stream?{urlencode({'lang': args.lang, 'rate': rate})}"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    with connect(url, additional_headers=headers, max_size=2**22) as ws:
        sender = threading.Thread(target=_send, args=(ws, chunks, rate, args.speed), daemon=True)
        sender.start()
        try:
            for raw in ws:
                message = json.loads(raw)
                if message["type"] == "partial":
                    print(f"\r\033[K… {message['text']}", end="", file=sys.stderr, flush=True)
                elif message["type"] == "final":
                    print("\r\033[K", end="", file=sys.stderr, flush=True)
                    print(f"[{message['start']:8.2f} {message['end']:8.2f}] {message['language']}: {message['text']}",
                          flush=True)
                elif message["type"] == "done":
                    return
        except ConnectionClosed as exc:
            raise OSError(f"the stream was closed: {exc.rcvd.reason if exc.rcvd else exc}") from exc
    if ws.close_code not in (None, 1000):
        raise OSError(f"the stream was closed ({ws.close_code}): {ws.close_reason}")


def add_stream_command(sub: Any) -> None:
    stream = sub.add_parser("stream", help="stream a file or microphone PCM (stdin) to a running service")
    stream.add_argument("input", help="an audio file, or - for raw 16-bit little-endian mono PCM on stdin")
    stream.add_argument("--lang", default="auto", help="a transcription mask, or auto (language per segment)")
    stream.add_argument("--url", default="ws://localhost:8000", help="the service's WebSocket base URL")
    stream.add_argument("--rate", type=int, default=16_000, help="sample rate of stdin PCM")
    stream.add_argument("--speed", type=float, default=1.0, help="times real time to send at (0: as fast as read)")
    stream.add_argument("--api-key", help="a bearer key, when the service requires one")
    stream.set_defaults(run=run_stream)
