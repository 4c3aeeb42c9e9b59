"""Every fast kernel against the plain-torch reference at awkward shapes and masks."""

import pytest
import torch

from router_core.kernels import cpu as cpu_kernels
from router_core.kernels.backend import REFERENCE, select_backend
from router_core.kernels.bits import pack_bits, unpack_bits
from router_core.kernels.cpu import masked_weight_cpu
from router_core.kernels.reference import (
    DENSE_SEGMENT,
    Segments,
    masked_linear_reference,
    masked_weight_reference,
)

SHAPES = [(1, 1, 1), (5, 17, 8), (37, 45, 29), (50, 33, 70), (19, 64, 65)]  # (rows M, out N, in K)
MASKS = ["random", "all_keep", "all_drop"]


def _keep(kind, n, k, seed=0):
    if kind == "all_keep":
        return torch.ones(n, k, dtype=torch.bool)
    if kind == "all_drop":
        return torch.zeros(n, k, dtype=torch.bool)
    return torch.rand(n, k, generator=torch.Generator().manual_seed(seed)) > 0.3


def _backends():
    names = ["reference", "cpu", "triton"]
    return [pytest.param(n, id=n) for n in names]


def _backend(name):
    device = "cuda" if name == "triton" and torch.cuda.is_available() else "cpu"
    return select_backend(device, name), torch.device(device)


def test_reference_is_x_times_masked_weight_transposed():
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(6, 13, generator=gen), torch.randn(11, 13, generator=gen), torch.randn(11, generator=gen)
    keep = _keep("random", 11, 13)
    expected = x.double() @ (w.double() * keep.double()).T + b.double()
    assert torch.allclose(masked_linear_reference(x, w, b, pack_bits(keep)).double(), expected, atol=1e-5)


@pytest.mark.parametrize("backend_name", _backends())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_masked_linear_matches_reference(backend_name, shape, mask_kind, with_bias):
    backend, device = _backend(backend_name)
    m, n, k = shape
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if with_bias else None
    bits = pack_bits(_keep(mask_kind, n, k))
    expected = masked_linear_reference(x, w, b, bits)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    got = backend.masked_linear(to(x), to(w), to(b), to(bits)).cpu()
    assert got.shape == (m, n)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    if mask_kind == "all_drop":
        assert torch.allclose(got, (b if b is not None else torch.zeros(n)).expand(m, n), atol=1e-6)


