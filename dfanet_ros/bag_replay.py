"""Live replay: play a bag onto ROS topics while the segmentation node runs, collect its masks.

    python -m dfanet_ros.bag_replay BAG --image-topic T [--label-topic L] [--rate X] --out DIR

What ``ros2 bag play`` + a recorder + an evaluator give on a full install, in one command:

1. starts the node (``python -m dfanet_ros.segment_node --ros-args ...`` with the image topic
   remapped) in its own process, unless ``--no-node`` (then something else runs it);
2. waits until the node is connected and warm (one probe frame, with a stamp outside the bag,
   must come back as a mask), then plays the image topic at the bag's recorded timing (log
   times) divided by ``--rate``, publishing the recorded bytes unchanged;
   with ``--no-play`` it only listens: something else (``ros2 bag play BAG``) plays the bag;
3. collects every mask by header stamp, measures end-to-end latency (publish -> mask received,
   one clock), input and output rates and dropped frames (frames sent with no mask back),
   writes the masks into ``DIR/segmentation_bag`` aligned to the input stamps and log times;
4. evaluates accuracy against the label topic with the same code as ``dfanet_ros.bag_eval``
   (``dfanet_core.metrics``) and writes the same report files (``report.json`` etc.).

ROS environment: ``--domain-id`` (default: ``$ROS_DOMAIN_ID``, else a per-process id when this
command runs both ends), localhost-only discovery and ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``
(frames over ~0.5 MB are lost without it) are set for this process and the node.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import queue
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfanet_ros.bag_eval import (
    MASK_TOPIC,
    OUTPUT_BAG_NAME,
    AccuracyMeter,
    EvalSettings,
    OverlayRecorder,
    add_bag_arguments,
    add_model_arguments,
    add_output_arguments,
    bag_frame_rate,
    build_report,
    output_storage,
    preflight,
    resolve_checkpoint,
    run_cli,
    setup_logging,
    summarize_ms,
    write_report,
)
from dfanet_ros.bag_io import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    AtomicBagWriter,
    Bag,
    StampedImage,
    StampMatcher,
    check_label_fits,
    format_stamp,
    open_bag,
)
from dfanet_ros.harness import NodeProcess, check_domain_id, process_domain_id

LOG = logging.getLogger("dfanet_ros.bag_replay")
READY_LINE = "collector ready"
# Probe frames reuse the first image with a stamp this far before the bag's first stamp.
PROBE_OFFSET_NS = 3_600 * 1_000_000_000


class ReplayError(RuntimeError):
    """The live replay could not run (node died, never connected, nothing arrived)."""


@dataclass
class ReplaySettings:
    """How to replay and what to measure."""

    image_topic: str
    label_topic: str | None = None
    rate: float = 1.0
    mask_topic: str = MASK_TOPIC
    play: bool = True
    start_node: bool = True
    checkpoint: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    input_size: tuple[int, int] | None = None
    play_only: bool = False           # only publish the bag (a stand-in for ros2 bag play)
    node_params: list[str] = field(default_factory=list)
    startup_timeout_s: float = 120.0
    drain_timeout_s: float = 5.0
    idle_timeout_s: float = 10.0      # --no-play: stop this long after the last frame/mask
    wait_timeout_s: float = 600.0     # --no-play: give up when nothing is played at all
    publish_reliable: bool = True
    publish_depth: int = 10
    out_storage: str | None = None
    strip_frames: int = 8
    video: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"--rate must be > 0 (a multiplier of the recorded rate), "
                             f"got {self.rate}")


# -- environment and node ------------------------------------------------------------------------
def ros_environment(domain_id: int | None, log_dir: Path, base: dict[str, str] | None = None,
                    own_graph: bool = True) -> dict[str, str]:
    """Environment for this process and the node: domain, localhost discovery, LARGE_DATA.

    Unlike :func:`dfanet_ros.harness.ros_environment` it keeps what the caller's environment
    already sets (the replay may join a graph that ``ros2 bag play`` runs). ``domain_id`` None
    keeps ``$ROS_DOMAIN_ID``; without one, a graph this command owns entirely (``own_graph``)
    gets a per-process id so parallel replays never hear each other.
    """
    env = dict(os.environ if base is None else base)
    if domain_id is None and "ROS_DOMAIN_ID" not in env and own_graph:
        domain_id = process_domain_id()
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(check_domain_id(domain_id, "--domain-id"))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if "ROS_LOG_DIR" not in env and "HOME" not in env:
        env["ROS_LOG_DIR"] = str(log_dir)
    return env


def node_remaps(settings: ReplaySettings, compressed: bool) -> list[tuple[str, str]]:
    """The node's input and mask topics remapped to the replay's."""
    input_name = "image/compressed" if compressed else "image"
    return [(input_name, settings.image_topic), ("segmentation/mask", settings.mask_topic)]


def node_parameter_args(settings: ReplaySettings, compressed: bool) -> list[str]:
    """The node's parameters as ``-p NAME:=VALUE`` rules (``--node-param`` ones last)."""
    args = ["-p", f"input_type:={'compressed' if compressed else 'raw'}",
            "-p", f"backend:={settings.backend}",
            "-p", f"precision:={settings.precision}",
            # A deeper output history so that the collector never loses a mask to QoS.
            "-p", "output_depth:=10"]
    if settings.checkpoint:
        args += ["-p", f"checkpoint:={Path(settings.checkpoint).resolve()}"]
    if settings.input_size:
        args += ["-p", f"input_size:=[{settings.input_size[0]}, {settings.input_size[1]}]"]
    for param in settings.node_params:
        args += ["-p", param]
    return args


