"""Dynamic mixed-mask batching: pure decision functions over a queue, plus the asyncio driver.

The pure part (testable without a server or a model):

* :func:`admit` — may one more request enter a queue of this length?
* :func:`dispatch_delay` — how long to wait before the next batch (0 = now, ``None`` = nothing queued);
  a batch goes when it is full or its oldest request has waited ``max_wait`` seconds.
* :func:`~service.pipeline.scheduling.take_batch` — drop cancelled and expired requests, take up to
  ``max_batch`` by fair rank (short requests first, aging, similar lengths: :mod:`scheduling`).

:class:`Batcher` feeds one model executor thread: requests from many coroutines become batches that
run ``Router.forward`` with mixed masks; each caller gets its own result or exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from router_core.backbone import SAMPLE_RATE
from router_core.errors import DeadlineExceededError, MaskKindError, OverloadedError, S3RouterError
from router_core.heads import MaskKind
from router_core.router import RoutedOutput
from service.pipeline.scheduling import ServiceRate, audio_ranked_before, take_batch

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: a queued item is itself, and its fields hold tensors
class Pending:
    """One queued request."""

    wave: torch.Tensor  # [T] 16 kHz
    mask: str
    kind: MaskKind
    enqueued_at: float
    deadline: float
    future: asyncio.Future[Any] | None = None
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: bool = False
    started_at: float | None = None  # batch start (queue wait = started_at - enqueued_at)
    finished_at: float | None = None
    request_audio_s: float = 0.0  # its request's audio (the fair rank; at least its own)

    @property
    def audio_s(self) -> float:
        return self.wave.shape[0] / SAMPLE_RATE

    def dead(self, now: float) -> bool:
        return self.cancelled or now >= self.deadline or (self.future is not None and self.future.done())


def admit(queue_length: int, max_queue: int) -> bool:
    """A request is admitted only while fewer than ``max_queue`` are waiting."""
    return queue_length < max_queue


def dispatch_delay(queue: Sequence[Pending], max_batch: int, max_wait: float, now: float) -> float | None:
    """Seconds to wait before dispatching: 0 when full or the oldest has waited long enough."""
    if not queue:
        return None
    if len(queue) >= max_batch:
        return 0.0
    return max(0.0, queue[0].enqueued_at + max_wait - now)


def kind_mismatch(item: Pending, out: RoutedOutput) -> MaskKindError | None:
    """The error for an output of the other kind than the request was admitted for: its mask was
    replaced by one of the other kind while it waited (``None`` when the kinds agree)."""
    if out.kind == item.kind:
        return None
    return MaskKindError(
        f"mask {item.mask!r} became a {out.kind} mask while this {item.kind} request waited; send it again"
    )


@dataclass
class BatchReport:
    """What one executed batch looked like (for metrics)."""

    size: int
    masks: int
    queue_waits: list[float]
    inference_seconds: float
    audio_seconds: float


RunBatch = Callable[[list[torch.Tensor], list[str]], list[RoutedOutput]]
Finish = Callable[[RoutedOutput, float], Awaitable[RoutedOutput]]  # (output, its deadline)


class Batcher:
    """Collects requests into batches and runs them on one dedicated executor thread.

    With ``finish``, an output that still has work pending (a beam search: ``out.beam``) is finished by
    it while the next batch already runs on the model thread (a pipeline); at most ``max_finishing``
    outputs wait for it, after which the next batch waits for room."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        finish: Finish | None = None,
        max_finishing: int | None = None,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        max_queue_wait_s: float = float("inf"),
        max_batch_audio_s: float | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_batch = run_batch
        self.finish = finish
        self.max_finishing = max_finishing or 4 * max_batch
        self._finishing: set[asyncio.Task[None]] = set()
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_queue_wait_s = max_queue_wait_s
        self.max_batch_audio_s = max_batch_audio_s
        self.on_batch = on_batch
        self.clock = clock
        self.queue: deque[Pending] = deque()
        self.rate = ServiceRate()  # batch seconds per audio second, measured
        self._running: tuple[float, float] | None = None  # (start, audio seconds) of the batch in the model
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3r-model")
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_length(self) -> int:
        return len(self.queue)

    @property
    def finishing(self) -> int:
        """Outputs of earlier batches still in the finish stage (beam searches in the decode pool)."""
        return len(self._finishing)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="s3r-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._finishing):
            task.cancel()
        await asyncio.gather(*self._finishing, return_exceptions=True)
        for item in self.queue:
            if item.future is not None and not item.future.done():
                item.future.set_exception(DeadlineExceededError("the service is shutting down"))
        self.queue.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def check_room(self) -> None:
        """Raise :class:`OverloadedError` when the queue is full: called before an upload is decoded, so
        that refused work costs no decoding, and again when it is enqueued."""
        if not admit(len(self.queue), self.max_queue):
            raise OverloadedError(f"the request queue is full ({self.max_queue} waiting); retry shortly", 1.0)

    def expected_wait(self, request_audio_s: float) -> float:
        """Seconds until a new request of ``request_audio_s`` would start: what is left of the batch in the
        model, then the audio ranked before it, at the measured rate (0 before any batch was measured)."""
        rate = self.rate.seconds_per_audio_s
        if rate is None:
            return 0.0
        now = self.clock()
        running = 0.0 if self._running is None else max(0.0, rate * self._running[1] - (now - self._running[0]))
        return running + rate * audio_ranked_before(self.queue, request_audio_s, now)

    def check_wait(self, audio_s: float, remaining_s: float) -> None:
        """:class:`OverloadedError` (503, ``Retry-After`` the expected wait) for a request of ``audio_s``
        seconds that would wait more than ``max_queue_wait_s`` or not be done within ``remaining_s``: refused
        now rather than timing out later (and the backlog, the time to recover after a burst, stays short).
        Call it just before the request's first :meth:`submit`, with no ``await`` between: requests decoded
        at once must not all pass on the same queue."""
        rate = self.rate.seconds_per_audio_s
        if rate is None:
            return
        wait = self.expected_wait(audio_s)
        if wait + rate * audio_s > remaining_s or wait > self.max_queue_wait_s:
            raise OverloadedError(f"the service is busy: this request would wait about {wait:.0f} s (at most "
                                  f"{self.max_queue_wait_s:g} s are queued) or not be done within its "
                                  f"{remaining_s:.0f} s; retry later", max(1.0, wait))

    def submit(self, wave: torch.Tensor, mask: str, kind: MaskKind, timeout_s: float,
               request_audio_s: float = 0.0) -> Pending:
        """Enqueue at once or raise :class:`OverloadedError` (never waits for room). ``request_audio_s``: the
        audio of the whole request the item belongs to (its fair rank)."""
        self.check_room()
        now = self.clock()
        item = Pending(wave, mask, kind, now, now + timeout_s, asyncio.get_running_loop().create_future())
        item.request_audio_s = max(request_audio_s, item.audio_s)
        self.queue.append(item)
        self._wake.set()
        return item

    def cancel(self, item: Pending) -> None:
        """Drop ``item`` (its client went away): it leaves the queue at once, freeing its slot."""
        item.cancelled = True
        with contextlib.suppress(ValueError):
            self.queue.remove(item)  # not there once its batch was taken

    async def result(self, item: Pending) -> RoutedOutput:
        """Wait for ``item``'s result; its deadline turns into :class:`DeadlineExceededError`."""
        assert item.future is not None
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), max(0.0, item.deadline - self.clock()))
        except TimeoutError:
            item.cancelled = True
            raise DeadlineExceededError("the request was not served before its deadline") from None
        except asyncio.CancelledError:
            self.cancel(item)  # client went away: drop the queued work
            raise

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = dispatch_delay(self.queue, self.max_batch, self.max_wait_s, self.clock())
            if delay is None or delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                continue
            while len(self._finishing) >= self.max_finishing:  # the decode stage is the bottleneck: wait for it
                await asyncio.wait(self._finishing, return_when=asyncio.FIRST_COMPLETED)
            batch, dead = take_batch(self.queue, self.max_batch, self.clock(), self.max_batch_audio_s)
            for item in dead:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(DeadlineExceededError("the request expired in the queue"))
            if batch:
                await self._execute(loop, batch)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[Pending]) -> None:
        started = self.clock()
        audio_seconds = sum(item.audio_s for item in batch)
        self._running = (started, audio_seconds)
        waves = [item.wave for item in batch]
        masks = [item.mask for item in batch]
        try:
            outputs: list[RoutedOutput | BaseException] = list(
                await loop.run_in_executor(self._executor, self.run_batch, waves, masks)
            )
        except S3RouterError:
            outputs = await self._isolate(loop, batch)  # one bad item must not fail its neighbours
        except Exception as exc:  # noqa: BLE001 - a model failure is reported to every caller of the batch
            log.exception("batch of %d failed", len(batch))
            outputs = [exc] * len(batch)
        finished = self.clock()
        elapsed = finished - started
        self.rate.observe(elapsed, audio_seconds)
        self._running = None
        for item, out in zip(batch, outputs, strict=True):
            item.started_at, item.finished_at = started, finished
            gone = item.cancelled or item.future is None or item.future.done()  # no beam search for nobody
            if isinstance(out, BaseException) or out.beam is None or self.finish is None or gone:
                _settle(item, out)
            else:  # the model thread goes on with the next batch meanwhile
                task = loop.create_task(self._finish(item, out), name=f"s3r-finish-{item.id}")
                self._finishing.add(task)
                task.add_done_callback(self._finishing.discard)
        if self.on_batch is not None:
            report = BatchReport(
                size=len(batch),
                masks=len(set(masks)),
                queue_waits=[started - item.enqueued_at for item in batch],
                inference_seconds=elapsed,
                audio_seconds=audio_seconds,
            )
            try:
                self.on_batch(report)
            except Exception:  # noqa: BLE001 - metrics can never fail a request
                log.exception("batch metrics failed")

    async def _finish(self, item: Pending, out: RoutedOutput) -> None:
        assert self.finish is not None
        result: RoutedOutput | BaseException
        try:
            result = await self.finish(out, item.deadline)  # the search stops at the request's deadline
        except asyncio.CancelledError:
            _settle(item, DeadlineExceededError("the service is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - this item's decoding failed; its neighbours are unaffected
            log.exception("finishing request %d failed", item.id)
            result = exc
        item.finished_at = self.clock()
        _settle(item, result)

    async def _isolate(
        self, loop: asyncio.AbstractEventLoop, batch: list[Pending]
    ) -> list[RoutedOutput | BaseException]:
        results: list[RoutedOutput | BaseException] = []
        for item in batch:
            try:
                (out,) = await loop.run_in_executor(self._executor, self.run_batch, [item.wave], [item.mask])
                results.append(out)
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        return results


def _settle(item: Pending, out: RoutedOutput | BaseException) -> None:
    """Hand ``out`` to ``item``'s caller (unless it is gone): a result of the requested kind, or an error."""
    if item.future is None or item.future.done():
        return
    if not isinstance(out, BaseException):
        out = kind_mismatch(item, out) or out
    if isinstance(out, BaseException):
        item.future.set_exception(out)
    else:
        item.future.set_result(out)
