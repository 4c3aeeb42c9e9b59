"""Fixtures; the helpers they and the tests use live in helpers.py (which also puts Triton in interpreter
mode on CPU-only machines before any kernel is created)."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import REDIS_URL, tiny_backbone
from router_core.backbone import Backbone
from router_core.registry import DirectoryStore, MaskRegistry


def pytest_collection_modifyitems(config, items):
    """Tests marked ``docker`` need the images that scripts/docker_test.sh builds first: only
    ``make docker-test`` (which sets S3R_DOCKER_TEST=1) runs them."""
    if os.environ.get("S3R_DOCKER_TEST") == "1":
        return
    skip = pytest.mark.skip(reason="builds and runs the compose stack: make docker-test")
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _kernel_choices_kept_in_a_temporary_folder(tmp_path_factory):
    """Services built by the tests keep their timed kernel choices out of the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("S3R_KERNEL_CACHE_DIR", str(tmp_path_factory.mktemp("kernel-cache")))
        yield


@pytest.fixture(autouse=True)
def _two_tile_configs_on_gpu(monkeypatch):
    """On a GPU the autotuner chooses among two tile configs in tests (every config is checked by its own
    test): compiling all eleven for every small test shape would take minutes of device time."""
    if torch.cuda.is_available():
        from router_core.kernels import triton_configs, triton_masked

        configs = [triton_configs.CONFIGS[0], triton_configs.CONFIGS[4]]
        monkeypatch.setattr(triton_masked._tuned_kernel, "configs", configs)


@pytest.fixture
def backbone() -> Backbone:
    return tiny_backbone()


@pytest.fixture
def make_registry(tmp_path):
    def make(bb: Backbone, budget_bytes: int = 64 * 2**20, sub: str = "masks") -> MaskRegistry:
        return MaskRegistry(DirectoryStore(tmp_path / sub), bb.spec(), device=bb.device, budget_bytes=budget_bytes)

    return make


@pytest.fixture
def prefix():
    """A Redis key prefix of this test's own on the real Redis at REDIS_URL; its keys are deleted after."""
    import uuid

    import redis

    name = f"s3r-test-{uuid.uuid4().hex[:8]}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
