"""The batching decisions as pure functions, and the asyncio driver with a real (tiny) run function."""

import asyncio
import threading
import time
from collections import deque

import pytest
import torch

from router_core.errors import DeadlineExceededError, MaskKindError, MaskNotFoundError, OverloadedError
from router_core.router import RoutedOutput
from service.pipeline.batching import Batcher, Pending, admit, dispatch_delay, kind_mismatch
from service.pipeline.scheduling import AGING, take_batch


def _pending(mask="fr", at=0.0, deadline=10.0, cancelled=False):
    return Pending(torch.zeros(10), mask, "ctc", at, deadline, cancelled=cancelled)


def test_admit_bounds_the_queue():
    assert admit(0, 1) and not admit(1, 1) and admit(63, 64)


def test_dispatch_delay_waits_for_a_full_batch_or_the_oldest_request():
    assert dispatch_delay([], 4, 0.01, now=5.0) is None
    queue = [_pending(at=1.0), _pending(at=1.004)]
    assert dispatch_delay(queue, 4, 0.010, now=1.002) == pytest.approx(0.008)
    assert dispatch_delay(queue, 4, 0.010, now=1.5) == 0.0  # oldest waited long enough
    assert dispatch_delay(queue * 2, 4, 10.0, now=1.0) == 0.0  # full


def test_take_batch_drops_cancelled_and_expired_and_keeps_order():
    alive = [_pending("a", 0), _pending("b", 1), _pending("c", 2)]
    queue = deque([alive[0], _pending("x", cancelled=True), alive[1], _pending("y", deadline=0.5), alive[2]])
    batch, dead = take_batch(queue, max_batch=2, now=1.0)
    assert [p.mask for p in batch] == ["a", "b"] and [p.mask for p in dead] == ["x", "y"]
    batch, dead = take_batch(queue, max_batch=2, now=1.0)
    assert [p.mask for p in batch] == ["c"] and dead == [] and not queue


def _item(mask, seconds, request_s, at=0.0):
    item = Pending(torch.zeros(int(seconds * 16_000)), mask, "ctc", at, 1e9)
    item.request_audio_s = request_s
    return item


def test_a_short_request_goes_before_a_long_recordings_queued_segments_and_alone():
    """Eight 25 s segments of a 60-minute recording wait; a 3 s clip arrives after them. It runs next, in a
    batch of its own (a 25 s segment would make it pay for 25 s of padding); the segments follow in order.
    (First in, first out put the clip behind all eight, in a batch padded to 25 s.)"""
    segments = [_item(f"long{i}", 25.0, 3600.0, at=0.01 * i) for i in range(8)]
    clip = _item("clip", 3.0, 3.0, at=0.1)
    queue = deque([*segments, clip])
    batch, _ = take_batch(queue, max_batch=8, now=0.2)
    assert [p.mask for p in batch] == ["clip"]
    batch, _ = take_batch(queue, max_batch=8, now=0.3)
    assert [p.mask for p in batch] == [f"long{i}" for i in range(8)]


def test_a_long_request_is_not_starved_by_short_ones():
    """Aging: a segment that has waited its request's audio / AGING seconds goes before a new short clip."""
    old = _item("long", 25.0, 600.0, at=0.0)
    waited = 600.0 / AGING + 1.0
    queue = deque([old, _item("clip", 3.0, 3.0, at=waited)])
    assert [p.mask for p in take_batch(queue, max_batch=1, now=waited)[0]] == ["long"]


