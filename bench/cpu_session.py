"""The project's CPU path against the same checkpoint exported plainly, and the ONNX Runtime
session settings that decide between them, measured side by side in one process.

    python bench/cpu_session.py [--checkpoint C] [--size 512x1024] [--threads 2] [--rounds 20]
        [--configs plain project ...] [--rate-hz 10 --rate-frames 30]
        [--json outputs/bench/cpu_session.json]

Tight loop (the benchmark's situation): every configuration segments the same camera-sized
RGB frame (a CamVid test image resized to ``--size``; the network input is ``--size`` too),
round-robin, ``--settle-ms`` pause before each call so that the previous session's worker
threads stop spinning; median of ``--rounds``. What is timed, per configuration:

    plain             what a user gets without this project: the checkpoint exported with
                      ``torch.onnx.export`` (the model, then ArgMax in the graph: full-resolution
                      logits), a default ``InferenceSession`` with ``--threads`` threads, the same
                      numpy preprocessing; class ids only.
    project           ``Segmenter.predict_detailed(frame, confidence=True)`` with the default
                      RuntimeOptions (fast head, ORT_ENABLE_ALL, no spinning, plain ``run``):
                      preprocessing, network, head (class ids and confidence), resize to the
                      frame's size.
    project-ids       the same with ``confidence=False``: class ids only, the plain export's
                      output (the node asks for confidence only when min_confidence > 0 or
                      someone subscribes to segmentation/confidence); the graph skips its
                      confidence branch (heads.SKIP_CONFIDENCE).
    project-ids-spin  the same with ``ort_spinning=True``: the tight-loop setting (the plain
                      export's default session spins too).
    project-exact     the same with ``head='exact'`` (full-resolution logits, then argmax).
    project-spin      the same with ``ort_spinning=True``.
    project-extended  the same with ``ort_optimization='extended'`` (no NCHWc layout).
    project-iobinding the same with ``io_binding=True`` (``run_with_iobinding``).
    plain-fast-head   the plain session settings on the project's ONNX Runtime export (fast
                      head, CPU layout passes): what the graph alone is worth.
    project-no-cpu-layout  ``project`` on an export without the CPU layout passes
                      (dfanet_core.deploy.cpu_layout): what those passes are worth.
    torch-eager       ``Segmenter`` on the torch backend (PyTorch eager on the CPU, conv-BN
                      folded, fast head; ``torch.set_num_threads(--threads)``).

Camera rate (the node's situation, ``--rate-hz`` > 0): the project path with spinning off and
on, one frame every 1/rate seconds: latency per frame and the process CPU time per frame
(spinning burns CPU after each run, which a node shares with its other threads).

Not a test: prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from dfanet_core.checkpoint import load_checkpoint
from dfanet_core.deploy.export import export_checkpoint
from dfanet_core.deploy.options import RuntimeOptions
from dfanet_core.deploy.preprocess import plan_placement, preprocess_numpy
from dfanet_core.deploy.segmenter import Segmenter
from dfanet_core.files import atomic_write_json, list_images
from dfanet_core.imaging import read_image
from dfanet_core.paths import data_root
from dfanet_core.reports import LatencySummary, markdown_table, parse_size, start_benchmark

LOG = logging.getLogger("bench.cpu_session")

PROJECT_VARIANTS = {
    "project": {},
    "project-ids": {"confidence": False},
    "project-ids-spin": {"confidence": False, "ort_spinning": True},
    "project-exact": {"head": "exact"},
    "project-spin": {"ort_spinning": True},
    "project-extended": {"ort_optimization": "extended"},
    "project-iobinding": {"io_binding": True},
    "torch-eager": {"backend": "torch", "device": "cpu"},
}
CONFIGS = ("plain", *PROJECT_VARIANTS, "plain-fast-head", "project-no-cpu-layout")
DEFAULT_CONFIGS = ("plain", "project", "project-ids", "project-ids-spin", "project-exact",
                   "project-spin", "project-extended", "project-iobinding", "torch-eager")


class ArgmaxModel(torch.nn.Module):
    """The model with ArgMax appended: a plain export's obvious 'class ids' graph."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).argmax(dim=1)


