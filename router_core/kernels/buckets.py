"""Row buckets: the batch sizes (rows = items x frames) that kernel tuning is keyed on, shared by the
Triton tiles and the CPU schedules."""

from __future__ import annotations

ROW_BUCKETS = (64, 256, 1024, 4096, 16384)
"""Tuning is keyed on the smallest bucket holding the row count (larger counts share one key)."""
LAST_BUCKET = 65536
"""The key of every row count above the last of :data:`ROW_BUCKETS`."""


def row_bucket(rows: int) -> int:
    """The tuning bucket of ``rows``: the first of :data:`ROW_BUCKETS` at least ``rows``, else the last."""
    return next((b for b in ROW_BUCKETS if rows <= b), LAST_BUCKET)