def test_a_request_that_cannot_finish_by_its_deadline_is_refused_with_the_wait():
    """With 100 s of audio ranked ahead (2.5 s clips) at 0.1 s per audio second, a 3 s clip waits about 10 s: refused at
    once (503, Retry-After 10 s) when it has 5 s left, admitted with 30 s. Long segments ranked after it do
    not count against it."""

    async def scenario():
        batcher = Batcher(RecordingModel(), max_batch=8, max_wait_s=0.0, max_queue=64)  # not started
        batcher.rate.observe(1.0, 10.0)  # measured: 0.1 s per audio second
        for _ in range(40):  # 100 s of short clips, ranked before a new 3 s clip
            batcher.submit(torch.zeros(40_000), "fr", "ctc", 60.0)
        with pytest.raises(OverloadedError) as refused:
            batcher.check_wait(3.0, remaining_s=5.0)
        batcher.check_wait(3.0, remaining_s=30.0)
        for _ in range(8):  # a long recording's segments rank after the clip
            batcher.submit(torch.zeros(25 * 16_000), "de", "ctc", 600.0, request_audio_s=3600.0)
        return refused.value.retry_after, batcher.expected_wait(3.0)

    retry_after, wait = _run(scenario())
    assert retry_after == pytest.approx(10.0, rel=0.01) and wait == pytest.approx(10.0, rel=0.01)


class RecordingModel:
    """Echoes each item's mask and length; records the batches it saw; can be slowed down or gated."""

    def __init__(self, delay=0.0, gate: threading.Event | None = None):
        self.batches: list[list[str]] = []
        self.delay = delay
        self.gate = gate
        self.entered = threading.Event()  # set as the first batch enters the model
        self.ran = threading.Condition()  # notified as each batch is recorded

    def __call__(self, waves, masks):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay)
        if "missing" in masks:
            raise MaskNotFoundError("missing", ["fr"])
        with self.ran:
            self.batches.append(list(masks))
            self.ran.notify_all()
        return [
            RoutedOutput(m, "ctc", torch.tensor([float(w.shape[0])]), w.shape[0] / 16000)
            for w, m in zip(waves, masks, strict=True)
        ]


def _run(coro):
    return asyncio.run(coro)


async def batches_run(model, count):
    """Until ``model`` has recorded ``count`` batches (woken by the model, not polled)."""

    def wait() -> bool:
        with model.ran:
            return model.ran.wait_for(lambda: len(model.batches) >= count, timeout=5)

    assert await asyncio.to_thread(wait)


async def in_model(model):
    """Until a batch is inside ``model`` (blocked on its gate, if it has one)."""
    assert await asyncio.to_thread(model.entered.wait, 5)


def test_mixed_masks_share_one_batch_and_results_go_to_their_callers():
    model = RecordingModel()

    async def scenario():
        batcher = Batcher(model, max_batch=8, max_wait_s=0.05, max_queue=16)
        batcher.start()
        items = [batcher.submit(torch.zeros(100 + i), m, "ctc", 5.0) for i, m in enumerate(["fr", "de", "fr", "es"])]
        outs = await asyncio.gather(*(batcher.result(i) for i in items))
        await batcher.stop()
        return outs

    outs = _run(scenario())
    assert model.batches == [["fr", "de", "fr", "es"]]
    assert [(o.mask_name, int(o.logits.item())) for o in outs] == [("fr", 100), ("de", 101), ("fr", 102), ("es", 103)]


def test_full_queue_is_refused_at_once_and_accepted_work_completes():
    gate = threading.Event()
    model = RecordingModel(gate=gate)

    async def scenario():
        batcher = Batcher(model, max_batch=1, max_wait_s=0.0, max_queue=2)
        batcher.start()
        first = batcher.submit(torch.zeros(10), "fr", "ctc", 5.0)
        await in_model(model)  # first is now running (blocked on the gate), the queue is empty
        queued = [batcher.submit(torch.zeros(10), "fr", "ctc", 5.0) for _ in range(2)]
        with pytest.raises(OverloadedError):
            batcher.submit(torch.zeros(10), "fr", "ctc", 5.0)
        gate.set()
        outs = await asyncio.gather(*(batcher.result(i) for i in [first, *queued]))
        await batcher.stop()
        return outs

    assert len(_run(scenario())) == 3


