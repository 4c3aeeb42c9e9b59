"""A fresh machine: the lock pins the whole tree and everything installs from it, the environment holds
exactly the lock, the Debian-package step stops early without root, the image's stages share one Python,
and README.md's settings table is the settings object's."""

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.settings import ServiceSettings, settings_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_lock  # noqa: E402

LOCK = ROOT / "requirements.lock"
SERVE_LOCK = ROOT / "requirements-serve.lock"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(path: Path) -> dict[str, str]:
    return check_lock.locked_versions(path.read_text())


def test_the_running_environment_holds_exactly_the_lock():
    import setuptools  # noqa: F401 - puts its vendored packages' metadata on sys.path, which must not count

    assert check_lock.differences(_pins(LOCK), check_lock.installed_versions()) == []


def test_a_package_changed_by_hand_is_named():
    locked = _pins(LOCK)
    installed = check_lock.installed_versions()
    changed = dict(installed, torch="2.11.1+cu130")
    assert check_lock.differences(locked, changed) == ["torch: 2.11.1+cu130 is installed, the lock names 2.11.0"]
    missing = {k: v for k, v in installed.items() if k != "redis"}
    gone = f"redis: the lock names {locked['redis']}, but it is not installed"
    assert check_lock.differences(locked, missing) == [gone]
    extra = dict(installed, leftpad="1.0")
    assert check_lock.differences(locked, extra) == ["leftpad: 1.0 is installed, but the lock does not name it"]


def test_the_check_script_fails_on_a_lock_that_differs(tmp_path):
    ok = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_lock.py"), str(LOCK)], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    other = tmp_path / "other.lock"
    other.write_text(LOCK.read_text().replace("\nfastapi==", "\nfastapi==0.0.1\nnot-fastapi==", 1))
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_lock.py"), str(other)], capture_output=True,
                         text=True)
    assert bad.returncode == 1
    assert "fastapi: " in bad.stderr and "the lock names 0.0.1" in bad.stderr and "make sync" in bad.stderr


def test_markers_of_the_universal_lock_are_evaluated_here():
    lock = "colorama==0.4.6 ; sys_platform == 'win32' \\\n    --hash=sha256:00\ntqdm==4.0 \\\n    --hash=sha256:11\n"
    assert check_lock.locked_versions(lock) == ({"tqdm": "4.0"} if sys.platform != "win32" else
                                                {"colorama": "0.4.6", "tqdm": "4.0"})


def test_torch_and_torchaudio_are_pinned_exactly_everywhere():
    reqs = [Requirement(d) for d in _pyproject()["project"]["dependencies"]]
    deps = {canonicalize_name(r.name): str(r.specifier) for r in reqs}
    assert deps["torch"] == "==2.11.0" and deps["torchaudio"] == "==2.11.0"
    for lock in (LOCK, SERVE_LOCK):
        pins = _pins(lock)
        assert (pins["torch"], pins["torchaudio"]) == ("2.11.0", "2.11.0"), lock.name


def test_the_locks_cover_pyproject_and_agree():
    project = _pyproject()["project"]
    full, serve = _pins(LOCK), _pins(SERVE_LOCK)
    for spec, lock in [(d, full) for d in project["dependencies"] + project["optional-dependencies"]["dev"]] + [
        (d, serve) for d in project["dependencies"]
    ]:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate():
            name = canonicalize_name(req.name)
            assert name in lock, f"{name} is in pyproject.toml but not locked: run make lock"
            assert req.specifier.contains(lock[name], prereleases=True), f"{name} {lock[name]} breaks {req}"
    assert {k: full[k] for k in serve} == serve, "the serve lock must hold the same pins as requirements.lock"
    assert "pytest" not in serve and "mypy" not in serve
    for lock in (LOCK, SERVE_LOCK):
        body = [line for line in lock.read_text().splitlines() if line and not line.lstrip().startswith("#")]
        pins = [line for line in body if re.match(r"^[A-Za-z0-9]", line)]
        assert all("==" in line for line in pins), "every requirement in a lock is an exact pin"
        assert sum("--hash=sha256:" in line for line in body) >= len(pins), "every pin carries its hashes"


def test_every_installer_installs_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "uv pip sync" in makefile.replace("$(UV) pip sync", "uv pip sync") and "--require-hashes $(LOCK)" in makefile
    assert "--no-deps -e ." in makefile, "the project itself must not resolve dependencies"
    assert "grep -m1 -oE '^uv==[^ ]+' $(LOCK)" in makefile, "the bootstrap installs the uv the lock names"
    assert re.search(r"^test: system-test check-lock ", makefile, re.M), "make test checks the lock before the suite"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    # the suite first; then the image and the stack wherever the script says this machine can run them
    assert ci.index("make test") < ci.index("make docker-test")
    assert "if reason=$(bash scripts/docker_test.sh --why-not); then" in ci
    docker_installs = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if "pip install" in line]
    assert docker_installs and all(
        "--require-hashes --no-deps -r requirements-serve.lock" in line or "--no-deps --no-build-isolation ." in line
        for line in docker_installs
    ), docker_installs