def start_node(settings: ReplaySettings, compressed: bool, env: dict[str, str],
               out_dir: Path) -> NodeProcess:
    """``python -m dfanet_ros.segment_node --ros-args ...`` in its own process, its output in
    ``out_dir/node.log``."""
    node = NodeProcess(None, env, out_dir, remaps=node_remaps(settings, compressed),
                       extra_args=node_parameter_args(settings, compressed))
    LOG.info("starting node: %s", " ".join(node.command))
    return node


def class_info_topic(mask_topic: str) -> str:
    """The node's latched class-info topic beside its mask topic (published once the model is
    loaded: the readiness signal)."""
    return mask_topic.rsplit("/", 1)[0] + "/class_info"


# -- serialized message helpers ------------------------------------------------------------------
def cdr_stamp(data: bytes) -> int:
    """Header stamp (ns) of a CDR-serialized message whose first field is std_msgs/Header."""
    little = data[1] == 1  # encapsulation id 0x0001 = CDR_LE
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", data, 4)
    return sec * 1_000_000_000 + nanosec


def with_stamp(data: bytes, stamp_ns: int) -> bytes:
    """A copy of a CDR message (Header first) with another header stamp."""
    little = data[1] == 1
    patched = bytearray(data)
    struct.pack_into("<iI" if little else ">iI", patched, 4, stamp_ns // 1_000_000_000,
                     stamp_ns % 1_000_000_000)
    return bytes(patched)


@dataclass
class PlayItem:
    """One image message to publish: its stamp, recorded log time and CDR bytes."""

    stamp_ns: int
    log_time_ns: int
    data: bytes


def image_messages(bag: Bag, topic: str) -> Iterator[PlayItem]:
    """The image topic's messages as ROS 2 CDR bytes (ROS 1 messages are converted)."""
    for name, msgtype, log_time, raw in bag.raw_messages([topic]):
        data = bag.to_cdr(name, msgtype, raw)
        yield PlayItem(cdr_stamp(data), log_time, data)


def scan_stamps(bag: Bag, topic: str) -> dict[int, int]:
    """header stamp -> log time of every message of the image topic (decodes no pixels)."""
    stamps: dict[int, int] = {}
    for item in image_messages(bag, topic):
        if item.stamp_ns in stamps:
            LOG.warning("stamp %s appears twice on %s; masks cannot tell these frames apart",
                        format_stamp(item.stamp_ns), topic)
        stamps.setdefault(item.stamp_ns, item.log_time_ns)
    return stamps