def test_deadline_and_a_bad_item_do_not_take_the_batch_down():
    model = RecordingModel(delay=0.2)

    async def scenario():
        batcher = Batcher(model, max_batch=4, max_wait_s=0.01, max_queue=8)
        batcher.start()
        late = batcher.submit(torch.zeros(10), "fr", "ctc", 0.05)
        with pytest.raises(DeadlineExceededError):
            await batcher.result(late)
        good = batcher.submit(torch.zeros(10), "fr", "ctc", 5.0)
        bad = batcher.submit(torch.zeros(10), "missing", "ctc", 5.0)
        out = await batcher.result(good)
        with pytest.raises(MaskNotFoundError):
            await batcher.result(bad)
        await batcher.stop()
        return out

    assert _run(scenario()).mask_name == "fr"


def test_a_caller_anywhere_in_the_queue_can_go_away():
    """Cancelling an item behind others removes exactly it. (Queued items once compared equal field by
    field, tensors included: removing any but the first raised RuntimeError, and its work still ran. A
    loaded CI machine, on which the first item had not yet left the queue, showed it.)"""

    async def scenario():
        batcher = Batcher(RecordingModel(), max_batch=1, max_wait_s=0.0, max_queue=8)  # not started: all wait
        first, middle, last = (batcher.submit(torch.zeros(10), m, "ctc", 5.0) for m in ("fr", "de", "es"))
        batcher.cancel(middle)
        assert list(batcher.queue) == [first, last] and middle.cancelled
        batcher.cancel(middle)  # again, or after its batch was taken: nothing to remove
        assert list(batcher.queue) == [first, last]

    _run(scenario())


def test_work_of_a_caller_that_went_away_is_dropped():
    gate = threading.Event()
    model = RecordingModel(gate=gate)

    async def scenario():
        batcher = Batcher(model, max_batch=1, max_wait_s=0.0, max_queue=8)
        batcher.start()
        running = batcher.submit(torch.zeros(10), "fr", "ctc", 5.0)
        await in_model(model)  # 'fr' is in the model; the next two wait in the queue
        gone = batcher.submit(torch.zeros(10), "de", "ctc", 5.0)
        kept = batcher.submit(torch.zeros(10), "es", "ctc", 5.0)
        waiting = asyncio.Event()

        async def client():
            waiting.set()  # runs on into batcher.result before the test resumes
            await batcher.result(gone)

        waiter = asyncio.ensure_future(client())
        await waiting.wait()  # the client waits inside batcher.result
        waiter.cancel()  # the client disconnected
        gate.set()
        await asyncio.gather(batcher.result(running), batcher.result(kept))
        await batcher.stop()

    _run(scenario())
    assert model.batches == [["fr"], ["es"]]


def test_a_request_task_cancelled_while_its_item_waits_drops_the_item():
    """A transcriber's task cancelled (a long recording whose client left cancels its segments; lang=auto
    drops its other candidates when one fails): the queued item goes too, instead of running for nobody."""
    from types import SimpleNamespace

    from service.pipeline.admission import Admission
    from service.pipeline.transcriber import Transcriber

    gate = threading.Event()
    model = RecordingModel(gate=gate)

    async def scenario():
        batcher = Batcher(model, max_batch=1, max_wait_s=0.0, max_queue=8)
        batcher.start()
        registry = SimpleNamespace(get=lambda name: SimpleNamespace(name=name, kind="ctc"))
        state = SimpleNamespace(ready_engine=lambda: (SimpleNamespace(registry=registry), batcher), api_keys=None)
        running = batcher.submit(torch.zeros(10), "fr", "ctc", 5.0)
        await in_model(model)  # 'fr' is in the model
        queued, submit = asyncio.Event(), batcher.submit

        def submit_and_tell(*args, **kwargs):
            item = submit(*args, **kwargs)
            queued.set()
            return item

        batcher.submit = submit_and_tell
        transcriber = Transcriber(Admission(state, None, time.monotonic() + 5))
        task = asyncio.ensure_future(transcriber.serve(torch.zeros(10), "de", "ctc"))
        await asyncio.wait_for(queued.wait(), 5)  # 'de' is queued
        kept = batcher.submit(torch.zeros(10), "es", "ctc", 5.0)
        task.cancel()
        gate.set()
        await asyncio.gather(batcher.result(running), batcher.result(kept))
        await batcher.stop()
        return task

    assert _run(scenario()).cancelled()
    assert model.batches == [["fr"], ["es"]]


