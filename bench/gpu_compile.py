"""The GPU path past the launch limit: kernels per frame, latency at batch 1 and frames/s at
batch 4 for PyTorch eager, CUDA graphs and ``torch.compile`` (inductor) modes of the torch backend.

    python bench/gpu_compile.py --out DIR [--device cuda] [--precision fp16]
        [--cases dfanet_a:1024x1024:1 dfanet_b:512x1024:4]
        [--configs eager graphs reduce-overhead max-autotune-no-cudagraphs]
        [--deadline EPOCH_SECONDS]

Each configuration is a :class:`RuntimeOptions` built by ``make_backend`` (conv-BN folded,
channels_last on CUDA, the fast head; argmax and confidence included). DFANet A runs the shipped
CamVid weights (when present), B untrained weights (speed does not depend on them):

    eager                         the torch backend as it was (one launch per kernel)
    graphs                        + CUDA graphs captured by the backend (``cuda_graphs=True``)
    reduce-overhead               ``compile_mode='reduce-overhead'``: inductor + CUDA graphs
    max-autotune-no-cudagraphs    ``compile_mode='max-autotune-no-cudagraphs'`` (autotuned
                                  kernels, launched one by one)
    max-autotune                  ``compile_mode='max-autotune'`` (autotuned + CUDA graphs)

Per configuration and case: compile seconds (from the backend's log), kernels per frame from
``torch.profiler`` (GPU kernels executed, host kernel launches, CUDA graph launches), median
latency of one ``infer`` call and frames/s (batch / median), and the share of pixels whose
class equals PyTorch eager fp32 on the same input (a CamVid image from ``--images`` when given;
meaningful for the trained A, near-ties make it noisy for untrained B). Results are written to
``DIR/gpu_compile.json`` after every configuration (a time-out keeps what was measured), and a
configuration is skipped when ``--deadline`` is too close. ``--device cpu`` is a dry run of this
script (tiny cases; compile on the CPU). Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from dfanet_core.checkpoint import default_meta, save_checkpoint
from dfanet_core.deploy.backends import make_backend
from dfanet_core.deploy.options import RuntimeOptions
from dfanet_core.files import atomic_write_text
from dfanet_core.models import create_model
from dfanet_core.reports import LatencySummary, machine_description

LOG = logging.getLogger("bench.gpu_compile")

CONFIGS: dict[str, dict] = {
    "eager": {},
    "graphs": {"cuda_graphs": True},
    "reduce-overhead": {"compile_mode": "reduce-overhead"},
    "max-autotune-no-cudagraphs": {"compile_mode": "max-autotune-no-cudagraphs"},
    "max-autotune": {"compile_mode": "max-autotune"},
}
DEFAULT_CASES = ("dfanet_a:1024x1024:1", "dfanet_b:512x1024:4")
DEFAULT_CONFIGS = ("eager", "graphs", "reduce-overhead", "max-autotune-no-cudagraphs")
#: Rough seconds a compile mode needs on an H200 per case, to skip what cannot finish in time.
ESTIMATED_SECONDS = {"eager": 10, "graphs": 15, "reduce-overhead": 90,
                     "max-autotune-no-cudagraphs": 150, "max-autotune": 180}


def parse_case(text: str) -> tuple[str, tuple[int, int], int]:
    """'dfanet_a:1024x1024:1' -> ('dfanet_a', (1024, 1024), 1)."""
    variant, size, batch = text.split(":")
    height, width = (int(v) for v in size.lower().split("x"))
    return variant, (height, width), int(batch)


def count_kernels(backend, batch: torch.Tensor, frames: int) -> dict:
    """Kernels per call of ``backend.infer``: GPU kernels executed (CUPTI), host-side kernel
    launches and CUDA graph launches, from ``torch.profiler`` over ``frames`` calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if batch.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(frames):
            backend.infer(batch, confidence=True)
        backend.synchronize()
    gpu_kernels = launches = graph_launches = 0
    for event in prof.events():
        name = event.name
        if event.device_type == torch.autograd.DeviceType.CUDA:
            gpu_kernels += 1
        elif name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                      "cuLaunchKernelEx"):
            launches += 1
        elif name in ("cudaGraphLaunch", "cuGraphLaunch"):
            graph_launches += 1
    return {"gpu_kernels_per_frame": round(gpu_kernels / frames, 1),
            "host_kernel_launches_per_frame": round(launches / frames, 1),
            "graph_launches_per_frame": round(graph_launches / frames, 2)}


def time_infer(backend, batch: torch.Tensor, warmup: int, iterations: int) -> list[float]:
    for _ in range(warmup):
        backend.infer(batch, confidence=True)
    backend.synchronize()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        backend.infer(batch, confidence=True)
        backend.synchronize()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def test_batch(checkpoint: Path, images: Path | None, size: tuple[int, int], batch_size: int,
               device: str) -> torch.Tensor:
    """``batch_size`` copies of a CamVid image preprocessed as the Segmenter does (random
    normal input without ``images``)."""
    if images is None:
        return torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(0)
                           ).to(device)
    from dfanet_core.checkpoint import read_checkpoint
    from dfanet_core.deploy.preprocess import plan_placement, preprocess_torch
    from dfanet_core.files import list_images
    from dfanet_core.imaging import read_image

    _, meta = read_checkpoint(checkpoint)
    folder = images / "test" if (images / "test").is_dir() else images
    image = read_image(list_images(folder, limit=1)[0])
    place = plan_placement(image.shape[:2], size, "stretch")
    one = preprocess_torch([image], [place], size, meta["mean"], meta["std"], "RGB",
                           torch.device(device))
    return one.repeat(batch_size, 1, 1, 1)


