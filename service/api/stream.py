"""Live audio over a WebSocket: ``WS /v1/stream?lang=fr&rate=16000`` (``lang=auto``: language per segment).

Protocol. The client sends binary messages of 16-bit little-endian mono PCM at ``rate`` Hz (or, with
``audio=encoded``, each message a short encoded file: WAV, FLAC, OGG, MP3, any rate and channels), and ends
with the text message ``{"type": "end"}``. The server answers with JSON text messages
``{"type": "partial" | "final", "text", "start", "end", "language", "words": [{word, start, end}]}``
(seconds from the stream's start), and after the end ``{"type": "done"}`` and a normal close (1000).

Segments. The open segment is the audio since the last final result. Every ``stream_partial_interval_s``
of new audio the VAD reads it: speech followed by ``segment_min_silence_s`` of non-speech is a finished
segment (endpointing), transcribed and sent as ``final``; speech longer than ``segment_max_s`` is cut
where it is quietest; the rest of the open speech is transcribed again and sent as ``partial``. Every
transcription is an item of the batcher that serves HTTP requests, so many streams share mixed-mask
batches. The server reads the socket only between its own steps, so a client that sends faster than it
transcribes is slowed by TCP.

Close codes: 1000 done; 1008 a bad message, a stream idle for ``stream_idle_s``, audio arriving faster
than ``stream_max_speed`` times real time, a missing or unknown API key, or a mask that is unknown, of the
other kind or not the key's to use; 1009 a stream longer than ``max_longform_seconds``, or one message of
more than a segment of audio; 1011 a server error; 1013 not ready, a key over its rate, or ``max_streams``
streams open (try again later). The close reason says which. A stream refused before it starts is still
accepted first, so that the client reads the code and the reason (a refused handshake is a bare HTTP 403).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from router_core.audio import MAX_RATE, MIN_RATE, decode_audio, resampler_to_16k
from router_core.backbone import SAMPLE_RATE
from router_core.errors import (
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    S3RouterError,
)
from router_core.mask_file import MASK_NAME_PATTERN
from router_core.vad import WINDOW_SAMPLES, StreamingVad, speech_segments
from service.api.bodies import word_bodies
from service.pipeline.admission import Admission, admit
from service.pipeline.segments import fixed_windows, segment_settings, shifted
from service.pipeline.state import state_of
from service.pipeline.transcriber import AUTO, Transcriber, transcript_of

api = APIRouter(tags=["speech"])
CLOSE_DONE, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_RETRY = 1000, 1008, 1009, 1011, 1013


class StreamClosed(Exception):
    """Ends a stream with a WebSocket close code and a reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@api.websocket("/v1/stream")
async def stream(
    ws: WebSocket,
    lang: str = Query(AUTO, pattern=MASK_NAME_PATTERN, description="a transcription mask, or auto"),
    rate: int = Query(SAMPLE_RATE, ge=MIN_RATE, le=MAX_RATE, description="sample rate of the PCM sent"),
    audio: Literal["pcm", "encoded"] = Query("pcm", description="pcm: 16-bit LE mono; encoded: each message a file"),
) -> None:
    state = state_of(ws)
    if state.open_streams >= state.settings.max_streams:
        await _refuse(ws, StreamClosed(CLOSE_RETRY, f"{state.settings.max_streams} streams are open; try again later"))
        return
    state.open_streams += 1  # taken before the first await: connects arriving together cannot all pass the bound
    try:
        try:
            admission = admit(state, ws.headers.get("authorization"), queue=False)
            await Transcriber(admission).check_language(lang)  # readiness, the key's rights, the mask and its kind
        except S3RouterError as exc:
            await _refuse(ws, StreamClosed(close_code(exc), str(exc)))
            return
        await ws.accept()
        await StreamSession(admission, ws, lang, rate, audio == "encoded").run()
    except StreamClosed as closed:
        await ws.close(closed.code, closed.reason[:120])
    except WebSocketDisconnect:
        pass
    except S3RouterError as exc:
        await ws.close(close_code(exc), str(exc)[:120])
    finally:
        state.open_streams -= 1


def close_code(exc: S3RouterError) -> int:
    """The close code of a refusal: 1013 (try again later) when waiting helps, else 1008."""
    return CLOSE_RETRY if isinstance(exc, OverloadedError | NotReadyError | RateLimitedError) else CLOSE_POLICY


async def _refuse(ws: WebSocket, closed: StreamClosed) -> None:
    """Complete the handshake, then close with the code and reason: a close before it would reach the client
    as a bare HTTP 403, without either."""
    await ws.accept()
    await ws.close(closed.code, closed.reason[:120])


