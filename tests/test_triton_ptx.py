"""The Triton kernel compiled for real GPUs on this GPU-less machine (Triton ships ptxas): every tile
config must compile for Hopper (sm_90) and Ampere (sm_80), multiply half precision on the tensor cores,
pipeline its global loads, and fit the shared memory that the autotuner's pruning assumes. A device session
then only has to measure speed, not discover a compile error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from router_core.kernels.triton_configs import CONFIGS, shared_memory_estimate

PROBE = Path(__file__).with_name("ptx_probe.py")
SHARED_LIMIT = {90: 232_448, 80: 166_912}  # opt-in shared memory per block: H100, A100
CASES = [(90, "fp16"), (90, "bf16"), (80, "fp16"), (90, "fp32")]


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real compilation, not the interpreter
    runs = {
        (arch, dtype): subprocess.Popen(
            [sys.executable, str(PROBE), str(arch), dtype, str(SHARED_LIMIT[arch])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arch, dtype in CASES
    }
    results = {}
    for case, run in runs.items():
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, f"{case}: {err[-3000:]}"
        results[case] = [json.loads(line) for line in out.splitlines()]
    return results


@pytest.mark.slow
@pytest.mark.parametrize("arch,dtype", CASES, ids=[f"sm{a}-{d}" for a, d in CASES])
def test_every_config_compiles_uses_the_right_units_and_fits(compiled, arch, dtype):
    element_size = 4 if dtype == "fp32" else 2
    kept = [c.kwargs for c in CONFIGS if shared_memory_estimate(c, element_size) <= SHARED_LIMIT[arch]]
    *rows, apply_bits = compiled[(arch, dtype)]
    assert apply_bits["kernel"] == "apply_bits" and apply_bits["vector_loads"] > 0  # W read in wide loads
    assert [r["config"] for r in rows] == [k for k in kept for _ in (True, False)]  # each, with and without a table
    assert len(kept) >= 8
    by_kwargs = {str(c.kwargs): c for c in CONFIGS}
    for r in rows:
        what = (r["config"], r["one_segment"])
        assert r["cp_async"] > 0, f"{what}: global loads are not pipelined"
        assert r["shared"] <= SHARED_LIMIT[arch], what
        assert r["shared"] <= 1.05 * shared_memory_estimate(by_kwargs[str(r["config"])], element_size), what
        if dtype == "fp32":  # IEEE float32, as F.linear: CUDA cores
            assert r["fma"] > 0 and r["wgmma"] == r["mma_sync"] == 0, what
        elif arch == 90 and r["config"]["BLOCK_M"] >= 64:  # a Hopper warpgroup MMA needs 64 rows
            assert r["wgmma"] > 0 and r["fma"] == 0, what
        else:
            assert r["mma_sync"] > 0 and r["fma"] == 0, what
