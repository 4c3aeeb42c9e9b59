"""CTC beam search off the model thread, in worker processes.

The beam search (:mod:`router_core.ctc_beam`) is Python and holds the GIL for its whole run, as would
flashlight's C++ decoder (measured: a thread spinning beside it stalls while it decodes), so threads
cannot overlap it with the backbone; processes can. The model thread hands each item's CTC log
posteriors ``[T, V]`` and a :class:`BeamJob` to :meth:`DecodePool.submit` and goes on with the next
batch; a worker returns the :class:`~router_core.decoding.Transcript`.

A worker needs the mask's language model: the pool writes each model it sees once to a file in its own
temporary folder (``to_tensors``, about 1 MB), named by a counter, and a worker loads a file the first
time a job names it (≈ 13 ms) and keeps the last :data:`WORKER_LM_CACHE` it loaded. A new version of a
mask carries a new model object, so it gets a new file; files of models no longer referenced are
removed. ``workers=0`` runs the search in the calling thread (the library default: no processes).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from router_core.char_lm import CharNgramLM
from router_core.ctc_beam import BeamSettings, LMDecoding, ctc_beam_decode
from router_core.decoding import Transcript
from router_core.heads import HeadSpec

WORKER_LM_CACHE = 16  # language models a worker keeps loaded


@dataclass(frozen=True)
class BeamJob:
    """A CTC beam search left for later: the mask's language model and head, and the frame duration."""

    lm: LMDecoding
    spec: HeadSpec
    seconds_per_frame: float

    def run(self, log_probs: torch.Tensor, deadline: float | None = None) -> Transcript:
        """The search in this thread: ``log_probs [T, V]`` -> the best transcript."""
        return ctc_beam_decode(log_probs, self.spec, self.seconds_per_frame, self.lm.model, self.lm.settings,
                               deadline)


class DecodePool:
    """Beam searches in ``workers`` processes (``spawn``: no forked torch or CUDA state)."""

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"decode workers must be >= 0, not {workers}")
        self.workers = workers
        self._executor = (
            concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                   initializer=_die_with_parent, initargs=(os.getpid(),))
            if workers else None
        )
        self._folder = Path(tempfile.mkdtemp(prefix="s3router-lm-")) if workers else None
        self._files: dict[int, Path] = {}  # id of a live model -> its file
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def submit(self, job: BeamJob, log_probs: torch.Tensor,
               deadline: float | None = None) -> concurrent.futures.Future[Transcript]:
        """Search ``log_probs [T, V]`` (host memory) with ``job``; the future holds the transcript, or
        :class:`DeadlineExceededError` once ``deadline`` (``time.monotonic()``) passed (the worker is free)."""
        if self._executor is None:
            future: concurrent.futures.Future[Transcript] = concurrent.futures.Future()
            try:
                future.set_result(job.run(log_probs, deadline))
            except Exception as exc:  # noqa: BLE001 - the caller's future carries it
                future.set_exception(exc)
            return future
        path = self._file_for(job.lm.model)
        return self._executor.submit(
            _decode_in_worker, str(path), job.lm.model.order, job.lm.model.tokens, job.lm.settings, job.spec,
            job.seconds_per_frame, log_probs.numpy(), deadline,
        )

    def _file_for(self, model: CharNgramLM) -> Path:
        """The model's file in the pool's folder, written on first use; removed when the model is freed."""
        assert self._folder is not None
        with self._lock:
            path = self._files.get(id(model))
            if path is None:
                path = self._folder / f"lm-{next(self._numbers)}.pt"
                torch.save(model.to_tensors(), path)
                self._files[id(model)] = path
                weakref.finalize(model, self._forget, id(model), path)
            return path

    def _forget(self, key: int, path: Path) -> None:
        with self._lock:
            self._files.pop(key, None)
        path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


PARENT_CHECK_S = 0.5  # how often a worker looks whether the process that started it is still there


def _die_with_parent(parent: int) -> None:
    """A worker's initializer: a thread that ends the worker once its parent is gone (killed with -9, or
    exited while the worker was busy), so no worker outlives the service (it was reparented and kept its
    hundreds of MB). Polling the parent's pid is what works on every start method and from any thread
    (a parent-death signal follows the thread that started the worker, not the process)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="s3r-parent-watch", daemon=True).start()


_loaded: OrderedDict[str, CharNgramLM] = OrderedDict()  # in a worker: file -> model, most recent last


def _decode_in_worker(
    path: str, order: int, tokens: list[str], settings: BeamSettings, spec: HeadSpec, seconds_per_frame: float,
    log_probs: object, deadline: float | None = None,
) -> Transcript:
    """Runs in a worker process: the model from ``path`` (cached), then the search."""
    model = _loaded.pop(path, None)
    if model is None:
        model = CharNgramLM.from_tensors(order, tokens, torch.load(path, weights_only=True))
    _loaded[path] = model
    while len(_loaded) > WORKER_LM_CACHE:
        _loaded.popitem(last=False)
    return ctc_beam_decode(torch.from_numpy(log_probs), spec, seconds_per_frame, model, settings,  # type: ignore[arg-type]
                           deadline)
