"""Does ONNX Runtime INT8 pay on this CPU? Speed against the project's fp32 export, per-image
argmax agreement and CamVid test mIoU, with the shipped weights, in one command.

    python bench/int8_cpu.py [--size 512x1024] [--threads 2] [--calibration-images 16]
        [--ops all|conv] [--method minmax|percentile] [--no-equalize] [--limit N]
        [--json outputs/bench/int8_cpu.json]

The fp32 graph is the ONNX Runtime export the Segmenter runs (fast head, CPU layout; see
dfanet_core.deploy.export), with the cross-layer range equalisation of
dfanet_core.deploy.equalize applied first unless ``--no-equalize``. It is quantized statically
with ``onnxruntime.quantization.quantize_static``: QDQ format, per-channel int8 weights, uint8
activations (the u8s8 kernels that use VNNI/AMX), calibrated on ``--calibration-images`` CamVid
*train* images. Then:

* speed: the fp32 and int8 sessions at ``--size``, ``--threads`` threads, interleaved, median;
* agreement: per-image share of pixels where int8 and fp32 masks agree (CamVid test images at
  the checkpoint's input size), minimum and mean;
* mIoU on CamVid test, fp32 vs int8 (dfanet_core.metrics, void ignored).

The bar for offering ``precision='int8'`` on ONNX Runtime (issue 13): faster here, >= 97 %
agreement on every image, mIoU within 1 point. Not a test: prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dfanet_core.checkpoint import load_checkpoint
from dfanet_core.data.datasets import CamVidDataset
from dfanet_core.deploy.equalize import equalize_ranges, range_spread
from dfanet_core.deploy.export import export_onnx, onnxruntime_session
from dfanet_core.deploy.preprocess import plan_placement, preprocess_numpy
from dfanet_core.files import atomic_write_json, list_images
from dfanet_core.imaging import read_image
from dfanet_core.metrics import ConfusionMatrix
from dfanet_core.models.fusion import fuse_conv_bn
from dfanet_core.paths import data_root
from dfanet_core.reports import LatencySummary, markdown_table, parse_size, start_benchmark

LOG = logging.getLogger("bench.int8_cpu")


def export_fp32(checkpoint: Path, size: tuple[int, int], path: Path, equalize: bool,
                cpu_layout: bool = True) -> Path:
    """The Segmenter's ONNX Runtime graph for ``checkpoint`` (optionally equalised, optionally
    without the CPU layout passes)."""
    model, meta = load_checkpoint(checkpoint)
    fused = fuse_conv_bn(model)
    LOG.info("weight range spread over the equalisation pairs: %.0f, equalised %.0f",
             range_spread(fused), range_spread(equalize_ranges(fused)))
    return export_onnx(model, path, meta=meta, input_size=size, head="classes",
                       head_resolution="x2", min_confidence_input=True, cpu_layout=cpu_layout,
                       equalize=equalize)


def quantize(fp32: Path, out: Path, images: list[Path], meta: dict, size: tuple[int, int],
             ops: str, method: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.paths = iter(images)

        def get_next(self) -> dict | None:
            path = next(self.paths, None)
            if path is None:
                return None
            image = read_image(path)
            batch = preprocess_numpy([image], [plan_placement(image.shape[:2], size, "stretch")],
                                     size, meta["mean"], meta["std"])
            return {"images": batch, "min_confidence": np.zeros(1, np.float32)}

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv"] if ops == "conv" else None,
        calibrate_method={"minmax": CalibrationMethod.MinMax,
                          "percentile": CalibrationMethod.Percentile}[method],
    )
    prepared.unlink(missing_ok=True)
    return out


def classes(session, batch: np.ndarray) -> np.ndarray:
    feed = {"images": batch, "min_confidence": np.zeros(1, np.float32)}
    return session.run(["class_ids"], feed)[0][0]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/int8_cpu.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--size", type=parse_size, default=(512, 1024), help="speed input HxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--ops", choices=("all", "conv"), default="all",
                        help="quantize every supported op (all) or convolutions only")
    parser.add_argument("--method", choices=("minmax", "percentile"), default="minmax")
    parser.add_argument("--no-equalize", action="store_true")
    parser.add_argument("--no-cpu-layout", action="store_true",
                        help="quantize the graph without the CPU layout passes")
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/int8_cpu.json"))
    parser.add_argument("--workdir", type=Path, help="where the models go (default: temp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    checkpoint, head = start_benchmark("bench/int8_cpu.py", argv, args.threads, args.checkpoint)
    _, meta = load_checkpoint(checkpoint)
    native = tuple(meta["input_size"])
    root = data_root("camvid")
    calibration = list_images(root / "train")[:: 12][: args.calibration_images]
    report: dict = {
        **head,
        "cpu_flags": sorted(f for f in _cpu_flags() if "vnni" in f or "amx" in f),
        "equalized": not args.no_equalize,
        "cpu_layout": not args.no_cpu_layout,
        "ops": args.ops,
        "method": args.method,
        "calibration_images": len(calibration),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with tempfile.TemporaryDirectory(prefix="dfanet-int8-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        sessions = {}
        for size in {native, args.size} if not args.skip_speed else {native}:
            tag = (f"{size[0]}x{size[1]}-{'eq' if not args.no_equalize else 'raw'}"
                   f"{'-plain' if args.no_cpu_layout else ''}")
            fp32 = export_fp32(checkpoint, size, workdir / f"fp32-{tag}.onnx",
                               not args.no_equalize, not args.no_cpu_layout)
            int8 = quantize(fp32, workdir / f"int8-{tag}-{args.ops}-{args.method}.onnx",
                            calibration, meta, size, args.ops, args.method)
            sessions[size] = {p: onnxruntime_session(path, args.threads, spinning=False)
                              for p, path in (("fp32", fp32), ("int8", int8))}
        if not args.skip_speed:
            report["speed"] = _speed(sessions[args.size], args.size, args.rounds)
        report["accuracy"] = _accuracy(sessions[native], root, meta, native, args.limit)
    rows = []
    for precision in ("fp32", "int8"):
        acc = report["accuracy"][precision]
        speed = report.get("speed", {}).get(precision, {})
        rows.append((precision, f"{speed.get('median_ms', float('nan')):.1f}",
                     f"{100 * acc['miou']:.2f}",
                     f"{100 * acc['agreement_min']:.1f} / {100 * acc['agreement_mean']:.1f}"))
    size = f"{args.size[0]}x{args.size[1]}"
    table = "\n".join(markdown_table(
        ("precision", f"median ms {size}", "CamVid test mIoU %",
         "agreement with fp32 min / mean %"), rows))
    print(table)
    report["table_markdown"] = table
    report["load_avg_1m"] = round(os.getloadavg()[0], 2)
    atomic_write_json(args.json, report)
    LOG.info("wrote %s", args.json)
    return 0


def _speed(sessions: dict, size: tuple[int, int], rounds: int) -> dict:
    batch = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
    for session in sessions.values():
        for _ in range(3):
            classes(session, batch)
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            time.sleep(0.03)
            started = time.perf_counter()
            classes(session, batch)
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: {"median_ms": round(LatencySummary.of(v).p50, 2),
                   "min_ms": round(min(v), 2)} for name, v in samples.items()}


def _accuracy(sessions: dict, root: Path, meta: dict, size: tuple[int, int],
              limit: int | None) -> dict:
    dataset = CamVidDataset(root, split="test")
    count = min(len(dataset), limit or len(dataset))
    matrices = {n: ConfusionMatrix(dataset.info.num_classes, dataset.info.ignore_index)
                for n in sessions}
    agreement = []
    from dfanet_core.deploy.preprocess import restore_numpy

    for index in range(count):
        image, label = dataset.load(index)
        place = plan_placement(image.shape[:2], size, "stretch")
        batch = preprocess_numpy([image], [place], size, meta["mean"], meta["std"])
        masks = {n: restore_numpy(classes(s, batch), place, size) for n, s in sessions.items()}
        for name, mask in masks.items():
            matrices[name].update(label, mask)
        agreement.append(float((masks["int8"] == masks["fp32"]).mean()))
    out = {name: {"miou": float(m.compute()["miou"])} for name, m in matrices.items()}
    for name in out:
        out[name].update(images=count, agreement_min=min(agreement) if name == "int8" else 1.0,
                         agreement_mean=float(np.mean(agreement)) if name == "int8" else 1.0,
                         agreement_below_97=int(sum(a < 0.97 for a in agreement))
                         if name == "int8" else 0)
    return out


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


if __name__ == "__main__":
    sys.exit(main())
