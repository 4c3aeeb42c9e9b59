"""Beam searches in worker processes give what the search gives in the calling thread."""

import gc

import torch

from router_core.char_lm import train_char_lm
from router_core.ctc_beam import BeamSettings, LMDecoding
from router_core.decode_pool import BeamJob, DecodePool
from router_core.heads import HeadSpec

VOCAB = ["<pad>", "<unk>", "|", *"abcdelr"]
TEXTS = ["le cable", "la barre", "le bar", "la cale", "le racle"] * 4


def _job() -> BeamJob:
    lm = train_char_lm(TEXTS, 4, [t for t in VOCAB if t not in ("<pad>", "<unk>")])
    return BeamJob(LMDecoding(lm, BeamSettings(beam_width=8, alpha=0.8, beta=1.0)), HeadSpec("ctc", VOCAB), 0.02)


def _log_probs(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(40, len(VOCAB), generator=gen)).log_softmax(-1)  # [T, V]


def test_worker_processes_decode_as_the_calling_thread_does():
    job = _job()
    inputs = [_log_probs(seed) for seed in range(6)]
    expected = [job.run(x) for x in inputs]
    pool = DecodePool(2)
    try:
        got = [f.result(timeout=120) for f in [pool.submit(job, x) for x in inputs]]
        inline = [f.result() for f in [DecodePool(0).submit(job, x) for x in inputs]]
    finally:
        pool.close()
    assert got == expected == inline
    assert any(t.text for t in got)  # the search found words, not only blanks


def test_a_language_model_file_lives_as_long_as_its_model():
    pool = DecodePool(1)
    try:
        job = _job()
        pool.submit(job, _log_probs(0)).result(timeout=120)
        (path,) = list(pool._folder.iterdir())
        del job
        gc.collect()
        assert not path.exists()  # a replaced mask's model leaves no file behind
    finally:
        pool.close()
    assert not pool._folder.exists()


def test_a_decode_worker_imports_no_model_code():
    """A worker process imports what the search needs, not transformers (seconds per worker start)."""
    import subprocess
    import sys

    code = ("import sys, router_core.decode_pool; "
            "print(sorted(m for m in ('transformers', 'router_core.backbone') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_search_past_its_deadline_stops_and_frees_its_worker():
    """A beam search whose request's deadline passed raises instead of running for nobody (a 5,000-wide
    beam once held the worker for 11 minutes after its request's 504); the worker then serves the next."""
    import time

    import pytest

    from router_core.errors import DeadlineExceededError

    job, x = _job(), _log_probs(0)
    pool = DecodePool(1)
    try:
        with pytest.raises(DeadlineExceededError, match="deadline"):
            pool.submit(job, x, deadline=time.monotonic() - 1).result(timeout=120)
        assert pool.submit(job, x, deadline=time.monotonic() + 60).result(timeout=120) == job.run(x)
    finally:
        pool.close()
    with pytest.raises(DeadlineExceededError):
        DecodePool(0).submit(job, x, deadline=time.monotonic() - 1).result()


def test_decoding_settings_a_mask_may_carry_are_bounded():
    import pytest

    from router_core.ctc_beam import MAX_BEAM_WIDTH, MAX_CANDIDATES
    from router_core.errors import InvalidInputError

    BeamSettings(beam_width=MAX_BEAM_WIDTH, max_candidates=MAX_CANDIDATES)
    for wide in ({"beam_width": 5000}, {"max_candidates": MAX_CANDIDATES + 1}):
        with pytest.raises(InvalidInputError, match="at most"):
            BeamSettings(**wide)


def test_workers_end_when_the_service_is_killed():
    """``kill -9`` of the process that owns the pool: its decode worker (and multiprocessing's resource
    tracker) are gone within 5 s (they were still running 90 s later, reparented to PID 1)."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys, time; sys.path.insert(0, 'tests'); from test_decode_pool import _job, _log_probs; "
              "from router_core.decode_pool import DecodePool; pool, job = DecodePool(1), _job(); "
              "pool.submit(job, _log_probs(0)).result(timeout=120); "
              "print(*pool._executor._processes, flush=True); time.sleep(600)")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in owner.stdout.readline().split()]
    assert workers
    children = subprocess.run(["pgrep", "-P", str(owner.pid)], capture_output=True, text=True).stdout.split()
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(10)

    gone_by = time.monotonic() + 5
    for pid in children:  # a pidfd becomes readable when its process ends (a zombie has ended)
        try:
            fd = os.pidfd_open(int(pid))
        except ProcessLookupError:
            continue  # already gone
        try:
            ended, _, _ = select.select([fd], [], [], max(0.0, gone_by - time.monotonic()))
        finally:
            os.close(fd)
        assert ended, f"child {pid} outlived its killed parent by 5 s"
