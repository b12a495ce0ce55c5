"""What each output head costs and saves: CamVid test mIoU, pixel agreement with the exact head,
and ONNX Runtime latency, with the shipped weights.

    python bench/head_accuracy.py [--resolutions full x2 decoder] [--limit N] [--threads 2]
        [--latency-sizes 512x1024] [--json outputs/bench/head_accuracy.json]

Heads (dfanet_core.deploy.heads): ``full`` = full-resolution bilinear logits then argmax (the
exact head, RuntimeOptions head='exact'); ``x2`` = the decoder's 1/4-resolution logits upsampled
x2, argmax at 1/2; ``decoder`` = argmax at 1/4. Every head's output goes to the image size with
the Segmenter's one nearest-neighbour resize.

Accuracy: every CamVid test image (233) through the Segmenter on ONNX Runtime at the checkpoint's
input size, scored with dfanet_core.metrics (void ignored), as training/evaluate.py scores.
Latency: one backend ``infer`` (network + head, confidence included) on a random input at each
``--latency-sizes`` size, the heads round-robin, median. Not a test: it prints tables and writes
JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dfanet_core.checkpoint import read_checkpoint
from dfanet_core.data.datasets import CamVidDataset
from dfanet_core.deploy.backends.ort_backend import OnnxRuntimeBackend
from dfanet_core.deploy.export import cached_onnx_export
from dfanet_core.deploy.heads import HEAD_RESOLUTIONS
from dfanet_core.deploy.segmenter import Segmenter
from dfanet_core.files import atomic_write_json
from dfanet_core.metrics import ConfusionMatrix
from dfanet_core.paths import data_root
from dfanet_core.reports import LatencySummary, markdown_table, parse_size, start_benchmark

LOG = logging.getLogger("bench.head_accuracy")


def head_backend(
    checkpoint: Path, resolution: str, size: tuple[int, int], threads: int, workdir: Path
) -> OnnxRuntimeBackend:
    """The Segmenter's ONNX Runtime backend for one head resolution (defaults of RuntimeOptions
    for everything else)."""
    onnx_path = cached_onnx_export(checkpoint, size, 1, "fp32", workdir,
                                   head_resolution=resolution, min_confidence_input=True,
                                   cpu_layout=True)
    return OnnxRuntimeBackend(onnx_path, intra_op_threads=threads)


def evaluate_heads(
    checkpoint: Path, resolutions: Sequence[str], root: Path, limit: int | None, threads: int,
    workdir: Path,
) -> dict[str, dict]:
    """mIoU per head on CamVid test, and per-image pixel agreement with the ``full`` head."""
    _, meta = read_checkpoint(checkpoint)
    size = tuple(meta["input_size"])
    dataset = CamVidDataset(root, split="test")
    count = min(len(dataset), limit or len(dataset))
    segmenters = {
        r: Segmenter(b, b.meta) for r in resolutions
        for b in [head_backend(checkpoint, r, size, threads, workdir)]
    }  # fmt: skip
    matrices = {r: ConfusionMatrix(dataset.info.num_classes, dataset.info.ignore_index)
                for r in resolutions}
    agreement: dict[str, list[float]] = {r: [] for r in resolutions}
    for index in range(count):
        image, label = dataset.load(index)
        masks = {r: seg.predict(image) for r, seg in segmenters.items()}
        for r, mask in masks.items():
            matrices[r].update(label, mask)
            if "full" in masks:
                agreement[r].append(float((mask == masks["full"]).mean()))
        if (index + 1) % 50 == 0:
            LOG.info("%d/%d images", index + 1, count)
    results = {}
    for r in resolutions:
        scores = matrices[r].compute()
        results[r] = {
            "images": count,
            "miou": float(scores["miou"]),
            "pixel_accuracy": float(scores["pixel_accuracy"]),
            "agreement_with_full_mean": float(np.mean(agreement[r])) if agreement[r] else None,
            "agreement_with_full_min": float(np.min(agreement[r])) if agreement[r] else None,
        }
    for seg in segmenters.values():
        seg.close()
    return results


def time_heads(
    checkpoint: Path, resolutions: Sequence[str], size: tuple[int, int], threads: int,
    workdir: Path, rounds: int, warmup: int = 3,
) -> dict[str, dict]:
    """Median ``infer`` latency per head at ``size``, heads interleaved round-robin."""
    backends = {r: head_backend(checkpoint, r, size, threads, workdir) for r in resolutions}
    batch = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
    for backend in backends.values():
        for _ in range(warmup):
            backend.infer(batch, confidence=True)
    samples: dict[str, list[float]] = {r: [] for r in resolutions}
    for _ in range(rounds):
        for r, backend in backends.items():
            started = time.perf_counter()
            backend.infer(batch, confidence=True)
            samples[r].append((time.perf_counter() - started) * 1000.0)
    out = {}
    for r, values in samples.items():
        stats = LatencySummary.of(values)
        out[r] = {"median_ms": round(stats.p50, 2), "p90_ms": round(stats.p90, 2),
                  "rounds": stats.count}
        backends[r].close()
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/head_accuracy.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="default: the shipped weights (weights/dfanet_a_camvid.safetensors)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="CamVid folder (default: $DFANET_DATA/camvid or ../shared/data)")
    parser.add_argument("--resolutions", nargs="+", choices=HEAD_RESOLUTIONS,
                        default=list(HEAD_RESOLUTIONS))
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--latency-sizes", nargs="*", type=parse_size, default=[(512, 1024)])
    parser.add_argument("--rounds", type=int, default=15, help="latency rounds per size")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--json", type=Path,
                        default=Path("outputs") / "bench" / "head_accuracy.json")
    parser.add_argument("--workdir", type=Path, help="where the ONNX exports go (default: temp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    checkpoint, report = start_benchmark("bench/head_accuracy.py", argv, args.threads,
                                         args.checkpoint)
    root = args.data_root or data_root("camvid")
    with tempfile.TemporaryDirectory(prefix="dfanet-heads-") as tmp:
        workdir = args.workdir or Path(tmp)
        if not args.skip_accuracy:
            report["accuracy"] = evaluate_heads(checkpoint, args.resolutions, root, args.limit,
                                                args.threads, workdir)
        report["latency"] = {
            f"{h}x{w}": time_heads(checkpoint, args.resolutions, (h, w), args.threads, workdir,
                                   args.rounds)
            for h, w in args.latency_sizes
        }
    header = ["head", "CamVid test mIoU %", "vs full (points)", "pixels equal to full (mean/min)"]
    header += [f"infer ms {size}" for size in report["latency"]]
    rows = []
    full = report.get("accuracy", {}).get("full")
    for r in args.resolutions:
        acc = report.get("accuracy", {}).get(r)
        row = [r]
        if acc:
            delta = f"{100 * (acc['miou'] - full['miou']):+.2f}" if full else "-"
            agree = (f"{100 * acc['agreement_with_full_mean']:.2f} / "
                     f"{100 * acc['agreement_with_full_min']:.2f} %"
                     if acc["agreement_with_full_mean"] is not None else "-")
            row += [f"{100 * acc['miou']:.2f}", delta, agree]
        else:
            row += ["-", "-", "-"]
        row += [f"{report['latency'][size][r]['median_ms']:.1f}" for size in report["latency"]]
        rows.append(row)
    table = "\n".join(markdown_table(header, rows))
    print(table)
    report["table_markdown"] = table
    atomic_write_json(args.json, report)
    LOG.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
