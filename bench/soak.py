"""Soak benchmark of segment_node: minutes of camera-sized frames at a multiple of the rate the
node sustains, watching memory, latency, drops and survival.

    python bench/soak.py [--minutes 10] [--rate-factor 3] [--size 1024 2048] [--checkpoint C]
        [--out outputs/bench/soak.json]

Not a test: it measures, for as long as asked. The node runs in its own process with its default
parameters (best-effort input, lazy mode; this process subscribes to the mask) and the shipped
Fast DDS profile, discovery on this machine only. First the node's sustainable rate is measured:
frames one at a time, 1000 / the node's per-frame processing time (its diagnostics'
processing_time p50). Then frames are published at ``--rate-factor`` times that rate for
``--minutes``, and the run reports:

* RSS of the node process every ``--rss-period`` seconds and its slope (least squares, MB per
  minute) over the run after the first minute (warm-up: allocator pools, first-frame buffers);
* publish -> mask latency p50/p99 per minute (of the frames whose mask came back);
* drops: frames the node replaced in its one-frame slot (by design when the camera is faster),
  frames lost in transport (published but never received by the node), masks lost on the way
  back;
* whether the node was still alive and answering at the end.

Prints a table and writes everything as JSON; Ctrl-C during the publishing ends it early and the
report covers the minutes that ran (``interrupted``).
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
from typing import Any

import numpy as np

from dfanet_core.checkpoint import shipped_or_untrained
from dfanet_core.deploy.options import add_runtime_arguments, options_from_args
from dfanet_core.files import atomic_write_json
from dfanet_core.reports import machine_description, summarize_ms
from dfanet_ros.diagnostics import node_idle
from dfanet_ros.graph import NodeError, NodeProcess, apply_ros_environment, ros_environment
from dfanet_ros.testing import SegmentationClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_latency import camera_frames  # noqa: E402 - the benchmark's own frames

LOG = logging.getLogger("soak")


def sustainable_rate(client: SegmentationClient, node: NodeProcess, frames: list[np.ndarray],
                     count: int) -> tuple[float, dict]:
    """Frames/s the node sustains: 1000 / its per-frame processing time (p50, diagnostics), from
    ``count`` frames sent one at a time after their masks."""
    sent = 0
    for index in range(count + 5):
        stamp = client.publish_image(frames[index % len(frames)])
        try:
            client.wait_mask(stamp, node, timeout_s=10.0)
            sent += 1
        except NodeError:
            node.check_alive()  # best effort: a frame may go while the reader matches
    status = client.wait_status(lambda s: int(dict(s.values)["frames_out"]) >= sent, node)
    values = dict(status.values)
    processing = float(values["processing_time_ms_p50"])
    return 1000.0 / processing, {"processing_time_ms_p50": processing,
                                 "node_latency_ms_p50": float(values["node_latency_ms_p50"]),
                                 "frames": sent, "published": count + 5}


def settle(client: SegmentationClient, node: NodeProcess, timeout_s: float = 180.0) -> Any:
    """The node's second status in a row with the same frames_in, holding no frame (every frame
    published, dropped, idle or failed): the end of the run, told by the node. Unlike
    SegmentationClient.wait_idle it does not wait for every mask: under overload some may be
    lost on the way back, and the report counts them."""
    since = time.monotonic()

    def settled() -> Any:
        recent = [status for t, status in client.statuses if t >= since]
        if len(recent) < 2:
            return None
        previous, last = (dict(s.values) for s in recent[-2:])
        same = previous["frames_in"] == last["frames_in"]
        return recent[-1] if same and node_idle(recent[-1]) else None

    return client.wait_for(settled, timeout_s, "the node to settle", node)


def still_answering(client: SegmentationClient, node: NodeProcess, frame: np.ndarray) -> bool:
    """One more frame (up to five tries: best effort) comes back as a mask."""
    for _ in range(5):
        try:
            client.wait_mask(client.publish_image(frame), node, timeout_s=30.0)
            return True
        except NodeError:
            if not node.alive():
                return False
    return False


def rss_slope_mb_per_min(samples: list[tuple[float, int]], skip_s: float) -> float | None:
    """Least-squares slope of RSS (MB per minute) over the samples after ``skip_s`` seconds."""
    kept = [(t, rss) for t, rss in samples if t >= skip_s]
    if len(kept) < 3:
        return None
    t = np.array([s[0] for s in kept]) / 60.0
    mb = np.array([s[1] for s in kept]) / 2**20
    return float(np.polyfit(t, mb, 1)[0])


def soak(args: argparse.Namespace, workdir: Path) -> dict:
    checkpoint, trained = shipped_or_untrained(workdir, args.checkpoint)
    height, width = args.size
    frames = camera_frames(4, height, width)
    env = ros_environment(args.domain_id, workdir / "ros_log", discovery_range="LOCALHOST")
    apply_ros_environment(env)
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = env["FASTDDS_DEFAULT_PROFILES_FILE"]
    options = options_from_args(args)
    params = {"checkpoint": str(checkpoint), "backend": options.backend,
              "engine_cache_dir": str(options.onnx_cache_dir or ""),
              "threads": options.intra_op_threads or 0, "publish_color": False,
              "max_input_pixels": 100_000_000, "diagnostics_period_s": 1.0}
    report: dict = {"command": " ".join(sys.argv), "checkpoint": str(checkpoint),
                    "trained": trained, "camera_size": [height, width],
                    "machine": {**machine_description(),
                                "load_average_at_start": list(os.getloadavg())},
                    "environment": {k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                        "FASTDDS_DEFAULT_PROFILES_FILE")}}
    with NodeProcess(params, env, workdir / "node") as node, \
            SegmentationClient(keep_pixels=False) as client:
        client.wait_ready(node, timeout_s=600)
        rate, measured = sustainable_rate(client, node, frames, args.calibration_frames)
        target = rate * args.rate_factor
        report["sustainable"] = {**measured, "rate_hz": rate}
        report["publish_rate_hz"] = target
        LOG.info("node sustains %.1f frames/s (processing p50 %.1f ms): publishing %.1f Hz for "
                 "%g min", rate, measured["processing_time_ms_p50"], target, args.minutes)
        before = set(client.masks)
        start = time.monotonic()
        duration = args.minutes * 60.0
        period = 1.0 / target
        published: list[tuple[float, int]] = []  # (seconds since start, stamp)
        rss: list[tuple[float, int]] = [(0.0, node.rss_bytes())]
        next_frame, next_rss, index = start, start + args.rss_period, 0
        try:
            while (now := time.monotonic()) < start + duration:
                if now >= next_rss:
                    node.check_alive()
                    rss.append((now - start, node.rss_bytes()))
                    next_rss += args.rss_period
                if now >= next_frame:
                    stamp = client.publish_image(frames[index % len(frames)])
                    published.append((now - start, stamp))
                    index += 1
                    next_frame += period
                    if next_frame < now - 1.0:  # the publisher itself fell behind: no burst
                        next_frame = now
                else:
                    time.sleep(min(next_frame, next_rss) - now)  # pacing the camera
        except KeyboardInterrupt:  # Ctrl-C ends the publishing early; the report covers it
            LOG.warning("interrupted after %.1f of %g min: reporting what ran",
                        (time.monotonic() - start) / 60, args.minutes)
            report["interrupted"] = True
        publish_end = time.monotonic()
        ran_minutes = (publish_end - start) / 60.0
        status = settle(client, node)
        rss.append((time.monotonic() - start, node.rss_bytes()))
        alive = node.alive()
        masks_before_last = len(client.masks)
        answered = still_answering(client, node, frames[0])
        values = dict(status.values)
    latencies = client.latencies_ms()
    minutes = []
    for minute in range(int(np.ceil(ran_minutes))):
        stamps = [s for t, s in published if minute * 60 <= t < (minute + 1) * 60]
        served = [latencies[s] for s in stamps if s in latencies]
        summary = summarize_ms(served) if served else {}
        minutes.append({"minute": minute + 1, "published": len(stamps), "masks": len(served),
                        "p50_ms": summary.get("p50"), "p99_ms": summary.get("p99")})
    frames_in = int(values["frames_in"])
    sent_total = len(published) + measured["published"]
    received = len(set(client.masks) - before)
    report.update({
        "minutes": round(ran_minutes, 2), "minutes_asked": args.minutes,
        "published": len(published),
        "achieved_publish_rate_hz": len(published) / (publish_end - start),
        "masks_received": received,
        "latency_per_minute": minutes,
        "latency_ms_all": summarize_ms([latencies[s] for _, s in published if s in latencies]),
        "node": {"frames_in": frames_in, "frames_out": int(values["frames_out"]),
                 "dropped_in_slot": int(values["total_dropped_frames"]),
                 "bad_frames": int(values["bad_frames"]),
                 "backend_errors": int(values["backend_errors"]),
                 "messages_lost": int(values["messages_lost"])},
        "lost_in_transport_in": max(0, sent_total - frames_in),
        "masks_lost_on_the_way_back": max(0, int(values["frames_out"]) - masks_before_last),
        "rss_mb": [(round(t, 1), round(b / 2**20, 1)) for t, b in rss],
        "rss_slope_mb_per_min_after_1min": rss_slope_mb_per_min(rss, 60.0),
        "rss_slope_mb_per_min_all": rss_slope_mb_per_min(rss, 0.0),
        "alive_at_end": alive and answered,
    })
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    return report


def format_report(report: dict) -> str:
    lines = [
        f"camera {report['camera_size'][1]}x{report['camera_size'][0]} rgb8, node sustains "
        f"{report['sustainable']['rate_hz']:.1f} frames/s; published "
        f"{report['published']} frames at {report['achieved_publish_rate_hz']:.1f} Hz "
        f"(target {report['publish_rate_hz']:.1f}) for {report['minutes']:g} min"
        + (f" (interrupted; {report['minutes_asked']:g} asked)" if report.get("interrupted")
           else ""),
        "",
        "| minute | published | masks | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["latency_per_minute"]:
        p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
        p99 = f"{row['p99_ms']:.1f}" if row["p99_ms"] is not None else "-"
        lines.append(f"| {row['minute']} | {row['published']} | {row['masks']} | {p50} | {p99} |")
    node = report["node"]
    rss = report["rss_mb"]
    slope = report["rss_slope_mb_per_min_after_1min"]
    lines += [
        "",
        f"node: frames in {node['frames_in']}, masks out {node['frames_out']}, dropped in its "
        f"one-frame slot {node['dropped_in_slot']}, bad frames {node['bad_frames']}, backend "
        f"errors {node['backend_errors']}, reported lost by the middleware "
        f"{node['messages_lost']}",
        f"published but never taken by the node (best effort, depth 1: replaced in its DDS "
        f"reader's history, or lost): {report['lost_in_transport_in']}; masks lost on the way "
        f"back: {report['masks_lost_on_the_way_back']}",
        f"RSS {rss[0][1]:.0f} MB at start, {max(b for _, b in rss):.0f} MB max, {rss[-1][1]:.0f} "
        f"MB at end; slope after the first minute "
        f"{'n/a' if slope is None else f'{slope:+.2f} MB/min'}",
        f"alive and answering at the end: {report['alive_at_end']}",
    ]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate-factor", type=float, default=3.0,
                        help="publish rate as a multiple of the node's sustainable rate")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048),
                        metavar=("HEIGHT", "WIDTH"), help="camera frame size")
    parser.add_argument("--calibration-frames", type=int, default=20)
    parser.add_argument("--rss-period", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--checkpoint", help="default: shipped weights, else untrained")
    add_runtime_arguments(parser, default_backend="onnxruntime",
                          threads_help="inference threads (default: the backend's)")
    parser.add_argument("--domain-id", type=int, default=150 + os.getpid() % 50)
    parser.add_argument("--out", type=Path, default=Path("outputs") / "bench" / "soak.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="dfanet_soak_"))
    report = soak(args, workdir)
    print(format_report(report))
    atomic_write_json(args.out, report, sort_keys=False)
    print(f"written {args.out}")
    return 0 if report["alive_at_end"] else 1


if __name__ == "__main__":
    sys.exit(main())
