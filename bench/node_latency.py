"""End-to-end latency of segment_node (publish -> mask received) against the bare Segmenter, at
camera resolution, on the CPU backend, in one run.

    python bench/node_latency.py [--frames 30] [--size 1024 2048] [--checkpoint C] [--threads N]
        [--out outputs/bench/node_latency.json]

Not a test: it measures. The node runs in its own process; this process publishes frames one at a
time and waits for each mask (ping-pong, so the numbers are latencies, not queueing), and runs
the bare Segmenter (predict_detailed) on the same frame just before, so both see the same machine
load. Discovery stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) and both processes
load the shipped Fast DDS profile (config/fastdds_profile.xml: a 64 MiB shared-memory segment), so
camera-sized frames travel through shared memory. The node runs once per input QoS:

    best_effort_shm   input QoS SENSOR_DATA (best effort), the profile
    reliable_shm      input QoS DEFAULT (reliable), the profile
    reliable_udp      (optional) reliable input without the profile: Fast DDS's default transports

Where the time goes (means over the timed frames, ms), from the node's own diagnostics and the
clocks of both sides: transport in (publish -> the node's callback: header.stamp -> received,
pipeline_latency - node_latency; the publisher's own publish() call, i.e. serialisation, is
shown apart), the node's stages (queue wait, decode, the Segmenter's preprocess / inference /
postprocess), mask out (the rest: the mask message built, published and received here). The
overhead is also given per frame: node end to end minus the bare Segmenter on the same frame.

The floor: for each set-up the same frames also go through ``dfanet_ros.echo_node`` (same
QoS, profile and executor; it answers each frame with a mask of the frame's size and does no
work). Its publish -> mask received is what rclpy and Fast DDS cost for these two messages on
this machine; the node's overhead over the bare Segmenter minus this floor is the node's own.
``--no-echo`` skips it.

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
from dfanet_core.paths import REPO_ROOT, data_root
from dfanet_core.reports import machine_description, summarize_ms
from dfanet_ros.graph import NodeError, NodeProcess, apply_ros_environment, ros_environment
from dfanet_ros.testing import SegmentationClient

LOG = logging.getLogger("node_latency")
PROFILE = REPO_ROOT / "config" / "fastdds_profile.xml"
SETUPS = {
    "best_effort_shm": {"input_qos": "SENSOR_DATA", "profile": True},
    "reliable_shm": {"input_qos": "DEFAULT", "profile": True},
    "reliable_udp": {"input_qos": "DEFAULT", "profile": False},
}
DEFAULT_SETUPS = ("best_effort_shm", "reliable_shm")
NODE_STAGES = ("decode", "preprocess", "inference", "postprocess", "publish", "queue_wait",
               "processing_time", "node_latency", "pipeline_latency")


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
    env = ros_environment(args.domain_id, workdir / "ros_log", discovery_range="LOCALHOST")
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if config["profile"]:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(args.profile)
    apply_ros_environment(env)
    for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS"):  # this process
        os.environ.pop(key, None)
        if key in env:
            os.environ[key] = env[key]
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
        # best effort: the first frames go while TCP connects
        _answered(client, node, frames, segmenter, args.warmup, setup)
        warm = args.warmup
        warm_status = client.wait_status(lambda s: int(dict(s.values)["frames_out"]) >= warm,
                                         node)
        latencies, bare, lost, paired = [], {}, 0, []
        for index in range(args.frames):
            frame = frames[index % len(frames)]
            timings = segmenter.predict_detailed([frame]).timings_ms
            for name, value in timings.items():
                bare.setdefault(name, []).append(value)
            latency = _ping(client, node, frame)
            if latency is None:
                lost += 1
            else:
                latencies.append(latency)
                paired.append(latency - timings["total"])  # this frame, back to back
        served = warm + len(latencies)
        status = client.wait_status(lambda s: int(dict(s.values)["frames_out"]) >= served, node)
    echo = echo_floor(config, env, frames, segmenter, args, workdir / f"{setup}_echo") \
        if args.echo else None
    node_values = dict(status.values)
    node_stages = {
        name: {stat: float(node_values[f"{name}_ms_{stat}"]) for stat in ("mean", "p50", "p99")}
        for name in NODE_STAGES
    }
    # means over the timed frames only: the node's windows also hold the warm-up frames
    before, after = dict(warm_status.values), node_values
    n0, n1 = int(before["frames_out"]), int(after["frames_out"])
    for name in NODE_STAGES:
        total = float(after[f"{name}_ms_mean"]) * n1 - float(before[f"{name}_ms_mean"]) * n0
        node_stages[name]["mean_timed"] = total / max(1, n1 - n0)
    end_to_end = summarize_ms(latencies)
    timed = sorted(client.latencies_ms())[-len(latencies):] if latencies else []
    calls = getattr(client, "publish_call_ms", {})  # (a client of an older checkout has none)
    publish_calls = summarize_ms([calls[s] for s in timed if s in calls]) if calls else None
    return {"bare_segmenter_ms": {k: summarize_ms(v) for k, v in bare.items()},
            "end_to_end_ms": end_to_end, "lost_in_transport": lost,
            "paired_overhead_ms": summarize_ms(paired),
            "camera_publish_call_ms": publish_calls,
            "echo_floor_ms": echo,
            "node_stages_ms": node_stages, "breakdown_mean_ms": breakdown(node_stages, end_to_end),
            "environment": {**config, "discovery": "LOCALHOST",
                            "profile": env.get("FASTDDS_DEFAULT_PROFILES_FILE", "")}}


def echo_floor(config: dict, env: dict, frames: list[np.ndarray], segmenter, args,
               workdir: Path) -> dict:
    """Publish -> mask received through dfanet_ros.echo_node (the same messages, no work), with
    the bare Segmenter run before each frame as in the node's measurement (same machine load)."""
    reliable = config["input_qos"] == "DEFAULT"
    extra = ["-p", f"input_qos:={config['input_qos']}", "-p", "output_qos:=DEFAULT"]
    with NodeProcess(None, env, workdir, extra_args=extra,
                     module="dfanet_ros.echo_node") as echo, \
            SegmentationClient(input_reliable=reliable, keep_pixels=False) as client:
        client.wait_ready(echo, timeout_s=60)
        latencies, lost = _answered(client, echo, frames, segmenter, args.warmup + args.frames,
                                    "echo_node")
        timed = sorted(client.latencies_ms())[-args.frames:]
        calls = [client.publish_call_ms[s] for s in timed if s in client.publish_call_ms]
    return {"end_to_end": summarize_ms(latencies[args.warmup:]),
            "camera_publish_call": summarize_ms(calls), "lost_in_transport": lost}


