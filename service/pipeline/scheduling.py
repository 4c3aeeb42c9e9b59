"""Which queued items run next, and how long a new request would wait: pure functions of the queue.

Fairness. An item's rank is its request's audio, less what it has waited (aging)::

    rank(item) = request_audio_s(item) - AGING * (now - enqueued_at(item))

Lowest rank first, then arrival (so one request's segments keep their order). A 3 s clip thus goes ahead
of the segments of a 60-minute recording that arrived before it (shortest job first), and a segment that
has waited ``request_audio_s / AGING`` seconds ranks with a request of no audio at all, so nothing
starves. A batch is the first item by rank and the next items by rank whose audio is at most
``LENGTH_RATIO`` times the first's (items are padded to the longest of their batch: a short clip never
pays for a batch of long segments). What one client sends costs that client, not the others.

Expected wait. ``seconds_per_audio_s`` is measured on the batches run (an exponential moving average of
``batch seconds / batch audio seconds``). A new request of ``audio_s`` seconds waits for the items that
rank before it, ``wait = seconds_per_audio_s * sum(audio of items ranked before it)``, and is done after
``wait + seconds_per_audio_s * audio_s``: past its deadline, it is refused at once (503 with
``Retry-After: wait``) instead of timing out later (504).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

AGING = 10.0  # audio seconds of rank gained per second waited
LENGTH_RATIO = 2.0  # a batch's items are at most this many times as long as its first
MIN_LENGTH_S = 1.0  # ... counting the first as at least this long


class Queued(Protocol):
    """What scheduling reads of a queued item (``batching.Pending``)."""

    enqueued_at: float
    request_audio_s: float

    @property
    def audio_s(self) -> float: ...

    def dead(self, now: float) -> bool: ...


def rank(item: Queued, now: float) -> tuple[float, float]:
    """``(request audio - AGING * waited, arrival)``: lower runs first."""
    return item.request_audio_s - AGING * (now - item.enqueued_at), item.enqueued_at


def take_batch(queue: deque, max_batch: int, now: float, max_audio_s: float | None = None) -> tuple[list, list]:
    """Pop the next batch: the best-ranked live item and, by rank, up to ``max_batch - 1`` more whose audio
    is at most ``LENGTH_RATIO`` times its own, while the batch's padded audio (items x longest) stays within
    ``max_audio_s``; also pop and return every dead item (cancelled, expired)."""
    dead = [item for item in queue if item.dead(now)]
    live = sorted((item for item in queue if not item.dead(now)), key=lambda item: rank(item, now))
    batch: list = []
    if live:
        longest = LENGTH_RATIO * max(live[0].audio_s, MIN_LENGTH_S)
        for item in (item for item in live if item.audio_s <= longest):
            padded = (len(batch) + 1) * max([item.audio_s, *(b.audio_s for b in batch)])
            if len(batch) == max_batch or (batch and max_audio_s is not None and padded > max_audio_s):
                break
            batch.append(item)
    taken = {id(item) for item in [*batch, *dead]}
    kept = [item for item in queue if id(item) not in taken]
    queue.clear()
    queue.extend(kept)
    return batch, dead


def audio_ranked_before(queue: Iterable[Queued], request_audio_s: float, now: float) -> float:
    """Seconds of queued audio that would run before a new request of ``request_audio_s`` arriving ``now``."""
    mine = (request_audio_s, now)
    return sum(item.audio_s for item in queue if not item.dead(now) and rank(item, now) <= mine)


@dataclass
class ServiceRate:
    """Seconds of batch time per second of audio, an exponential moving average over the batches run
    (``None`` before the first)."""

    smoothing: float = 0.2
    seconds_per_audio_s: float | None = None

    def observe(self, batch_seconds: float, audio_seconds: float) -> None:
        if audio_seconds <= 0:
            return
        sample = batch_seconds / audio_seconds
        old = self.seconds_per_audio_s
        self.seconds_per_audio_s = sample if old is None else old + self.smoothing * (sample - old)