class StreamSession:
    """One stream: the open segment's 16 kHz audio, where it starts, and what was received."""

    def __init__(self, admission: Admission, ws: WebSocket, lang: str, rate: int, encoded: bool = False) -> None:
        self.admission, self.state = admission, admission.state
        self.ws, self.lang, self.rate, self.encoded = ws, lang, rate, encoded
        self.cut = segment_settings(self.state.settings)
        self.open = torch.zeros(0)  # [S] the open segment, 16 kHz; it starts on a VAD window's boundary
        self.offset = 0  # samples of the stream before the open segment (whole VAD windows)
        detector = self.state.speech_detector
        self.vad = StreamingVad(detector) if detector is not None else None  # each window read once
        self.received = 0.0  # seconds of audio received
        self.since_step = 0  # samples received since the last step
        self.started = time.monotonic()
        # PCM at another rate: one resampler for the whole stream (the same samples as resampling the whole
        # recording at once, at an odd rate too: read as the nearest 25 Hz, as uploads are)
        self.resampler = None if encoded else resampler_to_16k(rate)

    async def run(self) -> None:
        settings = self.state.settings
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=settings.stream_idle_s)
            except TimeoutError:
                raise StreamClosed(CLOSE_POLICY, f"idle: no audio for {settings.stream_idle_s:g} s") from None
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await run_in_threadpool(self._append, message["bytes"])  # decoding and resampling off the loop
                if self.since_step >= settings.stream_partial_interval_s * SAMPLE_RATE:
                    await self._step(final=False)
            elif _is_end(message.get("text")):
                if self.resampler is not None:  # the filter's last samples
                    await run_in_threadpool(self._add, torch.from_numpy(self.resampler.finish()), 0.0)
                await self._step(final=True)
                await self.ws.send_json({"type": "done"})
                await self.ws.close(CLOSE_DONE)
                return
            else:
                raise StreamClosed(CLOSE_POLICY, 'send binary 16-bit PCM, then the text {"type": "end"}')

    def _append(self, data: bytes) -> None:
        settings = self.state.settings
        if self.encoded:  # a short encoded file (WAV, FLAC, OGG, MP3): any rate, any channels
            try:
                wave = decode_audio(data, settings.segment_seconds)  # [n] 16 kHz
            except S3RouterError as exc:
                code = CLOSE_TOO_BIG if isinstance(exc, PayloadTooLargeError) else CLOSE_POLICY
                raise StreamClosed(code, f"an encoded chunk: {exc}; send shorter chunks") from exc
            self._add(wave, wave.shape[0] / SAMPLE_RATE)
            return
        if len(data) % 2:
            raise StreamClosed(CLOSE_POLICY, "16-bit PCM needs an even number of bytes per message")
        seconds = len(data) / 2 / self.rate
        if seconds > settings.segment_seconds:
            raise StreamClosed(CLOSE_TOO_BIG, f"a message holds {seconds:.1f} s of audio; send shorter chunks")
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0  # [n]
        if self.resampler is not None:
            samples = self.resampler.push(samples)  # [~n * 16000 / rate]; the filter's delay waits for the end
        self._add(torch.from_numpy(samples), seconds)

    def _add(self, pcm: torch.Tensor, seconds: float) -> None:
        """Append ``pcm [n]`` (16 kHz) after the stream's limits on length and speed."""
        settings = self.state.settings
        self.received += seconds
        if self.received > settings.max_longform_seconds:
            raise StreamClosed(CLOSE_TOO_BIG, f"the stream passed {settings.max_longform_seconds:g} s of audio")
        elapsed = time.monotonic() - self.started
        if self.received > settings.stream_max_speed * elapsed + settings.segment_seconds:
            raise StreamClosed(CLOSE_POLICY, f"audio arrives faster than {settings.stream_max_speed:g}x real time")
        self.open = torch.cat([self.open, pcm])
        if self.vad is not None:
            self.vad.push(pcm)
        self.since_step += pcm.shape[0]
        self.state.metrics.stream_audio.inc(seconds)

    async def _step(self, final: bool) -> None:
        """Send the finished segments of the open audio as finals (all of it when ``final``), then the
        open speech as a partial."""
        self.since_step = 0
        segments = await self._segments()
        done = 0
        for i, (start, end) in enumerate(segments):
            last = i == len(segments) - 1
            finished = final or not last or self.open.shape[0] - end >= self.cut.min_silence_s * SAMPLE_RATE
            if not finished:
                await self._send("partial", start, self.open.shape[0])
                break
            await self._send("final", start, end)
            done = end
        if final or not segments:  # nothing open: keep only the tail that may start the next speech
            keep = 0 if final else int(self.cut.min_silence_s * SAMPLE_RATE)
            done = max(done, self.open.shape[0] - keep)
        done -= done % WINDOW_SAMPLES  # the open audio keeps starting on a window the VAD has read
        self.offset += done
        self.open = self.open[done:]
        if self.vad is not None:
            self.vad.forget(done // WINDOW_SAMPLES)

    async def _segments(self) -> list[tuple[int, int]]:
        """Speech segments of the open audio, in samples from its start."""
        total = self.open.shape[0]
        if total < self.state.ready_engine()[0].backbone.min_samples:
            return []
        if self.vad is None:
            return fixed_windows(total, int(self.cut.max_segment_s * SAMPLE_RATE))
        probs = await run_in_threadpool(self.vad.probabilities)  # [W]: only a partial last window is read here
        found = speech_segments(probs, total, self.vad.detector.threshold, self.cut)
        return [(s.start, s.end) for s in found]

    async def _send(self, kind: str, start: int, end: int) -> None:
        piece = self.open[start:end]  # [S]
        if piece.shape[0] < self.state.ready_engine()[0].backbone.min_samples:
            return
        # each step has one request's time; partials: the language-ID mask alone, finals decide
        transcriber = Transcriber(self.admission.renewed())
        out, _ = await transcriber.transcribe(piece, self.lang, decide=kind == "final", wait_for_room=True)
        language = out.mask_name
        seconds = (self.offset + start) / SAMPLE_RATE
        transcript = shifted(transcript_of(out), seconds)
        body: dict[str, Any] = {
            "type": kind, "text": transcript.text, "language": language,
            "start": round(seconds, 3), "end": round((self.offset + end) / SAMPLE_RATE, 3),
            "words": word_bodies(transcript.words),
        }
        await self.ws.send_json(body)


def _is_end(text: str | None) -> bool:
    try:
        return text is not None and json.loads(text).get("type") == "end"
    except (ValueError, AttributeError):
        return False