def breakdown(stages: dict, end_to_end: dict) -> dict[str, float]:
    """Publish -> mask received, split by where the time goes (means over the timed frames,
    ms): transport in
    (pipeline_latency - node_latency: the frame's header stamp, taken when it was published, to
    the node's callback), the node's stages, transport out (the rest: mask published -> received
    here)."""
    mean = {name: values["mean_timed"] for name, values in stages.items()}
    parts = {"transport_in": mean["pipeline_latency"] - mean["node_latency"]}
    for name in ("queue_wait", "decode", "preprocess", "inference", "postprocess"):
        parts[name] = mean[name]
    # mask built, published and received here: the rest of the end-to-end time (the node's own
    # 'publish' stage ends later than the mask arrives whenever this process's bare Segmenter,
    # which starts on the next frame at once, takes both cores from the node)
    parts["mask_out"] = end_to_end["mean"] - sum(parts.values())
    return parts


def _answered(client: SegmentationClient, node: NodeProcess, frames: list[np.ndarray],
              segmenter, count: int, what: str) -> tuple[list[float], int]:
    """Ping frames (the bare Segmenter run on each just before, as in the timed loop) until
    ``count`` masks came back: their latencies (ms) and how many were lost on the way;
    NodeError naming ``what`` after 50 lost."""
    latencies, lost, index = [], 0, 0
    while len(latencies) < count:
        frame = frames[index % len(frames)]
        index += 1
        segmenter.predict_detailed([frame])
        latency = _ping(client, node, frame)
        if latency is None:
            lost += 1
            if lost > 50:
                raise NodeError(f"{what}: no mask came back for 50 frames")
        else:
            latencies.append(latency)
    return latencies, lost


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
        bare = result["bare_segmenter_ms"]["total"]["p50"]
        overhead = result["end_to_end_ms"]["p50"] - bare
        lines.append(f"  ROS path overhead, p50: {overhead:+.1f} ms ({overhead / bare:+.0%} of "
                     f"the bare Segmenter); frames lost in transport: "
                     f"{result['lost_in_transport']}")
        paired = result["paired_overhead_ms"]["p50"]
        lines.append(f"  paired per frame (node - bare on the same frame, back to back), p50: "
                     f"{paired:+.1f} ms ({paired / bare:+.0%})")
        parts = ", ".join(f"{k} {v:.1f}" for k, v in result["breakdown_mean_ms"].items())
        lines.append(f"  where the time goes (means, ms): {parts}")
        echo = result.get("echo_floor_ms")
        if echo:
            floor = echo["end_to_end"]["p50"]
            lines.append(f"  transport floor (dfanet_ros.echo_node: same messages, no work), "
                         f"p50: {floor:.1f} ms; the node's own part of the overhead: "
                         f"{overhead - floor:+.1f} ms ({(overhead - floor) / bare:+.0%})")
        if result["camera_publish_call_ms"]:
            lines.append(f"  of transport_in, the publisher's own publish() call (this process, "
                         f"p50): {result['camera_publish_call_ms']['p50']:.1f} ms")
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
    parser.add_argument("--setups", nargs="+", default=list(DEFAULT_SETUPS),
                        choices=list(SETUPS))
    parser.add_argument("--no-echo", dest="echo", action="store_false",
                        help="skip the transport floor (dfanet_ros.echo_node)")
    parser.add_argument("--profile", type=Path, default=PROFILE,
                        help="Fast DDS profile for both processes (default: the shipped one)")
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