def export_plain(checkpoint: Path, size: tuple[int, int], path: Path) -> Path:
    """``torch.onnx.export`` of the checkpoint as a user would write it (the default exporter,
    opset 18, no folding or head changes of ours)."""
    model, _ = load_checkpoint(checkpoint)
    example = torch.zeros(1, 3, *size)
    with torch.no_grad():
        program = torch.onnx.export(ArgmaxModel(model.eval()), (example,), input_names=["images"],
                                    output_names=["class_ids"], opset_version=18,
                                    external_data=False)
    program.save(str(path))
    return path


def plain_runner(onnx_path: Path, meta: dict, size: tuple[int, int], threads: int,
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Frame -> class ids with a default InferenceSession (only the thread count set)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feeds_minimum = {i.name for i in session.get_inputs()}
    extra = {"min_confidence": np.zeros(1, np.float32)} if "min_confidence" in feeds_minimum \
        else {}

    def run(frame: np.ndarray) -> np.ndarray:
        place = plan_placement(frame.shape[:2], size, "stretch")
        batch = preprocess_numpy([frame], [place], size, meta["mean"], meta["std"])
        ids = session.run(None, {name: batch, **extra})[0]
        return ids[0].astype(np.uint8)

    return run


def project_runner(checkpoint: Path, size: tuple[int, int], threads: int, workdir: Path,
                   confidence: bool = True, **changes,
                   ) -> tuple[Segmenter, Callable[[np.ndarray], np.ndarray]]:
    options = RuntimeOptions(backend="onnxruntime", input_size=size, intra_op_threads=threads,
                             onnx_cache_dir=workdir).replace(**changes)
    segmenter = Segmenter.load(checkpoint, options)
    return segmenter, _predict(segmenter, confidence)


def _predict(segmenter: Segmenter, confidence: bool = True,
             ) -> Callable[[np.ndarray], np.ndarray]:
    def run(frame: np.ndarray) -> np.ndarray:
        return segmenter.predict_detailed(frame, confidence=confidence).masks[0]

    return run


def tight_loop(runners: dict[str, Callable], frame: np.ndarray, rounds: int, warmup: int,
               settle_s: float) -> dict[str, list[float]]:
    for run in runners.values():
        for _ in range(warmup):
            run(frame)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            time.sleep(settle_s)
            started = time.perf_counter()
            run(frame)
            samples[name].append((time.perf_counter() - started) * 1000.0)
    return samples


def camera_rate(run: Callable, frame: np.ndarray, rate_hz: float, frames: int) -> dict:
    """Frames every 1/rate s: latency and process CPU seconds per frame (run + idle)."""
    period = 1.0 / rate_hz
    for _ in range(3):
        run(frame)
    latencies = []
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    next_frame = time.perf_counter()
    for _ in range(frames):
        started = time.perf_counter()
        run(frame)
        latencies.append((time.perf_counter() - started) * 1000.0)
        next_frame += period
        time.sleep(max(0.0, next_frame - time.perf_counter()))
    cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - wall_started
    stats = LatencySummary.of(latencies)
    return {"rate_hz": rate_hz, "frames": frames, "median_ms": round(stats.p50, 2),
            "p90_ms": round(stats.p90, 2), "cpu_ms_per_frame": round(1000 * cpu / frames, 2),
            "cpu_cores_busy": round(cpu / wall, 3)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/cpu_session.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="default: the shipped weights")
    parser.add_argument("--size", type=parse_size, default=(512, 1024),
                        help="network input and frame size HxW (default 512x1024)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(DEFAULT_CONFIGS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settle-ms", type=float, default=50.0)
    parser.add_argument("--rate-hz", type=float, default=0.0,
                        help="also run the camera-rate comparison at this frame rate")
    parser.add_argument("--rate-frames", type=int, default=30)
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/cpu_session.json"))
    parser.add_argument("--workdir", type=Path, help="where the ONNX exports go (default: temp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    checkpoint, report = start_benchmark("bench/cpu_session.py", argv, args.threads,
                                         args.checkpoint)
    _, meta = load_checkpoint(checkpoint)
    image = read_image(list_images(data_root("camvid") / "test", limit=1)[0])
    frame = cv2.resize(image, (args.size[1], args.size[0]), interpolation=cv2.INTER_LINEAR)
    report.update(size=list(args.size), threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="dfanet-cpu-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        runners: dict[str, Callable] = {}
        segmenters = []
        for name in args.configs:
            if name == "plain":
                path = workdir / f"plain-{args.size[0]}x{args.size[1]}.onnx"
                if not path.is_file():
                    export_plain(checkpoint, args.size, path)
                runners[name] = plain_runner(path, meta, args.size, args.threads)
            elif name == "project-no-cpu-layout":
                path = workdir / f"no-cpu-layout-{args.size[0]}x{args.size[1]}.onnx"
                if not path.is_file():
                    export_checkpoint(checkpoint, path, input_size=args.size, head="classes",
                                      head_resolution="x2", min_confidence_input=True)
                seg = Segmenter.from_onnx(path, backend="onnxruntime",
                                          intra_op_threads=args.threads)
                segmenters.append(seg)
                runners[name] = _predict(seg)
            elif name == "plain-fast-head":
                seg, _ = project_runner(checkpoint, args.size, args.threads, workdir)
                runners[name] = plain_runner(seg.backend.info.path, meta, args.size,
                                             args.threads)
                seg.close()
            else:
                seg, run = project_runner(checkpoint, args.size, args.threads, workdir,
                                          **PROJECT_VARIANTS[name])
                segmenters.append(seg)
                runners[name] = run
        samples = tight_loop(runners, frame, args.rounds, args.warmup, args.settle_ms / 1000)
        results = {}
        for name, values in samples.items():
            stats = LatencySummary.of(values)
            results[name] = {"median_ms": round(stats.p50, 2), "p90_ms": round(stats.p90, 2),
                             "min_ms": round(stats.min, 2), "rounds": stats.count}
        report["tight_loop"] = results
        if args.rate_hz > 0:
            report["camera_rate"] = {}
            for spinning in (False, True):
                seg, run = project_runner(checkpoint, args.size, args.threads, workdir,
                                          ort_spinning=spinning)
                report["camera_rate"][f"spinning {'on' if spinning else 'off'}"] = camera_rate(
                    run, frame, args.rate_hz, args.rate_frames)
                seg.close()
        for seg in segmenters:
            seg.close()
    plain = results.get("plain", {}).get("median_ms")
    rows = [(name, f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['min_ms']:.1f}",
             f"{plain / r['median_ms']:.2f}x" if plain else "-") for name, r in results.items()]
    table = "\n".join(markdown_table(("config", "median ms", "p90 ms", "min ms", "vs plain"),
                                     rows))
    print(table)
    if "camera_rate" in report:
        rate_rows = [(name, r["rate_hz"], f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}",
                      f"{r['cpu_ms_per_frame']:.1f}", f"{r['cpu_cores_busy']:.2f}")
                     for name, r in report["camera_rate"].items()]
        rate_table = "\n".join(markdown_table(
            ("project", "frames/s", "median ms", "p90 ms", "CPU ms per frame", "cores busy"),
            rate_rows))
        print(rate_table)
        table += "\n\n" + rate_table
    report["table_markdown"] = table
    report["load_avg_1m"] = round(__import__("os").getloadavg()[0], 2)
    atomic_write_json(args.json, report)
    LOG.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