# -- the ROS side --------------------------------------------------------------------------------
class ReplayGraph:
    """rclpy context + node + spinning thread: the image publisher (or observer) and the mask
    subscription. Callbacks only timestamp and queue the serialized bytes."""

    def __init__(self, image_topic: str, image_type: str, mask_topic: str,
                 settings: ReplaySettings) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self._rclpy = rclpy
        self.msg_class = CompressedImage if image_type == COMPRESSED_TYPE else Image
        self.mask_topic = mask_topic
        self.image_topic = image_topic
        self.masks: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.observed: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"dfanet_bag_replay_{os.getpid()}", context=self.context)
        self.publisher = None
        self.observer = None
        if settings.play:
            reliability = (ReliabilityPolicy.RELIABLE if settings.publish_reliable
                           else ReliabilityPolicy.BEST_EFFORT)
            self.publisher = self.node.create_publisher(
                self.msg_class, image_topic,
                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=settings.publish_depth,
                           reliability=reliability))
        else:
            self.observer = self.node.create_subscription(
                self.msg_class, image_topic,
                lambda data: self.observed.put((time.monotonic_ns(), data)),
                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                           reliability=ReliabilityPolicy.BEST_EFFORT), raw=True)
        self._mask_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                                    reliability=ReliabilityPolicy.RELIABLE)
        self.mask_subscription = None
        self.class_info: dict[str, Any] | None = None
        if not settings.play_only:
            from std_msgs.msg import String

            from dfanet_ros.qos import latched_qos

            self.node.create_subscription(String, class_info_topic(mask_topic),
                                          self._on_class_info, latched_qos())
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="ros-spin", daemon=True)
        self._thread.start()

    def _on_class_info(self, msg: Any) -> None:
        try:
            self.class_info = json.loads(msg.data)
        except ValueError:
            LOG.warning("unreadable class info on %s: %.80s", class_info_topic(self.mask_topic),
                        msg.data)

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            self._executor.spin_once(timeout_sec=0.05)

    def subscribe_masks(self) -> None:
        """Subscribe to the masks with the reliability their publisher offers."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        infos = self.node.get_publishers_info_by_topic(self.mask_topic)
        reliability = ReliabilityPolicy.RELIABLE
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                         for i in infos):
            reliability = ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(history=self._mask_qos.history, depth=self._mask_qos.depth,
                         reliability=reliability)
        self.mask_subscription = self.node.create_subscription(
            Image, self.mask_topic, lambda data: self.masks.put((time.monotonic_ns(), data)),
            qos, raw=True)

    def mask_publishers(self) -> int:
        """Publishers of the mask topic known to the graph."""
        return self.node.count_publishers(self.mask_topic)

    def connected(self) -> bool:
        """The node is subscribed to our images (play) and our mask subscription is matched."""
        if self.mask_subscription is None:
            return False
        masks_ok = self.mask_subscription.get_publisher_count() > 0
        images_ok = self.publisher is None or self.publisher.get_subscription_count() > 0
        return masks_ok and images_ok

    def subscribers(self) -> int:
        """Subscriptions matched to our image publisher."""
        return self.publisher.get_subscription_count() if self.publisher is not None else 0

    def publish(self, data: bytes) -> None:
        """Publish serialized image bytes as they are."""
        assert self.publisher is not None
        self.publisher.publish(data)

    def close(self) -> None:
        """Stop spinning and shut the context down cleanly."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self.context.ok():
            self._rclpy.shutdown(context=self.context)


# -- measurement ---------------------------------------------------------------------------------
@dataclass
class ReplayLog:
    """What was sent and what came back, by header stamp (monotonic ns)."""

    sent: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    unexpected_masks: int = 0
    duplicate_masks: int = 0

    def missing(self) -> list[int]:
        """Stamps sent with no mask back (yet)."""
        return [s for s in self.sent if s not in self.received]