def test_an_output_of_the_other_kind_is_refused_for_its_request():
    item = _pending("fr")  # admitted as a transcription ("ctc")
    assert kind_mismatch(item, RoutedOutput("fr", "ctc", torch.zeros(3, 5), 1.0)) is None
    error = kind_mismatch(item, RoutedOutput("fr", "classify", torch.zeros(2), 1.0))
    assert isinstance(error, MaskKindError) and "became a classify mask" in str(error)


def test_a_cancelled_item_frees_its_queue_slot_at_once():
    gate = threading.Event()
    model = RecordingModel(gate=gate)

    async def scenario():
        batcher = Batcher(model, max_batch=1, max_wait_s=0.0, max_queue=1)
        batcher.start()
        running = batcher.submit(torch.zeros(10), "fr", "ctc", 5.0)
        await in_model(model)  # 'fr' is in the model; the queue has room for one
        gone = batcher.submit(torch.zeros(10), "de", "ctc", 5.0)
        with pytest.raises(OverloadedError):
            batcher.submit(torch.zeros(10), "es", "ctc", 5.0)
        batcher.cancel(gone)  # its client went away: the slot is free before any batch runs
        kept = batcher.submit(torch.zeros(10), "es", "ctc", 5.0)
        gate.set()
        await asyncio.gather(batcher.result(running), batcher.result(kept))
        await batcher.stop()

    _run(scenario())
    assert model.batches == [["fr"], ["es"]]


def test_the_next_batch_runs_while_the_last_one_finishes_and_a_failed_finish_stays_its_own():
    """With a finish stage (beam search in the decode pool), the model thread does not wait for it: the
    second batch runs while the first batch's outputs are still being finished. A finish that fails
    fails only its own request."""
    model = RecordingModel()
    release = asyncio.Event()
    finished: list[str] = []

    def deferring(waves, masks):
        outs = model(waves, masks)
        for out in outs:
            out.beam = object()  # a pending beam search
        return outs

    async def finish(out, deadline):
        if out.mask_name == "bad":
            raise RuntimeError("decoder crashed")
        await release.wait()
        out.beam = None
        finished.append(out.mask_name)
        return out

    async def scenario():
        batcher = Batcher(deferring, finish=finish, max_batch=2, max_wait_s=0.0, max_queue=8)
        batcher.start()
        first = [batcher.submit(torch.zeros(100), m, "ctc", 5.0) for m in ("fr", "bad")]
        await batches_run(model, 1)
        second = batcher.submit(torch.zeros(100), "de", "ctc", 5.0)
        await batches_run(model, 2)  # runs although the first batch's finish is still blocked
        assert finished == []
        with pytest.raises(RuntimeError, match="decoder crashed"):
            await batcher.result(first[1])
        release.set()
        outs = [await batcher.result(first[0]), await batcher.result(second)]
        await batcher.stop()
        return outs

    outs = _run(scenario())
    assert model.batches == [["fr", "bad"], ["de"]]
    assert [o.mask_name for o in outs] == ["fr", "de"] and all(o.beam is None for o in outs)
    assert sorted(finished) == ["de", "fr"]


