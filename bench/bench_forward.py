"""(b) Masked vs dense forward of a wav2vec2-base-sized backbone; (c) 8 masks vs 1 mask in a batch of 8.

(b) times the encoder pass both ways (the masked one also looks its mask up and builds its routing plan,
as a request does); (b') adds what ``Router.forward`` does beyond it (head, decoding, results on the
host) for reference.

Run: ``python -m bench.bench_forward [--device cuda] [--seconds 5]``. The backbone is
``Wav2Vec2Model(Wav2Vec2Config())`` (wav2vec2-base shape, ~95M parameters, random weights: no
download). Masks keep 90% of the FFN weights (exact top-k of random scores). Ratios are against
baselines measured in the same run, round by round (median and range of the rounds). Targets: (b) <= 1.03,
(c) <= 1.10. Row (c') runs (c)'s mixed batch as one single-mask call per segment, one after another, for
comparison with the backend's mixed-mask path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from bench.bench_kernels import segments_one_by_one
from bench.timing import (
    cuda_graph_medians,
    interleaved_samples,
    machine_name,
    markdown_table,
    ratio_summary,
    round_ratios,
)
from router_core import Backbone, DirectoryStore, HeadSpec, MaskRegistry, Router, encode_mask, random_mask
from router_core.kernels.backend import select_backend
from router_core.maskable import routing


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kernel", default=None, help="reference | cpu | triton (default: auto)")
    parser.add_argument("--seconds", type=float, default=5.0, help="audio length of each request")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of (b)")
    parser.add_argument("--batch-repeats", type=int, default=5, help="rounds of (c), each 3 batches")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--graph", action="store_true", help="also time (b)'s encoder from CUDA graphs (GPU)")
    parser.add_argument("--materialized-mb", type=float, default=0.0,
                        help="CPU: memory for masked weights kept dense, as S3R_MATERIALIZED_MASK_MB")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    backbone = Backbone.from_model(Wav2Vec2Model(Wav2Vec2Config()), device=args.device, dtype=dtype)
    params = sum(p.numel() for p in backbone.model.parameters())
    backend = select_backend(args.device, args.kernel, materialized_bytes=int(args.materialized_mb * 2**20))
    head = HeadSpec(kind="ctc", vocab=["<pad>", "|", *"abcdefghijklmnopqrstuvwxyz'"])
    with tempfile.TemporaryDirectory() as folder:
        registry = MaskRegistry(DirectoryStore(folder), backbone.spec(), device=args.device, budget_bytes=2**31)
        names = [f"lang{i}" for i in range(args.batch)]
        for i, name in enumerate(names):
            registry.put(encode_mask(random_mask(backbone.spec(), name, head, backbone.default_layer_names(), 0.9, i)))
        router = Router(backbone, registry, backend)
        router.prepare_kernels(args.batch, args.seconds)  # as the service does at start-up (Triton: tuning)
        one_by_one = Router(backbone, registry, segments_one_by_one(backend))  # its mixed calls, mask by mask
        samples = int(args.seconds * 16_000)
        one = [torch.randn(samples)]
        batch = [torch.randn(samples) for _ in names]

        times_b = interleaved_samples(
            {
                "dense": lambda: backbone.encode(one),
                "masked": lambda: _masked_encode(router, one, "lang0"),
                "request": lambda: router.forward(one, ["lang0"]),
            },
            args.repeats,
            device=args.device,
        )
        times_c = interleaved_samples(
            {
                "one mask": lambda: router.forward(batch, ["lang0"] * len(batch)),
                "all different": lambda: router.forward(batch, names),
                "one by one": lambda: one_by_one.forward(batch, names),
            },
            args.batch_repeats,
            warmup=1,
            device=args.device,
        )
        graph_b = _encoder_from_graphs(router, one, args.repeats) if args.graph else None  # last: may fail
    print(
        f"device={args.device} ({machine_name()}) dtype={args.dtype} kernel={backend.name} "
        f"params={params / 1e6:.1f}M threads={torch.get_num_threads()}"
    )
    print(_table(args, len(names), times_b, times_c))
    if graph_b is not None:
        print(graph_b)


def _table(args: argparse.Namespace, n: int, times_b: dict[str, list[float]], times_c: dict[str, list[float]]) -> str:
    """Rows (b), (b') and (c): median baseline and measured seconds, and the ratio of the two in each round
    (median, range)."""
    seconds = f"{args.seconds:g}s"
    rows = [
        (f"(b) 1 x {seconds} forward", "dense (no mask)", times_b, "dense", "masked 0.9 FFN", "masked"),
        (f"(b') 1 x {seconds} request", "dense (no mask)", times_b, "dense", "Router.forward (+ head, decoding)",
         "request"),
        (f"(c) {n} x {seconds} batch", f"{n} x one mask", times_c, "one mask", f"{n} different masks",
         "all different"),
        (f"(c') {n} x {seconds} batch", f"{n} x one mask", times_c, "one mask", f"{n} masks, segments one by one",
         "one by one"),
    ]
    return markdown_table(
        ["benchmark", "baseline", "baseline s", "measured", "measured s", "ratio per round: median (range)"],
        [[what, base, f"{statistics.median(times[base_key]):.3f}", got, f"{statistics.median(times[got_key]):.3f}",
          ratio_summary(round_ratios(times, base_key)[got_key])]
         for what, base, times, base_key, got, got_key in rows],
    )


def _masked_encode(router: Router, waves: list[torch.Tensor], name: str) -> object:
    """The masked forward that (b) compares with the dense one: the mask looked up and its routing plan
    built (as every request does), then the same encoder pass. ``Router.forward`` adds the head and
    decoding on top, which the dense baseline does not run: row (b')."""
    _, plan = router.plan([router.registry.get(name)])
    with routing(plan):
        return router.backbone.encode(waves)


def _encoder_from_graphs(router: Router, one: list[torch.Tensor], repeats: int) -> str:
    """(b) with the host taken out: the encoder pass (no decoding) of one request, dense and under
    ``lang0``'s routing plan, each captured once in a CUDA graph and replayed. What a router serving from
    captured graphs could reach; the eager figures above include every launch's host cost."""
    if router.backbone.device.type != "cuda":
        return "(b) from CUDA graphs: needs a CUDA device"
    waves = [one[0].to(router.backbone.device)]  # on the device already: no copy inside the capture
    _, plan = router.plan([router.registry.get("lang0")])

    def masked() -> object:  # the plan built once, outside: a captured graph replays device work only
        with routing(plan):
            return router.backbone.encode(waves)

    try:
        times = cuda_graph_medians({"dense": lambda: router.backbone.encode(waves), "masked": masked}, repeats, 1)
    except Exception as exc:  # noqa: BLE001 - a report line, not a failure of the eager benchmarks above
        return f"(b) from CUDA graphs: could not capture the encoder ({type(exc).__name__}: {exc})"
    dense_ms, masked_ms = times["dense"] * 1e3, times["masked"] * 1e3
    return (
        f"(b) from CUDA graphs, encoder only: dense {dense_ms:.3f} ms, masked {masked_ms:.3f} ms, "
        f"ratio {masked_ms / dense_ms:.3f}"
    )


if __name__ == "__main__":
    main()