class MaskSink:
    """Takes masks off the graph's queue, records arrival times and writes them to the output
    bag with the input's stamp and log time (so the bag aligns with the input bag)."""

    def __init__(self, graph: ReplayGraph, writer: AtomicBagWriter, log_times: dict[int, int],
                 log: ReplayLog, probe_stamps: set[int]) -> None:
        self.graph = graph
        self.writer = writer
        self.log_times = log_times
        self.log = log
        self.probe_stamps = probe_stamps
        self.probes_back: set[int] = set()
        self.last_arrival_ns = 0

    def drain(self, timeout_s: float = 0.0) -> int:
        """Handle queued masks (waiting up to ``timeout_s`` for the first); returns how many."""
        handled = 0
        block = timeout_s > 0
        while True:
            try:
                arrival, data = self.graph.masks.get(block=block, timeout=timeout_s or None)
            except queue.Empty:
                return handled
            block = False
            handled += 1
            self.last_arrival_ns = arrival
            self._handle(arrival, data)

    def _handle(self, arrival: int, data: bytes) -> None:
        stamp = cdr_stamp(data)
        if stamp in self.probe_stamps:
            self.probes_back.add(stamp)
            return
        if stamp not in self.log_times:
            self.log.unexpected_masks += 1
            return
        if stamp in self.log.received:
            self.log.duplicate_masks += 1
            return
        self.log.received[stamp] = arrival
        self.writer.write_raw(MASK_TOPIC, self.log_times[stamp], data)


def wait_until_connected(graph: ReplayGraph, node: NodeProcess | None, timeout_s: float) -> None:
    """Wait for the node's mask publisher (and its image subscription when we play)."""
    deadline = time.monotonic() + timeout_s

    def wait(condition: Callable[[], bool], period_s: float) -> None:
        while not condition():
            if node is not None:
                node.check_alive()
            if time.monotonic() > deadline:
                raise ReplayError(_not_connected(graph, node, timeout_s))
            time.sleep(period_s)

    wait(lambda: graph.mask_publishers() > 0, 0.1)
    graph.subscribe_masks()
    wait(graph.connected, 0.05)


def _not_connected(graph: ReplayGraph, node: NodeProcess | None, timeout_s: float) -> str:
    detail = (f"; end of the node's log:\n{node.log_tail()}" if node is not None else
              "; is the node running in the same ROS_DOMAIN_ID "
              f"({os.environ.get('ROS_DOMAIN_ID', 'unset')}) with a matching QoS?")
    return (f"no segmentation node connected within {timeout_s:.0f} s (mask topic "
            f"{graph.mask_topic}, image topic {graph.image_topic}){detail}")


def probe(graph: ReplayGraph, sink: MaskSink, node: NodeProcess | None, first: PlayItem,
          timeout_s: float) -> float:
    """Publish the first frame with an out-of-bag stamp until its mask comes back: the node is
    connected, subscribed and warm before the timed replay. Returns the round trip in ms."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        stamp = first.stamp_ns - PROBE_OFFSET_NS - attempt
        sink.probe_stamps.add(stamp)
        sent = time.monotonic_ns()
        graph.publish(with_stamp(first.data, stamp))
        wait_until = time.monotonic() + 2.0
        while time.monotonic() < min(wait_until, deadline):
            sink.drain(timeout_s=0.05)
            if stamp in sink.probes_back:
                return (sink.last_arrival_ns - sent) / 1e6
        if node is not None:
            node.check_alive()
        if time.monotonic() >= deadline:
            raise ReplayError(f"the node never returned a mask for a probe frame within "
                              f"{timeout_s:.0f} s ({attempt} tries)"
                              + (f"; end of its log:\n{node.log_tail()}" if node else ""))


def play(graph: ReplayGraph, sink: MaskSink | None, items: Iterator[PlayItem], total: int,
         rate: float, log: ReplayLog, progress: bool) -> None:
    """Publish each frame at its recorded log time / rate; handle masks in between."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"replay x{rate:g}", unit="frame", disable=not progress)
    start_wall = None
    first_log = 0
    for item in items:
        if start_wall is None:
            start_wall, first_log = time.monotonic_ns(), item.log_time_ns
        due = start_wall + (item.log_time_ns - first_log) / rate
        while (remaining := (due - time.monotonic_ns()) / 1e9) > 0:
            if sink is not None:
                sink.drain(timeout_s=min(remaining, 0.02))
            else:
                time.sleep(min(remaining, 0.02))
        log.sent[item.stamp_ns] = time.monotonic_ns()
        graph.publish(item.data)
        bar.update(1)
    bar.close()