def run_config(checkpoint: Path, config: str, size: tuple[int, int], batch: torch.Tensor,
               precision: str, device: str, iterations: int,
               reference: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    batch_size = batch.shape[0]
    options = RuntimeOptions(backend="torch", device=device, precision=precision,
                             input_size=size, max_batch_size=batch_size, **CONFIGS[config])
    started = time.perf_counter()
    backend = make_backend(checkpoint, options)
    load_seconds = time.perf_counter() - started
    ids = backend.infer(batch, confidence=False)[0].clone()
    samples = time_infer(backend, batch, warmup=5, iterations=iterations)
    stats = LatencySummary.of(samples)
    kernels = count_kernels(backend, batch, frames=5)
    backend.close()
    return {
        "load_seconds": round(load_seconds, 1),
        "compile_seconds": round(sum(getattr(backend, "compile_seconds", {}).values()), 1),
        "median_ms": round(stats.p50, 3),
        "p90_ms": round(stats.p90, 3),
        "frames_per_s": round(1000.0 * batch_size / stats.p50, 1),
        "iterations": stats.count,
        "agreement_with_eager_fp32": (round(float((ids == reference).float().mean()), 5)
                                      if reference is not None else None),
        **kernels,
    }, ids


def eager_fp32_ids(checkpoint: Path, size: tuple[int, int], batch: torch.Tensor,
                   device: str) -> torch.Tensor:
    options = RuntimeOptions(backend="torch", device=device, precision="fp32", input_size=size,
                             max_batch_size=batch.shape[0])
    with make_backend(checkpoint, options) as backend:
        return backend.infer(batch, confidence=False)[0].clone()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/gpu_compile.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="variant:HxW:batch (default: A 1024x1024 batch 1, B 512x1024 "
                        "batch 4)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                        default=list(DEFAULT_CONFIGS))
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--images", type=Path, default=None,
                        help="CamVid images (a folder, or one with test/): the agreement input")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="epoch seconds: skip configurations that cannot finish before it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_compile.json"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        report = {"skipped": "torch sees no CUDA GPU: the GPU rows stay unmeasured"}
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        LOG.warning(report["skipped"])
        return 0
    report: dict = {
        "command": "python bench/gpu_compile.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(),
        "torch": torch.__version__,
        "precision": args.precision,
        "results": [],
    }
    failed = False
    with tempfile.TemporaryDirectory(prefix="dfanet-compile-") as tmp:
        for case in args.cases:
            variant, size, batch_size = parse_case(case)
            checkpoint = _checkpoint(variant, Path(tmp))
            batch = test_batch(checkpoint, args.images, size, batch_size, args.device)
            reference = None
            try:
                reference = eager_fp32_ids(checkpoint, size, batch, args.device)
            except Exception as exc:  # noqa: BLE001 (the timing rows still count)
                LOG.warning("no fp32 reference for %s: %s", case, exc)
            for config in args.configs:
                row = {"variant": variant, "input": f"{size[0]}x{size[1]}", "batch": batch_size,
                       "config": config, "weights": checkpoint.name}
                left = args.deadline - time.time() if args.deadline else float("inf")
                if left < ESTIMATED_SECONDS[config]:
                    row["skipped"] = f"{left:.0f} s left before the deadline"
                else:
                    LOG.info("%s %s batch %d: %s", variant, row["input"], batch_size, config)
                    try:
                        measured, _ = run_config(checkpoint, config, size, batch, args.precision,
                                                 args.device, args.iterations, reference)
                        row.update(measured)
                    except Exception as exc:  # record and go on: the other rows still count
                        failed = True
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                        row["traceback"] = traceback.format_exc()[-2000:]
                    LOG.info("  %s", {k: v for k, v in row.items() if k != "traceback"})
                report["results"].append(row)
                atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    LOG.info("wrote %s", path)
    return 1 if failed else 0


def _checkpoint(variant: str, folder: Path) -> Path:
    """The shipped weights for their own variant (trained: agreement means something), else a
    seeded untrained model with 19 classes."""
    from dfanet_core.checkpoint import read_checkpoint
    from dfanet_core.files import default_checkpoint

    shipped = default_checkpoint()
    if shipped is not None and read_checkpoint(shipped)[1].get("variant") == variant:
        return shipped
    torch.manual_seed(0)
    return save_checkpoint(folder / f"{variant}.safetensors",
                           create_model(variant, num_classes=19).eval(), default_meta(variant, 19))


if __name__ == "__main__":
    sys.exit(main())
