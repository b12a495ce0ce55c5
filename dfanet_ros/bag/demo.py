"""See the segmentation node work in one command, with nothing but this package installed.

    python -m dfanet_ros.demo                       # the shared CamVid bag
    python -m dfanet_ros.demo path/to/bag_dir       # any rosbag2 / ROS 1 bag with images
    python -m dfanet_ros.demo path/to/images/       # a folder of PNG/JPEG files

Starts ``segment_node`` in its own process (CPU, ONNX Runtime, the shipped weights, or freshly
initialised ones with a loud warning when none are shipped), replays the frames onto its input
topic at ``--rate`` Hz, collects the masks and prints what came out: masks received, latency
(publish -> mask received) p50/p99, output rate and dropped frames. A few overlay PNGs and a
``summary.json`` are written to ``--out``. The command line is in :mod:`dfanet_ros.bag.cli`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfanet_core.files import atomic_write_json, list_images
from dfanet_core.paths import data_root
from dfanet_core.reports import LatencySummary

from ..diagnostics import LEVEL_NAMES
from ..graph import (
    NodeError,
    NodeProcess,
    apply_ros_environment,
    process_domain_id,
    ros_environment,
)
from ..testing import SegmentationClient

LOG = logging.getLogger("dfanet_ros.demo")


def default_source() -> Path:
    """The shared CamVid bag (MCAP) under the data root (``$DFANET_DATA``, dfanet_core.paths)."""
    return data_root("bags") / "camvid_seq" / "camvid_seq_mcap"


@dataclass(frozen=True)
class DemoFrame:
    """One frame to replay: RGB pixels, the stamp to publish it with, its frame id."""

    rgb: np.ndarray
    stamp_ns: int
    frame_id: str


# -- frames -----------------------------------------------------------------------------------
def load_frames(source: Path, topic: str | None = None, limit: int = 0) -> list[DemoFrame]:
    """Frames of a bag (its header stamps kept, as ``ros2 bag play`` does) or an image folder
    (stamped with the wall clock at load time, 100 ms apart)."""
    if source.is_dir() and not _is_bag(source):
        frames = list(_folder_frames(source))
    else:
        frames = list(_bag_frames(source, topic))
    if not frames:
        raise ValueError(f"no images found in {source}")
    return frames[:limit] if limit else frames


def _is_bag(path: Path) -> bool:
    return (path / "metadata.yaml").is_file() or any(path.glob("*.mcap")) or any(
        path.glob("*.db3")
    )


def _folder_frames(folder: Path) -> Iterator[DemoFrame]:
    from dfanet_core.imaging import read_image

    start = time.time_ns()
    for index, path in enumerate(list_images(folder)):
        yield DemoFrame(read_image(path), start + index * 100_000_000, "camera")


def _bag_frames(path: Path, topic: str | None) -> Iterator[DemoFrame]:
    """Decoded frames of one image topic (the bag tools' reader: rosbags underneath)."""
    from .io import IMAGE_TYPE, open_bag

    with open_bag(path) as bag:
        if topic is None:
            candidates = bag.image_topics()
            raw = [t for t in candidates if bag.topics[t].msgtype == IMAGE_TYPE]
            if not candidates:
                raise ValueError(f"bag {path} has no image topics:\n{bag.describe_topics()}")
            topic = (raw or candidates)[0]
        LOG.info("replaying %s from %s", topic, path)
        for item in bag.images(topic):
            yield DemoFrame(np.ascontiguousarray(item.array), item.stamp_ns, item.frame_id)


def warn_untrained(path: Path) -> None:
    bar = "!" * 78
    LOG.warning("%s\n!! NO TRAINED WEIGHTS: running %s, a randomly initialised network.\n"
                "!! The node, topics, timing and overlays are real; the masks are meaningless.\n"
                "!! Train one (python training/train.py) or pass --checkpoint.\n%s",
                bar, path, bar)


# -- replay -----------------------------------------------------------------------------------
def wait_ready(client: SegmentationClient, node: NodeProcess, timeout_s: float) -> dict:
    """Wait for the node's class info, echoing its log meanwhile (the first run exports ONNX)."""
    shown = 0
    deadline = time.monotonic() + timeout_s
    while True:
        lines = node.log_text().splitlines()
        for line in lines[shown:]:
            LOG.info("  node | %s", line)
        shown = len(lines)
        try:
            info = client.wait_ready(node, timeout_s=2.0)
        except NodeError:
            if not node.alive() or time.monotonic() > deadline:
                raise
            continue
        for line in node.log_text().splitlines()[shown:]:
            LOG.info("  node | %s", line)
        return info


def replay(client: SegmentationClient, node: NodeProcess, frames: Sequence[DemoFrame],
           rate_hz: float) -> list[int]:
    """Publish every frame at ``rate_hz`` and wait for the last masks (until the node says it
    holds no frame); returns the stamps."""
    from tqdm import tqdm

    stamps = []
    start = time.monotonic()
    for index, frame in enumerate(tqdm(frames, desc="replaying", unit="frame")):
        delay = start + index / rate_hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the replay's pace (a camera's frame rate), not a wait
        node.check_alive()
        stamps.append(client.publish_image(frame.rgb, stamp=frame.stamp_ns,
                                           frame_id=frame.frame_id))
    last_sent = time.monotonic()
    if not all(s in client.masks for s in stamps):
        client.wait_idle(node, after=last_sent, timeout_s=120.0)
    return stamps