def drain_until_complete(sink: MaskSink, log: ReplayLog, timeout_s: float) -> None:
    """After the last frame: wait for outstanding masks until none came for ``timeout_s``."""
    last_progress = time.monotonic()
    while log.missing() and time.monotonic() - last_progress < timeout_s:
        if sink.drain(timeout_s=0.05):
            last_progress = time.monotonic()


def listen(graph: ReplayGraph, sink: MaskSink, log: ReplayLog, settings: ReplaySettings,
           expected: int) -> None:
    """--no-play: record the frames someone else plays and the masks that come back, until every
    bag frame has a mask or nothing happened for ``idle_timeout_s``."""
    LOG.info("%s: waiting for frames on %s (play the bag now, e.g. 'ros2 bag play BAG')",
             READY_LINE, graph.image_topic)
    sys.stderr.flush()
    started = time.monotonic()
    last_activity = None
    while True:
        got = sink.drain(timeout_s=0.05)
        observed = 0
        while True:
            try:
                arrival, data = graph.observed.get_nowait()
            except queue.Empty:
                break
            stamp = cdr_stamp(data)
            if stamp in sink.log_times:
                log.sent.setdefault(stamp, arrival)
            observed += 1
        now = time.monotonic()
        if got or observed:
            last_activity = now
        if len(log.received) >= expected:
            return
        if last_activity is None:
            if now - started > settings.wait_timeout_s:
                raise ReplayError(f"no frame was played on {graph.image_topic} within "
                                  f"{settings.wait_timeout_s:.0f} s")
        elif now - last_activity > settings.idle_timeout_s:
            return


# -- evaluation after the replay -----------------------------------------------------------------
def evaluate_replay(bag: Bag, out_dir: Path, settings: ReplaySettings, model: dict[str, Any],
                    log: ReplayLog, recorder: OverlayRecorder,
                    max_pending: int = 64) -> AccuracyMeter:
    """Score the collected masks against the labels and draw the overlays.

    Streams the input bag (images, labels) and the output bag (masks, written at the input's
    log times) merged by log time and joins them by header stamp; frames without a mask
    (dropped) are skipped, a frame whose label never comes is drawn but not scored.
    """
    meter = AccuracyMeter(model["num_classes"], model["class_names"], model["ignore_index"])
    want_labels = settings.label_topic is not None
    pending: OrderedDict[int, dict[str, StampedImage]] = OrderedDict()
    index = 0

    def finish(entry: dict[str, StampedImage]) -> None:
        nonlocal index
        if "image" not in entry or "mask" not in entry:
            return
        image, mask, label = entry["image"], entry["mask"], entry.get("label")
        if label is not None:
            check_label_fits(label, image.array.shape, settings.image_topic)
            meter.update(mask.array, label.array)
        recorder.add(index, image.array, mask.array)
        if label is not None:
            recorder.add_label(index, label.array)
        index += 1

    with open_bag(out_dir / OUTPUT_BAG_NAME) as masks_bag:
        merged = heapq.merge(
            (("mask", m) for m in masks_bag.labels(MASK_TOPIC)),
            (("label" if is_label else "image", m)
             for is_label, m in bag.stream(settings.image_topic, settings.label_topic)),
            key=lambda entry: entry[1].log_time_ns)
        for kind, msg in merged:
            if msg.stamp_ns not in log.received:
                continue  # a dropped frame (or its label): nothing to score
            entry = pending.setdefault(msg.stamp_ns, {})
            entry[kind] = msg
            if "image" in entry and "mask" in entry and ("label" in entry or not want_labels):
                finish(pending.pop(msg.stamp_ns))
            while len(pending) > max_pending:
                finish(pending.popitem(last=False)[1])
    while pending:
        finish(pending.popitem(last=False)[1])
    return meter