def _stages(dockerfile: str) -> list[tuple[str, str]]:
    """``[(FROM image expression, stage body)]`` in order."""
    parts = re.split(r"^FROM\s+(\S+)(?:\s+AS\s+\S+)?\s*$", dockerfile, flags=re.M | re.I)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_the_image_stages_share_one_python_and_the_runtime_can_build_triton_launchers():
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) == 2
    (build_from, build), (runtime_from, runtime) = stages
    # the venv's interpreter is a link into its base image: the stage it is copied into must be the same image
    assert "python -m venv /opt/venv" in build and "COPY --from=build /opt/venv /opt/venv" in runtime
    assert build_from == runtime_from == "${PYTHON_IMAGE}"
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert default and default.group(1).startswith("python:3.11"), "the lock is for Python 3.11"
    # Triton (locked for Linux) compiles its launcher with gcc or clang on first use on a GPU
    assert "triton" in _pins(SERVE_LOCK) and re.search(r"apt-get install [^\n]*\bgcc=\S+ libc6-dev", runtime)


def test_the_image_ships_the_bundled_model():
    patterns = [p.strip().rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    for path in ["masks/registry/fr.s3mask", "masks/backbone/model.safetensors"]:
        prefixes = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 2)]
        excluded = [p for p in patterns if any(fnmatch.fnmatch(prefix, p) for prefix in prefixes)]
        assert not excluded, f".dockerignore {excluded} keeps {path} out of the image"
    (_, runtime) = _stages((ROOT / "Dockerfile").read_text())[-1]
    assert re.search(r"^COPY --chown=999:999 masks \./masks$", runtime, re.M)


def _fake_dpkg_query(bin_dir: Path, missing: str) -> None:
    fake = bin_dir / "dpkg-query"
    fake.write_text(f'#!/bin/sh\n[ "$3" = "{missing}" ] && exit 1\necho "install ok installed"\n')
    fake.chmod(0o755)


@pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0, reason="needs setpriv to drop root")
def test_without_root_make_test_prerequisites_stop_at_once_with_the_apt_line():
    tmp_path = Path(tempfile.mkdtemp(prefix="s3r-fake-dpkg-"))  # readable by the unprivileged user, unlike tmp_path
    tmp_path.chmod(0o755)
    _fake_dpkg_query(tmp_path, "sox")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    script = str(shutil.copy(ROOT / "scripts" / "system_packages.sh", tmp_path))  # the checkout may be 0700
    started = time.monotonic()
    done = subprocess.run([*drop, "bash", script, "test"], capture_output=True, text=True, env=env, timeout=30)
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    assert "sudo apt-get update && sudo apt-get install -y --no-install-recommends sox" in done.stderr
    serving = subprocess.run([*drop, "bash", script, "serve"], capture_output=True, text=True, env=env, timeout=30)
    assert serving.returncode == 0 and serving.stderr == ""  # sox is not needed to serve
    _fake_dpkg_query(tmp_path, "espeak-ng")
    serving = subprocess.run([*drop, "bash", script, "serve"], capture_output=True, text=True, env=env, timeout=30)
    assert serving.returncode == 0 and "warning: missing espeak-ng" in serving.stderr
    no_venv = tmp_path / "python-without-venv"  # Debian's python3 before python3-venv is installed
    no_venv.write_text("#!/bin/sh\nexit 1\n")
    no_venv.chmod(0o755)
    done = subprocess.run([*drop, "bash", script, "test"], capture_output=True, text=True, timeout=30,
                          env=dict(env, PYTHON=str(no_venv)))
    assert done.returncode == 1 and "--no-install-recommends espeak-ng python3-venv" in done.stderr
    shutil.rmtree(tmp_path)


def test_the_readme_settings_table_is_the_settings_object():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- settings-table:begin -->\n(.*?)<!-- settings-table:end -->", readme, re.S)
    assert block, "README.md lost its settings table markers"
    assert block.group(1) == settings_table(), "README.md's settings table is stale: paste `s3router settings`"


def test_every_setting_is_described():
    table = settings_table()
    assert "| None |" not in table
    assert table.count("\n") == 2 + len(ServiceSettings.model_fields)
