"""End-to-end latency of segment_node (publish -> mask received) against the bare Segmenter, at
camera resolution, on the CPU backend, in one run.

    python bench/node_latency.py [--frames 30] [--size 1024 2048] [--checkpoint C] [--threads N]
        [--out outputs/bench/node_latency.json]

Not a test: it measures. The node runs in its own process; this process publishes frames one at a
time and waits for each mask (ping-pong, so the numbers are latencies, not queueing), and runs
the bare Segmenter (predict_detailed) on the same frame just before, so both see the same machine
load. The node runs twice, with the two transport set-ups that carry camera-sized frames between
processes here:

    best_effort_large_data  input QoS SENSOR_DATA (best effort), FASTDDS_BUILTIN_TRANSPORTS=
                            LARGE_DATA, SUBNET discovery (LARGE_DATA is ignored under LOCALHOST)
    reliable_localhost      input QoS DEFAULT (reliable), localhost-only discovery

Prints a table and writes the numbers (and the node's own per-stage diagnostics) as JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from dfanet_core.checkpoint import shipped_or_untrained
from dfanet_core.deploy.options import add_runtime_arguments, options_from_args
from dfanet_core.files import atomic_write_json, list_images
from dfanet_core.imaging import read_image
from dfanet_core.paths import data_root
from dfanet_core.reports import machine_description, summarize_ms
from dfanet_ros.graph import NodeError, NodeProcess, apply_ros_environment, ros_environment
from dfanet_ros.testing import SegmentationClient

LOG = logging.getLogger("node_latency")
SETUPS = {
    "best_effort_large_data": {"discovery": "SUBNET", "input_qos": "SENSOR_DATA"},
    "reliable_localhost": {"discovery": "LOCALHOST", "input_qos": "DEFAULT"},
}
NODE_STAGES = ("decode", "preprocess", "inference", "postprocess", "publish", "queue_wait",
               "processing_time", "node_latency")


def camera_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """CamVid test frames scaled to the camera size (real content), or noise without CamVid."""
    folder = data_root("camvid") / "test"
    try:
        paths = list_images(folder, limit=count)
    except (FileNotFoundError, ValueError):
        LOG.warning("CamVid not found under %s: using random frames", folder)
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(count)]
    return [cv2.resize(read_image(p), (width, height), interpolation=cv2.INTER_LINEAR)
            for p in paths]


def bench(setup: str, segmenter, checkpoint: Path, frames: list[np.ndarray], args,
          workdir: Path) -> dict:
    """One node set-up, interleaved with the bare Segmenter frame by frame, so that both see the
    same machine load (timings here swing several-fold when another tenant is busy)."""
    config = SETUPS[setup]
    env = ros_environment(args.domain_id, workdir / "ros_log",
                          discovery_range=config["discovery"])
    apply_ros_environment(env)
    options = options_from_args(args)
    params = {"checkpoint": str(checkpoint), "backend": options.backend,
              "engine_cache_dir": str(options.onnx_cache_dir or ""),
              "threads": options.intra_op_threads or 0,
              "input_qos": config["input_qos"], "publish_color": False,
              "max_input_pixels": 100_000_000, "diagnostics_period_s": 0.25}
    reliable = config["input_qos"] == "DEFAULT"
    with NodeProcess(params, env, workdir / setup) as node, \
            SegmentationClient(input_reliable=reliable, keep_pixels=False) as client:
        client.wait_ready(node, timeout_s=600)
        warm, lost = 0, 0
        while warm < args.warmup:  # best effort: the first frames go while TCP connects
            segmenter.predict_detailed([frames[warm % len(frames)]])
            if _ping(client, node, frames[warm % len(frames)]) is None:
                lost += 1
                if lost > 50:
                    raise NodeError(f"{setup}: no mask came back for 50 frames")
            else:
                warm += 1
        latencies, bare, lost = [], {}, 0
        for index in range(args.frames):
            frame = frames[index % len(frames)]
            for name, value in segmenter.predict_detailed([frame]).timings_ms.items():
                bare.setdefault(name, []).append(value)
            latency = _ping(client, node, frame)
            if latency is None:
                lost += 1
            else:
                latencies.append(latency)
        served = warm + len(latencies)
        status = client.wait_status(lambda s: int(dict(s.values)["frames_out"]) >= served, node)
    node_values = dict(status.values)
    node_stages = {
        name: {stat: float(node_values[f"{name}_ms_{stat}"]) for stat in ("mean", "p50", "p99")}
        for name in NODE_STAGES
    }
    return {"bare_segmenter_ms": {k: summarize_ms(v) for k, v in bare.items()},
            "end_to_end_ms": summarize_ms(latencies), "lost_in_transport": lost,
            "node_stages_ms": node_stages, "environment": config}


def _ping(client: SegmentationClient, node: NodeProcess, frame: np.ndarray) -> float | None:
    """Publish one frame, wait for its mask: latency in ms, or None if it never came back."""
    stamp = client.publish_image(frame)
    try:
        client.wait_mask(stamp, node, timeout_s=5.0)
    except NodeError:
        node.check_alive()
        return None
    return client.latencies_ms()[stamp]


def format_table(report: dict) -> str:
    lines = [f"{'':50s} {'mean':>8s} {'p50':>8s} {'p99':>8s}   (ms)"]

    def row(label: str, stats: dict) -> None:
        lines.append(f"{label:50s} {stats['mean']:8.1f} {stats['p50']:8.1f} {stats['p99']:8.1f}")

    for setup, result in report["node"].items():
        lines.append(f"-- {setup}")
        row("bare Segmenter, predict_detailed total", result["bare_segmenter_ms"]["total"])
        for name in ("preprocess", "inference", "postprocess"):
            row(f"  of which {name}", result["bare_segmenter_ms"][name])
        row("node, publish -> mask received", result["end_to_end_ms"])
        for stage in ("decode", "preprocess", "inference", "postprocess", "publish",
                      "queue_wait", "node_latency"):
            row(f"  node {stage} (its diagnostics)", result["node_stages_ms"][stage])
        overhead = result["end_to_end_ms"]["p50"] - result["bare_segmenter_ms"]["total"]["p50"]
        lines.append(f"  ROS path overhead, p50: {overhead:+.1f} ms; frames lost in transport: "
                     f"{result['lost_in_transport']}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="timed frames per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048),
                        metavar=("HEIGHT", "WIDTH"), help="camera frame size")
    parser.add_argument("--checkpoint", help="default: shipped weights, else untrained")
    add_runtime_arguments(parser, default_backend="onnxruntime",
                          threads_help="inference threads (default: the backend's)")
    parser.add_argument("--domain-id", type=int, default=150 + os.getpid() % 50)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--out", type=Path,
                        default=Path("outputs") / "bench" / "node_latency.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="dfanet_node_latency_"))
    checkpoint, trained = shipped_or_untrained(workdir, args.checkpoint)
    height, width = args.size
    frames = camera_frames(4, height, width)
    report = {
        "camera_size": [height, width],
        "checkpoint": str(checkpoint),
        "trained": trained,
        "frames": args.frames,
        "machine": {**machine_description(), "load_average_at_start": list(os.getloadavg())},
        "node": {},
    }
    from dfanet_core import Segmenter

    with Segmenter.load(checkpoint, options_from_args(args)) as segmenter:
        report["segmenter"] = segmenter.describe()
        for setup in args.setups:
            LOG.info("%dx%d frames, bare Segmenter and node (%s), interleaved ...",
                     width, height, setup)
            report["node"][setup] = bench(setup, segmenter, checkpoint, frames, args, workdir)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    table = format_table(report)
    print(table)
    print(f"load average (1 min) at start/end: {report['machine']['load_average_at_start'][0]:.1f}"
          f" / {report['machine']['load_average_at_end'][0]:.1f} on {os.cpu_count()} CPUs")
    atomic_write_json(args.out, report, sort_keys=False)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