# -- the whole run -------------------------------------------------------------------------------
def wait_for_model(graph: ReplayGraph, node: NodeProcess | None, timeout_s: float) -> None:
    """Wait for the node's class info (latched, published once its model is loaded)."""
    deadline = time.monotonic() + timeout_s
    while graph.class_info is None:
        if node is not None:
            node.check_alive()
        if time.monotonic() > deadline:
            if node is not None:
                raise ReplayError(f"the node did not load its model within {timeout_s:.0f} s; "
                                  f"end of its log:\n{node.log_tail()}")
            LOG.warning("no class info on %s: cannot tell whether the node's model is loaded",
                        class_info_topic(graph.mask_topic))
            return
        time.sleep(0.05)


def model_fields(settings: ReplaySettings, class_info: dict[str, Any] | None) -> dict[str, Any]:
    """Classes, palette and model description: from the node's class info when it sent one
    (what really ran), else from the checkpoint."""
    meta: dict[str, Any] = {}
    if settings.checkpoint:
        from dfanet_core.checkpoint import read_checkpoint

        meta = read_checkpoint(settings.checkpoint)[1]
    if class_info is None and not meta:
        raise ReplayError("no class information: the node sent no class info and no "
                          "--checkpoint was given")
    info = class_info or {}
    palette = ([[(c >> 16) & 255, (c >> 8) & 255, c & 255] for c in info["palette"]]
               if "palette" in info else meta["palette"])
    return {
        "checkpoint": info.get("checkpoint", settings.checkpoint),
        "variant": info.get("model", meta.get("variant")),
        "trained": info.get("trained", meta.get("trained")),
        "dataset": info.get("dataset", meta.get("dataset")),
        "backend": info.get("backend", settings.backend),
        "precision": info.get("precision", settings.precision),
        "input_size": info.get("network_input_size", meta.get("input_size")),
        "num_classes": int(info.get("num_classes", meta.get("num_classes", 0))),
        "class_names": list(info.get("class_names", meta.get("class_names", []))),
        "palette": palette,
        "ignore_index": int(meta.get("ignore_index", 255)),
    }