@pytest.mark.parametrize("backend_name", _backends())
def test_segmented_mixed_masks_match_reference(backend_name):
    backend, device = _backend(backend_name)
    n, k = 45, 29
    gen = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(41, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    stack = [
        pack_bits(_keep(kind, n, k, seed=i)) for i, kind in enumerate(["random", "all_keep", "all_drop", "random"])
    ]
    # uneven segments, an empty one, a dense (unmasked) one and a mask used by two segments
    segments = Segments((0, 3, 3, 20, 21, 35, 41), (3, 0, 1, DENSE_SEGMENT, 2, 3))
    expected = REFERENCE.segmented_masked_linear(x, w, b, stack, segments)
    for start, end, mask_id in segments.spans():  # the reference itself, segment by segment
        weight = w if mask_id == DENSE_SEGMENT else w * unpack_bits(stack[mask_id], k)
        assert torch.allclose(expected[start:end], x[start:end] @ weight.T + b, atol=1e-5)
    got = backend.segmented_masked_linear(
        x.to(device), w.to(device), b.to(device), [s.to(device) for s in stack], segments
    ).cpu()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_cpu_kernel_half_precision_matches_reference():
    backend = select_backend("cpu", "cpu")
    gen = torch.Generator().manual_seed(4)
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        w = torch.randn(33, 70, generator=gen).to(dtype)
        bits = pack_bits(_keep("random", 33, 70))
        assert torch.equal(masked_weight_cpu(w, bits), masked_weight_reference(w, bits))
        x = torch.randn(7, 70, generator=gen).to(dtype)
        assert torch.allclose(
            backend.masked_linear(x, w, None, bits).float(),
            masked_linear_reference(x, w, None, bits).float(),
            atol=2e-2,
            rtol=2e-2,
        )


@pytest.mark.parametrize("shape", SHAPES + [(0, 9, 12)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", MASKS)
def test_both_cpu_schedules_match_reference(shape, mask_kind):
    """The tiled schedule at block sizes that do and don't divide N (1 row, 7 rows, more rows than N) and the
    full pass, each against the reference."""
    m, n, k = shape
    gen = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    bits = pack_bits(_keep(mask_kind, n, k, seed=3))
    expected_b = masked_linear_reference(x, w, b, bits)
    for bias in (b, None):
        expected = masked_linear_reference(x, w, bias, bits)
        for block_rows in (1, 7, 300):
            got = cpu_kernels.masked_linear_tiled(x, w, bias, bits, block_rows)
            assert got.shape == (m, n) and torch.allclose(got, expected, atol=1e-4, rtol=1e-4), block_rows
        assert torch.allclose(cpu_kernels.masked_linear_full_pass(x, w, bias, bits), expected, atol=1e-4, rtol=1e-4)
    with torch.inference_mode():  # as the router runs it: inference tensors, blocks on several threads
        x, w, b, bits = x.clone(), w.clone(), b.clone(), bits.clone()
        assert torch.allclose(cpu_kernels.masked_linear_tiled(x, w, b, bits, 2), expected_b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_mixed_batch_in_one_parallel_region_matches_reference(dtype, monkeypatch):
    """The one-region mixed-mask kernel at block sizes that do and don't divide N, over uneven segments (an
    empty one, a dense one, one mask in two places, all-keep, all-drop), with and without bias, some masks
    kept dense and some masked block by block, under inference mode (as the router runs it)."""
    from router_core.kernels.materialized import MaterializedWeights

    n, k = 45, 29
    gen = torch.Generator().manual_seed(9)
    x, w, b = (torch.randn(*shape, generator=gen).to(dtype) for shape in ((43, k), (n, k), (n,)))
    kinds = ["random", "all_keep", "all_drop", "random", "random"]
    stack = [pack_bits(_keep(kind, n, k, seed=i)) for i, kind in enumerate(kinds)]
    segments = Segments((0, 3, 3, 20, 21, 35, 40, 43), (3, 0, 1, DENSE_SEGMENT, 2, 3, 4))
    ext = cpu_kernels.load_extension()
    spans = segments.spans()
    tolerance = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 2e-2}
    with torch.inference_mode():
        for bias in (b, None):
            expected = REFERENCE.segmented_masked_linear(x.float(), w.float(), _float(bias), stack, segments)
            for masked_rows, dense_rows in ((1, 1), (7, 11), (300, 45)):
                kept = {3: masked_weight_reference(w, stack[3])}  # mask 3 as a kept-dense copy
                weights = [kept.get(m, w) for _, _, m in spans]
                bits = [None if m in kept or m == DENSE_SEGMENT else stack[m] for _, _, m in spans]
                got = ext.segmented_linear(x, bias, [a for a, _, _ in spans], [e for _, e, _ in spans], weights, bits,
                                           masked_rows, dense_rows)
                assert got.shape == (43, n) and got.dtype == dtype
                assert torch.allclose(got.float(), expected, **tolerance), (masked_rows, dense_rows)
            for min_rows, regions in ((1, 1), (128, 0)):  # 43 rows in 6 segments: one region only below 7
                monkeypatch.setattr(cpu_kernels, "_MIN_SEGMENT_ROWS", min_rows)
                calls = []
                monkeypatch.setattr(ext, "segmented_linear", _counted(ext.segmented_linear, calls))
                budget = MaterializedWeights(budget_bytes=2 * n * k * dtype.itemsize)  # room for masks 3 and 1
                got = cpu_kernels.segmented_masked_linear_cpu(x, w, bias, stack, segments, materialized=budget)
                assert torch.allclose(got.float(), expected, **tolerance) and len(calls) == regions
                assert budget.bytes == 2 * n * k * dtype.itemsize  # 3 and 1 kept dense; 2 and 4 masked
                monkeypatch.undo()


def _counted(fn, calls):
    def counted(*args):
        calls.append(args)
        return fn(*args)

    return counted


def _float(t):
    return None if t is None else t.float()


def test_cpu_one_region_refuses_segments_that_do_not_cover_the_rows():
    ext = cpu_kernels.load_extension()
    x, w = torch.randn(10, 16), torch.randn(9, 16)
    for starts, ends in (([0, 5], [5, 9]), ([0, 4], [5, 10]), ([1], [10]), ([0, 6], [6, 5])):
        with pytest.raises(RuntimeError, match="cover the rows"):
            ext.segmented_linear(x, None, starts, ends, [w] * len(starts), [None] * len(starts), 4, 4)
    with pytest.raises(RuntimeError, match="bits must be uint8"):
        ext.segmented_linear(x, None, [0], [10], [w], [torch.zeros(9, 1, dtype=torch.uint8)], 4, 4)


def test_one_region_tasks_keep_every_thread_busy_and_masked_blocks_near_l2():
    """At least 2 tasks per thread in all; masked blocks within ~2.5 MB; too thin a cut (many threads, few
    segments of a narrow layer) hands the call back to the segment-by-segment path."""
    for n, k, segments, threads in ((3072, 768, 8, 2), (768, 3072, 2, 2), (3072, 768, 3, 16), (1000, 200, 5, 4)):
        masked, dense = cpu_kernels.segment_blocks(n, k, 4, segments, threads)
        tasks = segments * -(-n // dense)
        assert tasks >= 2 * threads and 2 * dense <= n + 1
        assert masked <= dense and (masked * k * 4 <= (5 << 19) or masked == 64)
    assert cpu_kernels.segment_blocks(768, 3072, 4, 2, 16) is None


def test_cpu_backend_runs_the_schedule_timed_fastest_per_shape_and_row_bucket(tmp_path, monkeypatch):
    """Start-up times the schedules per layer shape and row bucket (a stand-in timer here decides
    which is "fastest"), each call then runs the chosen one, every choice gives the reference's answer,
    and a second start on the same machine reads the choices instead of timing again."""
    from router_core.kernels.cpu_schedule import SCHEDULES, CpuSchedule

    fastest = {64: "reference", 256: "split:1", 1024: "tiled:64"}  # by row bucket
    timed = []

    def timer(thunk):  # the stand-in: the chosen schedule of the thunk's bucket is "fast"
        schedule, x = thunk.args[0], thunk.args[1]
        timed.append((schedule, x.shape[0]))
        bucket = next(b for b in fastest if x.shape[0] <= b)
        return 1.0 if schedule == fastest[bucket] else 2.0

    calls = []
    for name in ("masked_linear_tiled", "masked_linear_full_pass", "masked_linear_reference"):
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    backend = select_backend("cpu", "cpu", cache_dir=tmp_path)
    backend.tuner.timer = timer
    backend.prepare([(21, 40), (40, 21)], torch.float32, torch.device("cpu"), 300)
    assert sorted(set(timed)) == sorted((s, r) for s in SCHEDULES for r in (64, 256, 300))
    gen = torch.Generator().manual_seed(6)
    w, bits = torch.randn(21, 40, generator=gen), pack_bits(_keep("random", 21, 40))
    for rows in (10, 200, 300):
        x = torch.randn(rows, 40, generator=gen)
        calls.clear()
        assert torch.allclose(backend.masked_linear(x, w, None, bits), masked_linear_reference(x, w, None, bits),
                              atol=1e-5)
        family = fastest[next(b for b in fastest if rows <= b)].partition(":")[0]
        assert calls[0] == "masked_linear_" + {"split": "tiled"}.get(family, family)
    again = CpuSchedule(tmp_path / "cpu-schedules.json", timer=lambda thunk: pytest.fail("timed again"))
    again.tune([(21, 40), (40, 21)], torch.float32, torch.device("cpu"), 300, cpu_kernels.run_schedule)
    assert again.choices == backend.tuner.choices


def test_split_schedules_cut_w_into_equal_blocks_per_thread(monkeypatch):
    blocks = []
    real = cpu_kernels.masked_linear_tiled
    monkeypatch.setattr(cpu_kernels, "masked_linear_tiled", lambda *a: blocks.append(a[-1]) or real(*a))
    gen = torch.Generator().manual_seed(11)
    x, w = torch.randn(9, 40, generator=gen), torch.randn(45, 40, generator=gen)
    bits = pack_bits(_keep("random", 45, 40))
    threads = torch.get_num_threads()
    for parts in (1, 2, 3):
        got = cpu_kernels.run_schedule(f"split:{parts}", x, w, None, bits)
        assert torch.allclose(got, masked_linear_reference(x, w, None, bits), atol=1e-5)
        assert blocks[-1] == -(-45 // (parts * threads))


def test_untimed_cpu_schedule_follows_the_size_of_x_and_blocks_stay_near_two_megabytes():
    from router_core.kernels.cpu_schedule import TILED_MAX_X_BYTES, CpuSchedule

    untimed = CpuSchedule()
    assert untimed.choose(TILED_MAX_X_BYTES // (4 * 768), 3072, 768, torch.float32) == "tiled"
    assert untimed.choose(TILED_MAX_X_BYTES // (4 * 768) + 1, 3072, 768, torch.float32) == "full_pass"
    assert cpu_kernels.block_rows_for(768, 4) == 256 and cpu_kernels.block_rows_for(3072, 4) == 128
    assert cpu_kernels.block_rows_for(3072, 2) == 256 and cpu_kernels.block_rows_for(1 << 20, 4) == 16


def test_a_damaged_schedule_cache_is_timed_again(tmp_path):
    from router_core.kernels.cpu_schedule import CpuSchedule

    (tmp_path / "cache.json").write_text("{not json")
    schedule = CpuSchedule(tmp_path / "cache.json", timer=lambda thunk: 1.0)
    schedule.tune([(8, 16)], torch.float32, torch.device("cpu"), 64, cpu_kernels.run_schedule)
    assert schedule.choices and CpuSchedule(tmp_path / "cache.json").choices == schedule.choices


def _triton_configs():
    from router_core.kernels import triton_configs

    configs = [*triton_configs.CONFIGS, triton_configs.INTERPRETER_CONFIG]
    return [pytest.param(c, id=f"{i}:" + "-".join(map(str, c.kwargs.values()))) for i, c in enumerate(configs)]


@pytest.mark.slow
@pytest.mark.parametrize("config", _triton_configs())
def test_every_tuned_triton_config_matches_reference(config):
    """The autotuner may pick any config on a GPU, so each is checked here: K spanning several K-steps and
    not a multiple of 8, N not a multiple of the tile, segment boundaries inside row tiles (an empty
    segment, a dense one, a mask used twice, all-keep and all-drop masks), and one-segment calls. On a GPU
    in fp16, as GPUs serve (each float32 compile takes seconds), and only the configs that fit its shared
    memory (the autotuner never launches the others); under the interpreter in float32."""
    from router_core.kernels.triton_configs import shared_memory_estimate
    from router_core.kernels.triton_masked import segmented_masked_linear_triton
    from router_core.kernels.triton_tuning import check_close_to_reference

    on_gpu = torch.cuda.is_available()
    device, dtype = (torch.device("cuda"), torch.float16) if on_gpu else (torch.device("cpu"), torch.float32)
    if on_gpu:
        limit = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
        if shared_memory_estimate(config, 2) > limit:
            pytest.skip(f"needs more shared memory than this GPU's {limit} bytes")
    m, n, k = 150, 70, 203
    gen = torch.Generator().manual_seed(8)
    x, w, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    x, w, b = x.to(dtype).float(), w.to(dtype).float(), b.to(dtype).float()  # values the device dtype holds
    kinds = ["random", "all_keep", "all_drop", "random"]
    stack = [pack_bits(_keep(kind, n, k, seed=i)) for i, kind in enumerate(kinds)]
    cases = [  # (segments, with bias): each one-segment flag with and without bias, one compile each
        (Segments((0, 3, 3, 20, 21, 35, 100, 150), (3, 0, 1, DENSE_SEGMENT, 2, 3, 0)), True),
        (Segments((0, 3, 3, 20, 21, 35, 100, 150), (3, 0, 1, DENSE_SEGMENT, 2, 3, 0)), False),
        (Segments((0, m), (2,)), True),
        (Segments((0, m), (DENSE_SEGMENT,)), False),
        (Segments((0, 17), (0,)), True),
    ]
    to = lambda t: t.to(device, dtype)  # noqa: E731
    for segments, with_bias in cases:
        rows, bias = segments.total_rows, b if with_bias else None
        expected = REFERENCE.segmented_masked_linear(x[:rows], w, bias, stack, segments)
        got = segmented_masked_linear_triton(
            to(x[:rows]), to(w), None if bias is None else to(bias), [s.to(device) for s in stack], segments,
            config=config,
        ).cpu()
        if on_gpu:
            check_close_to_reference(got, expected, f"{segments}, bias {with_bias}")
        else:
            assert torch.allclose(got, expected, atol=1e-3, rtol=1e-3), (segments, with_bias)


def test_triton_tuning_buckets_and_pruning():
    from router_core.kernels.buckets import row_bucket
    from router_core.kernels.triton_configs import (
        CONFIGS,
        SHARED_MEMORY_FALLBACK,
        prune_configs,
        shared_memory_estimate,
    )

    assert [row_bucket(r) for r in (1, 64, 65, 250, 1000, 4096, 4097, 16384, 10**6)] == [
        64, 64, 256, 256, 1024, 4096, 16384, 16384, 65536,
    ]
    half, single = torch.empty(1, dtype=torch.float16), torch.empty(1)  # on the CPU: an H100's limit applies
    short = prune_configs(CONFIGS, {"m_bucket": 64, "x_ptr": half})
    assert short and all(c.kwargs["BLOCK_M"] <= 64 for c in short) and len(short) < len(CONFIGS)
    assert prune_configs(CONFIGS, {"m_bucket": 65536, "x_ptr": half}) == CONFIGS  # every half-precision pipeline fits
    fp32 = prune_configs(CONFIGS, {"m_bucket": 65536, "x_ptr": single})
    dropped = [c for c in CONFIGS if c not in fp32]
    assert dropped and all(shared_memory_estimate(c, 4) > SHARED_MEMORY_FALLBACK for c in dropped)
    assert CONFIGS[0].kwargs == {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "BITS_BY_BYTE": 0}  # the old fixed tiles


def test_start_up_tuning_covers_every_bucket_up_to_the_largest_batch():
    from router_core.kernels.buckets import row_bucket
    from router_core.kernels.triton_tuning import tuning_rows

    assert tuning_rows(10) == [10]
    assert tuning_rows(64) == [64]
    assert tuning_rows(300) == [64, 256, 300]
    assert tuning_rows(48_008) == [64, 256, 1024, 4096, 16384, 48_008]
    assert tuning_rows(70_000) == [64, 256, 1024, 4096, 16384, 65536]  # the last bucket holds every larger count
    for max_rows in (10, 300, 5000, 48_008):  # every count a batch can have falls in a tuned bucket
        tuned = {row_bucket(r) for r in tuning_rows(max_rows)}
        assert all(row_bucket(r) in tuned for r in range(1, max_rows + 1, 7))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_large_half_on_gpu(dtype):
    backend = select_backend("cuda", "triton")
    x = torch.randn(250, 768, device="cuda", dtype=dtype)
    w = torch.randn(3071, 768, device="cuda", dtype=dtype) * 0.05
    bits = pack_bits(_keep("random", 3071, 768)).cuda()
    expected = masked_linear_reference(x.float(), w.float(), None, bits)
    for _ in range(2):  # the autotuned first call, then the direct launch with the remembered config
        got = backend.masked_linear(x, w, None, bits).float()
        assert torch.allclose(got, expected, atol=5e-2, rtol=2e-2)
    assert len(backend.tuner.choices) == 1  # one key for this shape and dtype, tuned once, held by the backend


def test_triton_multiplies_float32_as_f_linear_does():
    """F.linear on CUDA multiplies float32 in IEEE float32 unless torch allows TF32; the kernel follows it
    (on an H100, TF32 tiles missed the float32 reference by ~1e-3)."""
    from router_core.kernels.triton_masked import input_precision

    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert input_precision(torch.float32) == "ieee"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert input_precision(torch.float32) == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert input_precision(torch.float16) == input_precision(torch.bfloat16) == "tf32"  # tensor cores, f32 accum


def test_start_up_check_refuses_a_kernel_that_misses_the_reference():
    from router_core.errors import KernelUnavailableError
    from router_core.kernels.triton_tuning import check_close_to_reference

    gen = torch.Generator().manual_seed(9)
    expected = torch.randn(40, 30, generator=gen)
    check_close_to_reference(expected + 1e-6 * torch.randn(40, 30, generator=gen), expected, "ok")
    check_close_to_reference((expected + 1e-3).half(), expected, "half precision has a looser bound")
    big = torch.randn(9000, 130, generator=gen)
    check_close_to_reference(big.clone(), big, "exact")
    for row in (3, 8999):  # one wrong element in 1.2M (first and last row chunk), as a bad tile edge gives
        wrong = big.clone()
        wrong[row, 4] += 0.2
        with pytest.raises(KernelUnavailableError):
            check_close_to_reference(wrong, big, "9000x130")
    wrong = expected.clone()
    wrong[3, 4] += 1.0
    for bad in (wrong, expected + float("nan"), expected.half() * 1.1):
        with pytest.raises(KernelUnavailableError, match="S3R_KERNEL=reference"):
            check_close_to_reference(bad, expected, "40x30")


def test_start_up_tuning_runs_every_bucket_and_refuses_a_wrong_kernel(monkeypatch):
    from router_core.errors import KernelUnavailableError
    from router_core.kernels import triton_masked
    from router_core.kernels.triton_tuning import tune_and_check

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    launched = []
    real = triton_masked.segmented_masked_linear_triton
    tuner = triton_masked.TritonTuner()

    def recording(x, weight, bias, stack, segments, **kw):
        assert kw["tuner"] is tuner
        launched.append((x.shape[0], *weight.shape, len(segments.mask_ids)))
        return real(x, weight, bias, stack, segments, **kw)

    monkeypatch.setattr(triton_masked, "segmented_masked_linear_triton", recording)
    tune_and_check([(45, 29), (29, 45), (45, 29)], torch.float32, device, 70, tuner)
    # each shape once, each bucket, a one-mask call (tunes the key) then a two-mask call (the segmented variant)
    assert launched == [(r, *shape, s) for shape in [(29, 45), (45, 29)] for r in (64, 70) for s in (1, 2)]

    def off_by_a_little(only_mixed):
        def launch(x, weight, bias, stack, segments, **kw):
            out = real(x, weight, bias, stack, segments, **kw)
            if len(segments.mask_ids) > 1 or not only_mixed:
                out[-1, -1] += 0.5  # the last row tile's last column
            return out

        return launch

    for only_mixed, match in ((False, r"64x29->45, one mask"), (True, r"64x29->45, two masks")):
        monkeypatch.setattr(triton_masked, "segmented_masked_linear_triton", off_by_a_little(only_mixed))
        with pytest.raises(KernelUnavailableError, match=match):
            tune_and_check([(45, 29)], torch.float32, device, 70, tuner)


@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 45, 29), (19, 300, 521)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", MASKS)
def test_materialized_path_matches_reference(shape, mask_kind):
    """W * M built by the Triton apply-bits kernel (tiles of 16 x 256 that N and K do not fill), then F.linear."""
    from router_core.kernels.triton_apply_bits import masked_linear_materialized, masked_weight_triton

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m, n, k = shape
    gen = torch.Generator().manual_seed(11)
    x, w, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    bits = pack_bits(_keep(mask_kind, n, k, seed=4))
    out = torch.full((n, k), float("nan"), device=device)
    assert torch.equal(masked_weight_triton(w.to(device), bits.to(device), out).cpu(), masked_weight_reference(w, bits))
    got = masked_linear_materialized(x.to(device), w.to(device), b.to(device), bits.to(device)).cpu()
    assert torch.allclose(got, masked_linear_reference(x, w, b, bits), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "one_faster,mixed_faster",
    [("materialized", "tiles"), ("tiles", "materialized"), ("tiles", "tiles")],
    ids=["one-materialized", "mixed-materialized", "tiles"],
)
def test_tuner_keeps_the_faster_path_per_kind_of_call(monkeypatch, one_faster, mixed_faster):
    """The dispatch as on a GPU (autotuner and timer stood in for: no GPU here): the first one-mask call
    and the first mixed-mask call of a key each time the tiles against the materialized path on their own
    data; every later call of that kind takes the faster, and every path gives the reference's answer."""
    from router_core.kernels import triton_configs, triton_masked
    from router_core.kernels.triton_tuning import tune_and_check

    class Autotuner:  # the interpreter config stands in for the autotuner's pick
        best_config = triton_configs.INTERPRETER_CONFIG

        def __getitem__(self, grid):
            launch = triton_masked._launch_kwargs(self.best_config)
            return lambda *args, **flags: triton_masked._segmented_masked_matmul_kernel[grid(launch)](
                *args, **flags, **launch
            )

    timed = {"tiles": [1.0, 2.0], "materialized": [2.0, 1.0]}  # (tiles ms, materialized ms) when that wins
    timings = iter(timed[one_faster] + timed[mixed_faster])
    materialized = []

    def spy(x, weight, bias, stack, segments):
        materialized.append(len(segments.mask_ids))
        return real_materialized(x, weight, bias, stack, segments)

    real_materialized = triton_masked.segmented_linear_materialized
    tuner = triton_masked.TritonTuner(Autotuner(), timer=lambda fn: next(timings), interpret=False)
    monkeypatch.setattr(triton_masked, "segmented_linear_materialized", spy)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n, k = 45, 29
    gen = torch.Generator().manual_seed(12)
    x, w, b = torch.randn(41, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    stack = [pack_bits(_keep("random", n, k, seed=i)) for i in range(2)]
    on = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    mixed = Segments((0, 20, 41), (1, 0))
    linear = triton_masked.segmented_masked_linear_triton
    for _ in range(2):  # the first round chooses, the second follows the choices
        one = linear(*on(x, w, b), on(stack[1]), Segments((0, 41), (0,)), tuner=tuner).cpu()
        assert torch.allclose(one, masked_linear_reference(x, w, b, stack[1]), atol=1e-4, rtol=1e-4)
        got = linear(*on(x, w, b), on(*stack), mixed, tuner=tuner).cpu()
        assert torch.allclose(got, REFERENCE.segmented_masked_linear(x, w, b, stack, mixed), atol=1e-4, rtol=1e-4)
    tuned = tuner.tuned_for(41, n, k, torch.float32)
    assert tuned is not None and len(tuner.choices) == 1  # one key: tuned once
    assert {kind: c.materialize for kind, c in tuned.paths.items()} == {
        "one": one_faster == "materialized",
        "mixed": mixed_faster == "materialized",
    }
    served = [1] * (one_faster == "materialized") + [2] * (mixed_faster == "materialized")
    assert materialized == served * 2  # both rounds took the chosen paths
    dense = linear(*on(x, w, b), on(*stack), Segments((0, 41), (-1,)), tuner=tuner).cpu()
    assert torch.allclose(dense, x @ w.T + b, atol=1e-4)
    tuner.choices.clear()  # start-up: both kinds chosen and checked per bucket
    timings = iter(timed[one_faster] + timed[mixed_faster])
    del materialized[:]
    tune_and_check([(n, k)], torch.float32, device, 41, tuner)
    assert materialized == served


@pytest.mark.parametrize("with_bias", [True, False])
def test_materialized_mixed_batch_matches_reference(with_bias):
    """Segment by segment through one reused W*M buffer: uneven and empty segments, a dense one, a mask
    used by two segments."""
    from router_core.kernels.triton_apply_bits import segmented_linear_materialized

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n, k = 45, 29
    gen = torch.Generator().manual_seed(13)
    x, w, b = torch.randn(41, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    bias = b if with_bias else None
    stack = [
        pack_bits(_keep(kind, n, k, seed=i)) for i, kind in enumerate(["random", "all_keep", "all_drop", "random"])
    ]
    segments = Segments((0, 3, 3, 20, 21, 35, 41), (3, 0, 1, DENSE_SEGMENT, 2, 3))
    expected = REFERENCE.segmented_masked_linear(x, w, bias, stack, segments)
    got = segmented_linear_materialized(
        x.to(device), w.to(device), None if bias is None else bias.to(device),
        torch.stack(stack).to(device), segments,
    ).cpu()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("masks,rows_each", [(3, 7), (10, 5), (8, 1)], ids=["3x7", "10x5-two-groups", "8x1"])
def test_materialized_equal_segments_take_one_batched_gemm_per_group(with_bias, masks, rows_each):
    """Segments that are the stack's masks in order and of one length (how the router lays out a batch
    whose masks carry equally many items): one apply-bits launch and one bmm per group of GROUP masks,
    more masks than one group included; the answer is the reference's."""
    from router_core.kernels import triton_apply_bits

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n, k = 45, 29
    gen = torch.Generator().manual_seed(17)
    rows = masks * rows_each
    x, w, b = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    bias = b if with_bias else None
    kinds = ["random", "all_keep", "all_drop"]
    stack = [pack_bits(_keep(kinds[i % 3], n, k, seed=i)) for i in range(masks)]
    segments = Segments(tuple(range(0, rows + 1, rows_each)), tuple(range(masks)))
    groups = [[s for s in segments.spans() if g <= s[2] < g + triton_apply_bits.GROUP]
              for g in range(0, masks, triton_apply_bits.GROUP)]
    assert all(triton_apply_bits._one_batched_gemm(group, i * triton_apply_bits.GROUP)
               for i, group in enumerate(groups))
    expected = REFERENCE.segmented_masked_linear(x, w, bias, stack, segments)
    got = triton_apply_bits.segmented_linear_materialized(
        x.to(device), w.to(device), None if bias is None else bias.to(device), torch.stack(stack).to(device), segments
    ).cpu()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("launcher", ["triton", "cpu", "materialized"])
def test_launchers_refuse_bits_that_do_not_pack_the_weight(launcher):
    """Each launcher entry checks the packed mask's dtype, shape and row contiguity before launching, so a
    wrong mask fails with a message instead of reading out of bounds."""
    from router_core.kernels import cpu, triton_apply_bits, triton_masked

    n, k = 45, 29
    device = "cuda" if launcher != "cpu" and torch.cuda.is_available() else "cpu"  # Triton runs CPU tensors
    weight = torch.randn(n, k, device=device)  # only in its interpreter
    good = pack_bits(_keep("random", n, k)).to(device)  # [45, 4]
    wrong = {"dtype": good.to(torch.int16), "shape": good[:, :3].contiguous(), "stride": good.t().contiguous().t()}
    x = torch.randn(5, k, device=device)
    call = {
        "triton": lambda bits: triton_masked.masked_linear_triton(x, weight, None, bits, triton_masked.TritonTuner()),
        "cpu": lambda bits: cpu.masked_linear_tiled(x, weight, None, bits, 16),
        "materialized": lambda bits: triton_apply_bits.masked_weight_triton(weight, bits, torch.empty_like(weight)),
    }[launcher]
    call(good)
    for what, bits in wrong.items():
        with pytest.raises(AssertionError):
            call(bits)
            pytest.fail(f"bits with the wrong {what} were accepted")


def test_masked_weights_kept_dense_give_the_reference_answer_build_once_and_leave_with_their_mask():
    import gc

    from router_core.kernels.materialized import MaterializedWeights

    n, k = 21, 40
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(n, k, generator=gen) for _ in range(3)]
    bits = [pack_bits(_keep("random", n, k, seed=i)) for i in range(3)]
    x = torch.randn(5, k, generator=gen)
    kept = MaterializedWeights(budget_bytes=2 * n * k * 4, min_idle_s=0.0)  # two layers' copies; plain LRU
    built = []

    def build(w, b):
        built.append(id(b))
        return masked_weight_reference(w, b)

    for _ in range(2):
        for w, b in zip(weights[:2], bits[:2], strict=True):
            got = cpu_kernels.masked_linear_cpu(x, w, None, b, materialized=kept)
            assert torch.allclose(got, masked_linear_reference(x, w, None, b), atol=1e-5)
            assert torch.equal(kept.get(w, b, build), masked_weight_reference(w, b))
    assert built == [] and kept.bytes == 2 * n * k * 4  # both built by the kernel's own pass, once
    kept.get(weights[2], bits[2], build)  # a third evicts the least recently used
    assert built == [id(bits[2])] and kept.bytes == 2 * n * k * 4
    del bits[2]
    gc.collect()
    assert kept.bytes == n * k * 4  # a mask's copy leaves with its bits
    assert MaterializedWeights(budget_bytes=10).get(weights[0], bits[0], build) is None  # over budget


def test_kept_dense_copies_in_use_are_not_pushed_out_by_a_new_mask_until_they_idle():
    """No thrashing: with the budget full of copies in use, a third mask runs the masked schedule (still the
    reference answer) instead of rebuilding copies on every call; once a copy idles, it makes room."""
    from router_core.kernels.materialized import MaterializedWeights

    n, k = 19, 33
    gen = torch.Generator().manual_seed(8)
    weight = torch.randn(n, k, generator=gen)
    bits = [pack_bits(_keep("random", n, k, seed=i)) for i in range(3)]
    x = torch.randn(4, k, generator=gen)
    now = [100.0]
    kept = MaterializedWeights(budget_bytes=2 * n * k * 4, min_idle_s=10.0, clock=lambda: now[0])
    for b in bits[:2]:
        assert kept.get(weight, b, masked_weight_reference) is not None
    now[0] += 9.0
    assert kept.get(weight, bits[1], masked_weight_reference) is not None  # bits[1] in use at t = 109
    got = cpu_kernels.masked_linear_cpu(x, weight, None, bits[2], materialized=kept)
    assert torch.allclose(got, masked_linear_reference(x, weight, None, bits[2]), atol=1e-5)
    assert kept.get(weight, bits[2], masked_weight_reference) is None and kept.bytes == 2 * n * k * 4
    now[0] += 1.0  # bits[0] unused for 10 s: it makes room; bits[1] (used 1 s ago) stays
    assert torch.equal(kept.get(weight, bits[2], masked_weight_reference), masked_weight_reference(weight, bits[2]))
    assert kept.get(weight, bits[1], lambda *_: pytest.fail("bits[1] was rebuilt")) is not None
    assert kept.get(weight, bits[0], masked_weight_reference) is None  # now it must wait its turn