def test_a_full_finish_stage_holds_the_next_batch_back():
    """At most ``max_finishing`` outputs wait for the finish stage; the next batch waits for room."""
    model = RecordingModel()
    release = asyncio.Event()

    def deferring(waves, masks):
        outs = model(waves, masks)
        for out in outs:
            out.beam = object()
        return outs

    finishing = asyncio.Event()

    async def finish(out, deadline):
        finishing.set()
        await release.wait()
        return out

    async def scenario():
        batcher = Batcher(deferring, finish=finish, max_finishing=1, max_batch=1, max_wait_s=0.0, max_queue=8)
        batcher.start()
        items = [batcher.submit(torch.zeros(100), m, "ctc", 5.0) for m in ("a", "b")]
        # the batcher's loop goes from creating "a"'s finish task to waiting for finish room without
        # yielding, so by the time that task starts, the loop is parked there and "b" is still queued
        await asyncio.wait_for(finishing.wait(), 5)
        held = (list(model.batches), batcher.queue_length)
        release.set()
        await asyncio.gather(*(batcher.result(i) for i in items))
        await batcher.stop()
        return held

    assert _run(scenario()) == ([["a"]], 1)
    assert model.batches == [["a"], ["b"]]


def test_no_beam_search_is_run_for_a_caller_that_went_away():
    """An output whose caller left while its batch ran is not handed to the finish stage."""
    model = RecordingModel()
    finished: list[str] = []
    holder: dict = {}

    def deferring(waves, masks):
        holder["batcher"].cancel(holder["item"])  # the client goes away while its batch runs
        outs = model(waves, masks)
        for out in outs:
            out.beam = object()
        return outs

    async def finish(out, deadline):
        finished.append(out.mask_name)
        return out

    async def scenario():
        batch_done = asyncio.Event()  # on_batch runs after each output was settled or sent to finish
        finishing_then: list[int] = []

        def report(_):
            finishing_then.append(holder["batcher"].finishing)
            batch_done.set()

        batcher = holder["batcher"] = Batcher(deferring, finish=finish, max_batch=1, max_wait_s=0.0, max_queue=8,
                                              on_batch=report)
        batcher.start()
        holder["item"] = batcher.submit(torch.zeros(100), "fr", "ctc", 5.0)
        await asyncio.wait_for(batch_done.wait(), 5)
        await batcher.stop()
        return finishing_then

    assert _run(scenario()) == [0]  # no finish task was made for it
    assert model.batches == [["fr"]] and finished == []


def test_a_batch_holds_at_most_its_padded_audio_bound():
    """On a CPU a batch costs about the sum of its items, so a clip that arrives while one runs waits for
    all of it: with 30 s of padded audio per batch, long segments run one at a time, short clips together."""
    segments = deque(_item(f"long{i}", 25.0, 3600.0, at=0.0) for i in range(4))
    assert len(take_batch(segments, max_batch=8, now=0.0, max_audio_s=30.0)[0]) == 1
    clips = deque(_item(f"clip{i}", 3.0, 3.0, at=0.0) for i in range(12))
    assert len(take_batch(clips, max_batch=8, now=0.0, max_audio_s=30.0)[0]) == 8
    assert len(take_batch(clips, max_batch=8, now=0.0, max_audio_s=10.0)[0]) == 3
    assert len(take_batch(deque([_item("huge", 60.0, 60.0)]), 8, 0.0, max_audio_s=30.0)[0]) == 1  # never stuck


def test_a_request_behind_more_than_the_queue_wait_bound_is_refused():
    """The backlog a request may join is bounded (``max_queue_wait_s``), so a burst leaves at most that much
    work behind it: the service recovers within it once the burst ends."""

    async def scenario():
        batcher = Batcher(RecordingModel(), max_batch=8, max_wait_s=0.0, max_queue=64, max_queue_wait_s=5.0)
        batcher.rate.observe(1.0, 10.0)  # 0.1 s per audio second
        for _ in range(24):  # 60 s of clips: 6 s of work ahead
            batcher.submit(torch.zeros(40_000), "fr", "ctc", 600.0)
        with pytest.raises(OverloadedError, match="at most 5 s"):
            batcher.check_wait(3.0, remaining_s=600.0)  # a 3 s clip ranks after the 2.5 s ones

    _run(scenario())