# -- report -----------------------------------------------------------------------------------
def summarize(client: SegmentationClient, stamps: Sequence[int], info: dict) -> dict[str, Any]:
    """What came out, as plain data (printed and written to summary.json)."""
    latencies = client.latencies_ms()
    served = LatencySummary.of(latencies[s] for s in stamps if s in latencies)
    received = sorted(client.masks[s].received for s in stamps if s in client.masks)
    span = received[-1] - received[0] if len(received) > 1 else 0.0
    last_status = client.statuses[-1][1] if client.statuses else None
    node_values = dict(last_status.values) if last_status else {}
    return {
        "model": info.get("model"),
        "trained": info.get("trained"),
        "backend": info.get("backend"),
        "network_input_size": info.get("network_input_size"),
        "frames_sent": len(stamps),
        "masks_received": served.count if served else 0,
        "frames_dropped_by_node": int(node_values.get("total_dropped_frames", 0) or 0),
        "latency_ms_p50": served.p50 if served else None,
        "latency_ms_p99": served.p99 if served else None,
        "output_rate_hz": (len(received) - 1) / span if span > 0 else None,
        "node_inference_ms_p50": node_values.get("inference_ms_p50"),
        "node_status": f"{LEVEL_NAMES.get(last_status.level)}: {last_status.message}"
        if last_status else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    def number(value: Any, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.1f}{unit}"

    return "\n".join([
        f"model            {summary['model']} on {summary['backend']}, network input "
        f"{summary['network_input_size']}" + ("" if summary["trained"] else " (UNTRAINED)"),
        f"frames sent      {summary['frames_sent']}",
        f"masks received   {summary['masks_received']}",
        f"dropped by node  {summary['frames_dropped_by_node']}",
        f"latency          p50 {number(summary['latency_ms_p50'], ' ms')}, "
        f"p99 {number(summary['latency_ms_p99'], ' ms')} (publish -> mask received)",
        f"output rate      {number(summary['output_rate_hz'], ' Hz')}",
        f"node status      {summary['node_status']}",
    ])


def write_overlays(client: SegmentationClient, frames: Sequence[DemoFrame],
                   stamps: Sequence[int], info: dict, out_dir: Path, count: int) -> list[Path]:
    """Overlay PNGs (mask colours over the frame) of the first ``count`` masks received."""
    from dfanet_core.imaging import overlay, write_image

    palette = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in info["palette"]]
    written = []
    for index, (frame, stamp) in enumerate(zip(frames, stamps)):
        mask = client.masks.get(stamp)
        if mask is None or mask.array is None:
            continue
        path = out_dir / f"overlay_{index:03d}.png"
        written.append(write_image(path, overlay(frame.rgb, mask.array, palette)))
        if len(written) == count:
            break
    return written


# -- the whole run ----------------------------------------------------------------------------
def run_demo(frames: Sequence[DemoFrame], checkpoint: Path, out_dir: Path, *, rate_hz: float,
             overlays: int, domain_id: int | None, engine_cache_dir: str = "",
             timeout_s: float = 300.0) -> dict[str, Any]:
    """Start the node, replay ``frames``, collect the masks; returns the summary (also written
    to ``out_dir/summary.json``). Raises NodeError when the node fails or does not answer."""
    if domain_id is None:
        domain_id = int(os.environ.get("ROS_DOMAIN_ID", process_domain_id()))
    env = ros_environment(domain_id, (out_dir / "ros_log").resolve())
    apply_ros_environment(env)
    params = {
        "checkpoint": str(checkpoint.resolve()),
        "backend": "onnxruntime",
        "engine_cache_dir": engine_cache_dir,
        # reliable input: a replay should not lose frames in transport (the node still drops
        # frames it cannot keep up with, and counts them)
        "input_qos": "DEFAULT",
        "output_depth": 10,
    }
    LOG.info("starting segment_node (ROS domain %d, log in %s)", domain_id,
             out_dir / "node.log")
    with NodeProcess(params, env, out_dir) as node, \
            SegmentationClient(input_reliable=True, name="dfanet_demo") as client:
        info = wait_ready(client, node, timeout_s)
        stamps = replay(client, node, frames, rate_hz)
        client.wait_for(lambda: client.statuses, 5.0, "diagnostics", node)
        summary = summarize(client, stamps, info)
        written = write_overlays(client, frames, stamps, info, out_dir, overlays)
    summary["overlays"] = [str(p) for p in written]
    atomic_write_json(out_dir / "summary.json", summary, sort_keys=False)
    return summary
