"""Compile the Triton masked-matmul kernel for a GPU architecture on a machine without one, and report
what the machine code does. Run in its own process, without ``TRITON_INTERPRET`` (tests/test_triton_ptx.py).

``python tests/ptx_probe.py ARCH DTYPE`` prints one JSON line per (config, one-segment flag), then one
for the materialized path's apply-bits kernel (its vectorized global loads). Per config: the counts
of tensor-core MMAs (``wgmma`` on Hopper, ``mma.sync`` before), asynchronous global-to-shared copies
(``cp.async``: the pipelined loads), FMAs, and the shared memory the kernel needs. The specialization is
what a launch at wav2vec2-base shapes gets: 16-byte aligned pointers, unit inner strides, sizes and outer
strides divisible by 16.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from router_core.kernels import triton_apply_bits, triton_configs, triton_masked  # noqa: E402

ALIGNED = ["x_ptr", "w_ptr", "bias_ptr", "out_ptr", "bits_ptr", "table_ptr", "N", "K", "KB",
           "stride_xm", "stride_wn", "stride_om", "bits_mask_stride"]
PATTERNS = {
    "wgmma": r"wgmma\.mma_async",
    "mma_sync": r"\bmma\.sync",
    "cp_async": r"cp\.async\.c[ag]",
    "fma": r"\bfma\.rn\.f32",
}


def compile_config(config: triton.Config, dtype: str, one_segment: bool, arch: int) -> dict:
    fn = triton_masked._segmented_masked_matmul_kernel
    precision = "ieee" if dtype == "fp32" else "tf32"
    consts = {"HAS_BIAS": True, "ONE_SEGMENT": one_segment, "INPUT_PRECISION": precision, **config.kwargs,
              "stride_xk": 1, "stride_wk": 1, "stride_on": 1}
    pointers = {"bits_ptr": "u8", "table_ptr": "i32", **{p: dtype for p in ("x_ptr", "w_ptr", "bias_ptr", "out_ptr")}}
    signature = {
        name: "constexpr" if name in consts else f"*{pointers[name]}" if name in pointers else "i32"
        for name in fn.arg_names
    }
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in ALIGNED}
    kernel = triton.compile(
        ASTSource(fn, signature, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    ptx = kernel.asm["ptx"]
    counts = {name: len(re.findall(pattern, ptx)) for name, pattern in PATTERNS.items()}
    return {"config": config.kwargs, "one_segment": one_segment, "shared": kernel.metadata.shared, **counts}


def compile_apply_bits(dtype: str, arch: int) -> dict:
    """The materialized path's ``W * M`` kernel, specialized as a launch at wav2vec2-base shapes."""
    fn = triton_apply_bits._apply_bits_kernel
    consts = {"BLOCK_N": triton_apply_bits.BLOCK_N, "BLOCK_K": triton_apply_bits.BLOCK_K}
    signature = {"w_ptr": f"*{dtype}", "bits_ptr": "*u8", "out_ptr": f"*{dtype}", "N": "i32", "K": "i32", "KB": "i32"}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in signature}
    kernel = triton.compile(
        ASTSource(fn, {**signature, **dict.fromkeys(consts, "constexpr")}, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
    )
    ptx = kernel.asm["ptx"]
    return {"kernel": "apply_bits", "vector_loads": len(re.findall(r"ld\.global(?:\.\w+)*\.v[24]", ptx))}


def main() -> None:
    arch, dtype = int(sys.argv[1]), sys.argv[2]
    element_size = {"fp16": 2, "bf16": 2, "fp32": 4}[dtype]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else triton_configs.SHARED_MEMORY_FALLBACK
    for config in triton_configs.CONFIGS:
        if triton_configs.shared_memory_estimate(config, element_size) > limit:
            continue  # the autotuner's pruning drops it on such a device
        for one_segment in (True, False):
            print(json.dumps(compile_config(config, dtype, one_segment, arch)), flush=True)
    print(json.dumps(compile_apply_bits(dtype, arch)), flush=True)


if __name__ == "__main__":
    main()
