import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from router_core.errors import KernelUnavailableError
from router_core.kernels.backend import KERNEL_ENV_VAR, select_backend


def test_auto_on_cpu_picks_the_compiled_cpu_kernel(monkeypatch):
    monkeypatch.delenv(KERNEL_ENV_VAR, raising=False)
    assert select_backend("cpu").name == "cpu"


def test_environment_override_and_explicit_argument(monkeypatch):
    monkeypatch.setenv(KERNEL_ENV_VAR, "reference")
    assert select_backend("cpu").name == "reference"
    assert select_backend("cpu", "cpu").name == "cpu"  # an explicit argument wins


def test_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv(KERNEL_ENV_VAR, "fast")
    with pytest.raises(KernelUnavailableError, match="unknown kernel backend"):
        select_backend("cpu")


def test_triton_needs_cuda_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(KernelUnavailableError, match="CUDA"):
        select_backend("cpu", "triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cpu_backend_refuses_a_cuda_device():
    with pytest.raises(KernelUnavailableError):
        select_backend("cuda", "cpu")


def test_a_kernel_flag_of_auto_wins_over_the_environment(monkeypatch, tmp_path):
    """`s3router serve --kernel auto` with S3R_KERNEL=reference set: the settings object is the only source
    (the engine passed None for "auto", and the backend then read the environment)."""
    from helpers import tiny_model
    from service.pipeline.engine import build_engine
    from service.settings import load_settings

    tiny_model().save_pretrained(tmp_path / "backbone")
    monkeypatch.setenv(KERNEL_ENV_VAR, "reference")
    settings = load_settings(kernel="auto", backbone=str(tmp_path / "backbone"), registry=str(tmp_path / "reg"))
    assert settings.kernel == "auto"
    engine = build_engine(settings)
    try:
        assert engine.router.backend.name == "cpu"
    finally:
        engine.close()
    assert build_engine(load_settings(backbone=str(tmp_path / "backbone"), registry=str(tmp_path / "reg"))
                        ).router.backend.name == "reference"  # no flag: S3R_KERNEL, read by the settings



def _built_extension_folder() -> Path:
    """The folder torch built (or finds built) the CPU extension in, for this process's settings."""
    from torch.utils.cpp_extension import _get_build_directory

    from router_core.kernels import cpu

    cpu.load_extension()
    return Path(_get_build_directory("s3r_apply_bits", verbose=False))


def _load_in_new_process(extensions_dir: Path | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """``load_extension()`` in a fresh Python (``prelude`` run first), printing the loaded library's path;
    ``extensions_dir``: its ``TORCH_EXTENSIONS_DIR`` (default: this process's)."""
    load = prelude + "from router_core.kernels.cpu import load_extension; print(load_extension().__file__)"
    env = {**os.environ, **({"TORCH_EXTENSIONS_DIR": str(extensions_dir)} if extensions_dir else {})}
    return subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_the_cpu_extension_loads_past_a_build_lock_left_by_a_killed_process(tmp_path):
    """torch guards every extension load with a ``lock`` file it deletes when done; one left by a process
    killed in between made every later load (every service start) wait forever. A new process loads anyway
    and clears it. In a copy of the build folder: the user's own is shared with other processes."""
    folder = tmp_path / "s3r_apply_bits"
    shutil.copytree(_built_extension_folder(), folder)
    stale = folder / "lock"
    stale.touch()
    done = _load_in_new_process(tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == folder / "s3r_apply_bits.so"
    assert not stale.exists()


@pytest.mark.slow
def test_the_cpu_extension_built_into_a_folder_the_service_cannot_write_is_imported_as_built(tmp_path):
    """The image builds the library as root and the service runs as another user: the folder takes no
    lock (torch's load failed there, so the CPU kernel fell back to the reference). Simulated by a lock
    path that cannot be opened, since root writes anywhere."""
    folder = tmp_path / "s3r_apply_bits"
    folder.mkdir()
    shutil.copy(_built_extension_folder() / "s3r_apply_bits.so", folder)
    (folder / "s3r.flock").mkdir()  # opening it for writing fails, as in a folder owned by another user
    done = _load_in_new_process(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folder / "s3r_apply_bits.so")
    assert sorted(p.name for p in folder.iterdir()) == ["s3r.flock", "s3r_apply_bits.so"]  # nothing built, no lock
    (folder / "s3r_apply_bits.so").unlink()
    missing = _load_in_new_process(tmp_path)
    assert missing.returncode != 0 and "holds no built s3r_apply_bits.so" in missing.stderr


@pytest.mark.slow
def test_the_cpu_extension_loads_where_the_file_system_has_no_flock():
    """Some network file systems refuse ``flock``: the load goes on under torch's own lock, as before."""
    refuse_flock = "import fcntl\ndef refuse(*_):\n    raise OSError(37, 'No locks available')\nfcntl.flock = refuse\n"
    done = _load_in_new_process(prelude=refuse_flock)
    assert done.returncode == 0, done.stderr
    assert "apply_bits" in done.stdout
