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
