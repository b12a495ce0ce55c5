"""Inference latency per backend x variant x input size, PyTorch eager as the baseline column.

    python bench/backend_latency.py [--quick] [--variants dfanet_a dfanet_b]
        [--sizes 360x480 512x1024] [--backends torch onnxruntime] [--batch4] [--threads 2]
        [--json outputs/bench/backend_latency.json]

What is timed: one backend ``infer`` call on a preprocessed batch (network + output head: argmax
and confidence at the head's resolution, the default fast head unless ``--head exact``;
host<->device copies included for CPU inputs), i.e. the Segmenter's "inference" stage. The ONNX
Runtime sessions run the RuntimeOptions defaults (ORT_ENABLE_ALL, spinning off, plain ``run``).
Warm-up runs are excluded. The backends of one case run round-robin (one call each, repeated),
so a busy neighbour slows them alike and the ratios stay meaningful. Untrained weights: speed does
not depend on their values. Each configuration is a :class:`RuntimeOptions` built into a backend by
``make_backend``, the factory the Segmenter uses, from a checkpoint of the untrained model saved
in the work folder. Not a test: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dfanet_core.checkpoint import default_meta, save_checkpoint
from dfanet_core.deploy.backends import Backend, make_backend
from dfanet_core.deploy.options import RuntimeOptions, TensorRTOptions
from dfanet_core.files import atomic_write_json
from dfanet_core.models import create_model
from dfanet_core.reports import LatencySummary, machine_description, markdown_table, parse_size

LOG = logging.getLogger("bench.backend_latency")

VARIANTS = ("dfanet_a", "dfanet_b")
SIZES = ((360, 480), (512, 1024), (1024, 1024), (1024, 2048))
QUICK_SIZES = ((360, 480),)
BASELINE = "torch"
#: Bench configurations: name -> runtime options (sizes, threads and caches added per case).
#: CUDA and TensorRT ones are skipped where they cannot run.
CONFIGS: dict[str, RuntimeOptions] = {
    "torch": RuntimeOptions(backend="torch", precision="fp32", device="cpu"),
    "onnxruntime": RuntimeOptions(backend="onnxruntime", precision="fp32"),
    "torch-cuda": RuntimeOptions(backend="torch", precision="fp32", device="cuda"),
    "torch-fp16": RuntimeOptions(backend="torch", precision="fp16", device="cuda"),
    "torch-fp16-graphs": RuntimeOptions(
        backend="torch", precision="fp16", device="cuda", cuda_graphs=True
    ),
    "torch-fp16-compile": RuntimeOptions(
        backend="torch", precision="fp16", device="cuda", compile_mode="reduce-overhead"
    ),
    "tensorrt-fp16": RuntimeOptions(backend="tensorrt", precision="fp16"),
    "tensorrt-fp32": RuntimeOptions(backend="tensorrt", precision="fp32"),
}


@dataclass
class CaseResult:
    config: str
    backend: str
    precision: str
    device: str
    variant: str
    height: int
    width: int
    batch: int
    iterations: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    fps: float
    speedup_vs_baseline: float | None = None
    #: 1-minute load average at the end of the case: other processes skew CPU timings.
    load_avg_1m: float | None = None


def build_backend(
    config: str,
    checkpoint: Path,
    size: tuple[int, int],
    batch: int,
    workdir: Path,
    threads: int | None,
    head: str = "fast",
) -> Backend:
    """One bench configuration for a checkpoint/size/batch (ONNX exports and engines are cached
    in ``workdir``)."""
    options = CONFIGS[config].replace(
        head=head,
        input_size=size,
        max_batch_size=batch,
        intra_op_threads=threads,
        onnx_cache_dir=workdir,
        engine_cache_dir=workdir,
        tensorrt=TensorRTOptions(progress=False),
    )
    return make_backend(checkpoint, options)


def _timed_call(backend: Backend, batch: object) -> float:
    started = time.perf_counter()
    backend.infer(batch, confidence=True)
    backend.synchronize()
    return (time.perf_counter() - started) * 1000.0


def run_case(
    backends: dict[str, Backend],
    size: tuple[int, int],
    batch: int,
    warmup: int,
    min_iters: int,
    max_iters: int,
    budget_s: float,
    settle_s: float = 0.05,
) -> dict[str, list[float]]:
    """Warm up every backend, then time them round-robin until ``max_iters`` rounds or the time
    budget (after at least ``min_iters`` rounds)."""
    rng = np.random.default_rng(0)
    host = rng.standard_normal((batch, 3, *size), dtype=np.float32)
    inputs = {
        name: torch.from_numpy(host).to(b.device) if b.uses_torch else host
        for name, b in backends.items()
    }
    for name, backend in backends.items():
        for _ in range(warmup):
            _timed_call(backend, inputs[name])
    times: dict[str, list[float]] = {name: [] for name in backends}
    started = time.perf_counter()
    for round_index in range(max_iters):
        for name, backend in backends.items():
            # Let the previous backend's worker threads stop spinning (ONNX Runtime and OpenMP
            # busy-wait after a call); otherwise on 2 cores each slows the next one.
            time.sleep(settle_s)
            times[name].append(_timed_call(backend, inputs[name]))
        if round_index + 1 >= min_iters and time.perf_counter() - started > budget_s:
            break
    return times


def summarize(
    config: str,
    backend: Backend,
    variant: str,
    size: tuple[int, int],
    batch: int,
    samples: Sequence[float],
) -> CaseResult:
    stats = LatencySummary.of(samples)
    assert stats is not None, "a case without samples"
    median = stats.p50
    return CaseResult(
        config=config,
        backend=backend.name,
        precision=backend.precision,
        device=str(backend.device),
        variant=variant,
        height=size[0],
        width=size[1],
        batch=batch,
        iterations=stats.count,
        median_ms=round(median, 3),
        p90_ms=round(stats.p90, 3),
        p99_ms=round(stats.p99, 3),
        mean_ms=round(stats.mean, 3),
        fps=round(1000.0 * batch / median, 2),
        load_avg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    )


def format_table(results: Sequence[CaseResult], baseline: str = BASELINE) -> str:
    """Markdown table: one row per case and config, speedup vs the baseline config (same case)."""
    header = ("variant", "input", "batch", "config", "device", "median ms", "p90 ms", "p99 ms",
              "FPS", f"speedup vs {baseline}", "load avg")
    rows = [
        (r.variant, f"{r.height}x{r.width}", r.batch, r.config, r.device, f"{r.median_ms:.1f}",
         f"{r.p90_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.fps:.1f}",
         f"{r.speedup_vs_baseline:.2f}x" if r.speedup_vs_baseline else "-",
         r.load_avg_1m if r.load_avg_1m is not None else "-")
        for r in results
    ]
    return "\n".join(markdown_table(header, rows))


def available_configs(requested: Sequence[str]) -> list[str]:
    """Drop configurations this machine cannot run (CUDA, TensorRT), with a log line each."""
    from dfanet_core.deploy.backends import onnxruntime_available, tensorrt_usable

    chosen = []
    for name in requested:
        options = CONFIGS[name]
        backend = options.backend
        if options.device == "cuda" and not torch.cuda.is_available():
            LOG.info("skipping %s: no CUDA GPU", name)
        elif backend == "tensorrt" and not tensorrt_usable():
            LOG.info(
                "skipping %s: TensorRT not usable here (not installed, no GPU, or RTX-only)", name
            )
        elif backend == "onnxruntime" and not onnxruntime_available():
            LOG.info("skipping %s: onnxruntime not installed", name)
        else:
            chosen.append(name)
    return chosen


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/backend_latency.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=None,
        help="HxW sizes (default: 360x480 512x1024 1024x1024 1024x2048)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=list(CONFIGS),
        default=None,
        help="configs (default: torch onnxruntime on CPU; + CUDA/TensorRT ones where available)",
    )
    parser.add_argument("--batch4", action="store_true", help="also time batch 4")
    parser.add_argument(
        "--baseline",
        choices=list(CONFIGS),
        default=BASELINE,
        help="config the speedup column divides by (default: torch = PyTorch eager fp32 on CPU; "
        "torch-cuda on a GPU machine)",
    )
    parser.add_argument("--batches", nargs="+", type=int, help="explicit batch sizes")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and ONNX Runtime intra-op threads (default: library default)",
    )
    parser.add_argument("--head", choices=("fast", "exact"), default="fast",
                        help="output head of every configuration (default fast)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--max-iters", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=30.0, help="per case, after min-iters")
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=50.0,
        help="pause before each timed call so the previous backend's threads "
        "stop spinning (not timed)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="360x480 only, 5-10 rounds (a smoke run)"
    )
    parser.add_argument("--json", type=Path,
                        default=Path("outputs") / "bench" / "backend_latency.json")
    parser.add_argument("--workdir", type=Path, help="where ONNX/engines go (default: temp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or (list(QUICK_SIZES) if args.quick else list(SIZES))
    if args.quick:
        args.min_iters, args.max_iters, args.warmup = 5, 10, 2
    batches = args.batches or ([1, 4] if args.batch4 else [1])
    default = ["torch", "onnxruntime"] + (
        ["torch-fp16", "torch-fp16-graphs", "tensorrt-fp16"] if torch.cuda.is_available() else []
    )
    configs = available_configs(args.backends or default)
    if not configs:
        LOG.error("no runnable backend configuration")
        return 2
    machine = machine_description()
    LOG.info("machine: %s", machine)
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="dfanet-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for variant in args.variants:
            torch.manual_seed(0)
            model = create_model(variant, num_classes=19).eval()
            checkpoint = save_checkpoint(
                workdir / f"{variant}.safetensors", model, default_meta(variant, 19)
            )
            for size in sizes:
                for batch in batches:
                    results.extend(
                        _bench_case(checkpoint, variant, size, batch, configs, workdir, args)
                    )
    table = format_table(results, args.baseline)
    print(table)  # the CLI's one output: a markdown table
    report = {
        "command": "python bench/backend_latency.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "timed": "backend.infer on a preprocessed batch (network + argmax + confidence)",
        "baseline": args.baseline,
        "results": [asdict(r) for r in results],
        "table_markdown": table,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(args.json, report)
    LOG.info("wrote %s", args.json)
    return 0


def _bench_case(checkpoint, variant, size, batch, configs, workdir, args) -> list[CaseResult]:
    LOG.info("case %s %dx%d batch %d: %s", variant, *size, batch, ", ".join(configs))
    backends: dict[str, Backend] = {}
    for name in configs:
        try:
            backends[name] = build_backend(name, checkpoint, size, batch, workdir, args.threads,
                                           args.head)
        except (ImportError, RuntimeError, ValueError) as exc:
            LOG.warning("skipping %s for this case: %s", name, exc)
    try:
        times = run_case(
            backends,
            size,
            batch,
            args.warmup,
            args.min_iters,
            args.max_iters,
            args.budget_s,
            args.settle_ms / 1000.0,
        )
    finally:
        for backend in backends.values():
            backend.close()
    results = [
        summarize(name, backends[name], variant, size, batch, times[name]) for name in backends
    ]
    baseline = next((r for r in results if r.config == args.baseline), None)
    for r in results:
        if baseline is not None:
            r.speedup_vs_baseline = round(baseline.median_ms / r.median_ms, 2)
        LOG.info(
            "  %-18s median %8.1f ms  p90 %8.1f  p99 %8.1f  %6.1f FPS",
            r.config,
            r.median_ms,
            r.p90_ms,
            r.p99_ms,
            r.fps,
        )
    return results


if __name__ == "__main__":
    sys.exit(main())