def run_replay(bag_path: str | os.PathLike, out_dir: str | os.PathLike,
               settings: ReplaySettings, env: dict[str, str]) -> dict[str, Any]:
    """Replay (or listen to) a bag through the node and write the report; returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.start_node or settings.checkpoint:
        settings.checkpoint = str(resolve_checkpoint(settings.checkpoint))
    with open_bag(bag_path) as bag:
        info = preflight(bag, settings.image_topic, settings.label_topic)
        log_times = scan_stamps(bag, settings.image_topic)
        compressed = info["image_type"] == COMPRESSED_TYPE
        node = start_node(settings, compressed, env, out_dir) if settings.start_node else None
        log = ReplayLog()
        probe_ms = None
        storage = output_storage(bag, settings.out_storage)
        try:
            graph = ReplayGraph(settings.image_topic, info["image_type"], settings.mask_topic,
                                settings)
            try:
                wait_until_connected(graph, node, settings.startup_timeout_s)
                wait_for_model(graph, node, settings.startup_timeout_s)
                model = model_fields(settings, graph.class_info)
                with AtomicBagWriter(out_dir / OUTPUT_BAG_NAME, storage,
                                     overwrite=True) as writer:
                    writer.add_topic(MASK_TOPIC, IMAGE_TYPE)
                    sink = MaskSink(graph, writer, log_times, log, set())
                    if settings.play:
                        first = next(image_messages(bag, settings.image_topic))
                        probe_ms = probe(graph, sink, node, first, settings.startup_timeout_s)
                        LOG.info("node ready (probe round trip %.1f ms); replaying at x%g",
                                 probe_ms, settings.rate)
                        play(graph, sink, image_messages(bag, settings.image_topic),
                             len(log_times), settings.rate, log, settings.progress)
                        drain_until_complete(sink, log, settings.drain_timeout_s)
                    else:
                        listen(graph, sink, log, settings, len(log_times))
                    if not log.received:
                        raise ReplayError(_nothing_back(log, node))
            finally:
                graph.close()
        finally:
            node_exit = node.stop() if node is not None else None
        recorder = OverlayRecorder(out_dir, model["palette"], len(log.received),
                                   bag_frame_rate(bag, settings.image_topic) * settings.rate,
                                   settings.strip_frames, video=settings.video)
        try:
            meter = evaluate_replay(bag, out_dir, settings, model, log, recorder)
            outputs = recorder.finish()
        except BaseException:
            recorder.discard()
            raise
        report = _live_report(bag, info, settings, model, log, meter, probe_ms, node_exit)
    report["outputs"].update(outputs)
    if node is not None:
        report["outputs"]["node_log"] = node.log_path.name
    latencies = [(log.received[s] - log.sent[s]) / 1e6 for s in sorted(log.sent)
                 if s in log.received]
    write_report(out_dir, report, latencies, latency_label="end-to-end latency")
    return report


def play_only(bag_path: str | os.PathLike, settings: ReplaySettings) -> int:
    """Publish the bag's image topic at its recorded timing / rate once something subscribes
    (what ``ros2 bag play`` does, for machines without it); returns the frames published."""
    with open_bag(bag_path) as bag:
        info = preflight(bag, settings.image_topic, None)
        graph = ReplayGraph(settings.image_topic, info["image_type"], settings.mask_topic,
                            settings)
        try:
            deadline = time.monotonic() + settings.wait_timeout_s
            while graph.subscribers() == 0:
                if time.monotonic() > deadline:
                    raise ReplayError(f"nobody subscribed to {settings.image_topic} within "
                                      f"{settings.wait_timeout_s:.0f} s")
                time.sleep(0.05)
            time.sleep(0.5)  # let the other side's discovery finish as well
            log = ReplayLog()
            play(graph, None, image_messages(bag, settings.image_topic), info["image_count"],
                 settings.rate, log, settings.progress)
            time.sleep(0.5)  # reliable publishers: give the last frames time to go out
        finally:
            graph.close()
    return len(log.sent)


def _nothing_back(log: ReplayLog, node: NodeProcess | None) -> str:
    text = (f"no mask came back for any of the {len(log.sent)} frames sent"
            if log.sent else "no frame was seen on the image topic")
    if node is not None:
        text += f"; end of the node's log:\n{node.log_tail()}"
    return text


def _live_report(bag: Bag, info: dict[str, Any], settings: ReplaySettings,
                 model: dict[str, Any], log: ReplayLog, meter: AccuracyMeter,
                 probe_ms: float | None, node_exit: int | None) -> dict[str, Any]:
    matched = sorted(s for s in log.sent if s in log.received)
    latencies = [(log.received[s] - log.sent[s]) / 1e6 for s in matched]
    send_times = sorted(log.sent.values())
    recv_times = sorted(log.received[s] for s in matched)
    wall_s = ((max(recv_times + send_times) - min(send_times)) / 1e9) if send_times else 0.0
    described = {k: v for k, v in model.items() if k not in ("class_names", "palette")}
    eval_settings = EvalSettings(image_topic=settings.image_topic,
                                 label_topic=settings.label_topic, color=False)
    report = build_report("live", bag, eval_settings, described, info, len(matched), meter,
                          StampMatcher(), wall_s)
    report.update({
        "rate_multiplier": settings.rate,
        "played_by": "bag_replay" if settings.play else "external (--no-play)",
        "node_started_by": "bag_replay" if settings.start_node else "external (--no-node)",
        "frames_in_bag": info["image_count"],
        "frames_sent": len(log.sent),
        "dropped_frames": len(log.sent) - len(matched),
        "drop_ratio": (len(log.sent) - len(matched)) / len(log.sent) if log.sent else None,
        "unexpected_masks": log.unexpected_masks,
        "duplicate_masks": log.duplicate_masks,
        "latency_ms": summarize_ms(latencies),
        "latency_kind": "end-to-end: image published -> mask received",
        "input_rate_hz": _rate(send_times),
        "output_rate_hz": _rate(recv_times),
        "throughput_fps": _rate(recv_times),
        "probe_round_trip_ms": probe_ms,
        "node_exit_code": node_exit,
    })
    report["outputs"]["bag_topics"] = [MASK_TOPIC]
    report.pop("frames_without_label", None)
    return report


def _rate(times_ns: Sequence[int]) -> float | None:
    if len(times_ns) < 2 or times_ns[-1] == times_ns[0]:
        return None
    return (len(times_ns) - 1) / ((times_ns[-1] - times_ns[0]) / 1e9)


# -- CLI -----------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    """Command-line interface of the live replay."""
    parser = argparse.ArgumentParser(
        prog="python -m dfanet_ros.bag_replay",
        description="Replay a bag through the running segmentation node: end-to-end latency, "
                    "output rate, dropped frames and mIoU.")
    add_bag_arguments(parser)
    parser.add_argument("--out", default=None, help="output directory (required unless "
                                                    "--play-only)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="multiplier of the recorded rate (2 = twice as fast)")
    add_model_arguments(parser)
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID, else a per-process id)")
    parser.add_argument("--no-play", action="store_true",
                        help="do not play: listen while something else (ros2 bag play) plays")
    parser.add_argument("--no-node", action="store_true",
                        help="do not start the node: one is already running")
    parser.add_argument("--play-only", action="store_true",
                        help="only publish the bag (a stand-in for 'ros2 bag play'): no node, "
                             "no collection, no report")
    parser.add_argument("--mask-topic", default=MASK_TOPIC)
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter (repeatable)")
    parser.add_argument("--best-effort", action="store_true",
                        help="publish images best effort (default reliable, depth 10)")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--drain-timeout", type=float, default=5.0,
                        help="after the last frame, wait this long for outstanding masks")
    parser.add_argument("--idle-timeout", type=float, default=10.0,
                        help="--no-play: stop this long after the last frame/mask")
    add_output_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dfanet_ros.bag_replay`` / ``dfanet-bag-replay``."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.out is None and not args.play_only:
        parser.error("--out is required (except with --play-only)")
    setup_logging(args.verbose)
    out_dir = Path(args.out or ".")

    def work() -> dict[str, Any] | None:
        settings = ReplaySettings(
            image_topic=args.image_topic, label_topic=args.label_topic, rate=args.rate,
            mask_topic=args.mask_topic, play=not args.no_play,
            start_node=not (args.no_node or args.play_only), play_only=args.play_only,
            checkpoint=args.checkpoint, backend=args.backend, precision=args.precision,
            input_size=tuple(args.input_size) if args.input_size else None,
            node_params=list(args.node_param), startup_timeout_s=args.startup_timeout,
            drain_timeout_s=args.drain_timeout, idle_timeout_s=args.idle_timeout,
            publish_reliable=not args.best_effort, out_storage=args.out_storage,
            video=not args.no_video, progress=not args.no_progress)
        if args.play_only and args.no_play:
            raise ValueError("--play-only and --no-play exclude each other")
        own_graph = settings.play and settings.start_node
        env = ros_environment(args.domain_id, out_dir / "ros_log", own_graph=own_graph)
        LOG.info("ROS_DOMAIN_ID=%s, discovery %s, Fast DDS transports %s", env["ROS_DOMAIN_ID"]
                 if "ROS_DOMAIN_ID" in env else "0 (unset)",
                 env["ROS_AUTOMATIC_DISCOVERY_RANGE"], env["FASTDDS_BUILTIN_TRANSPORTS"])
        os.environ.update(env)  # this process's rclpy reads them at init
        if args.play_only:
            sent = play_only(args.bag, settings)
            sys.stdout.write(f"published {sent} frames on {args.image_topic}\n")
            return None
        return run_replay(args.bag, out_dir, settings, env)

    return run_cli(work, out_dir, args.verbose, LOG)


if __name__ == "__main__":
    sys.exit(main())
