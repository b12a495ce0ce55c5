"""Live replay: play a bag onto ROS topics while the segmentation node runs, collect its masks.

    python -m dfanet_ros.bag_replay BAG --image-topic T [--label-topic L] [--rate X] --out DIR

What ``ros2 bag play`` + a recorder + an evaluator give on a full install, in one command:

1. starts the node (``python -m dfanet_ros.segment_node --ros-args ...`` with the image topic
   remapped) in its own process, unless told one runs already (``NodeSettings.start``);
2. waits until the node is connected and warm (one probe frame, with a stamp outside the bag,
   must come back as a mask), then plays the image topic at the bag's recorded timing (log
   times) divided by ``rate``, publishing the recorded bytes unchanged; with ``lockstep`` each
   frame goes out once the previous one's mask came back (no drops by construction: accuracy
   through the live node on any machine); with ``play=False`` it only listens while something
   else (``ros2 bag play``) plays;
3. collects every mask by header stamp, measures end-to-end latency (publish -> mask received,
   one clock), input and output rates and dropped frames (frames sent with no mask back),
   writes the masks into ``DIR/segmentation_bag`` aligned to the input stamps and log times;
4. evaluates accuracy against the label topic with the same code as the offline evaluation
   (:mod:`dfanet_ros.bag.evaluate`, ``dfanet_core.metrics``) and writes the same report files.

After the last frame it waits for outstanding masks until the node's diagnostics say it holds no
frame any more (or, as a safety net, until no mask came for ``Timeouts.drain_s``). The command
line is in :mod:`dfanet_ros.bag.cli`; the ROS environment comes from
:func:`dfanet_ros.graph.ros_environment`.
"""

from __future__ import annotations

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfanet_core.deploy.options import RuntimeOptions
from dfanet_core.files import resolve_checkpoint
from dfanet_core.reports import summarize_ms

from ..diagnostics import Status, node_idle, status_from_msg, status_name, values_dict
from ..graph import NodeProcess, RosClient
from .evaluate import (
    MASK_TOPIC,
    OUTPUT_BAG_NAME,
    AccuracyMeter,
    EvalSettings,
    OutputSettings,
    OverlayRecorder,
    bag_frame_rate,
    build_report,
    output_storage,
    preflight,
    write_report,
)
from .io import (
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

LOG = logging.getLogger("dfanet_ros.bag_replay")
READY_LINE = "collector ready"
# Probe frames reuse the first image with a stamp this far before the bag's first stamp.
PROBE_OFFSET_NS = 3_600 * 1_000_000_000


class ReplayError(RuntimeError):
    """The live replay could not run (node died, never connected, nothing arrived)."""


@dataclass(frozen=True)
class ReplaySettings:
    """What to play (or listen to) and how."""

    image_topic: str
    label_topic: str | None = None
    mask_topic: str = MASK_TOPIC
    rate: float = 1.0                 # multiplier of the recorded rate
    lockstep: bool = False            # each frame once the previous one's mask came back
    play: bool = True                 # False: listen while something else plays
    publish_reliable: bool = True
    publish_depth: int = 10
    wait_subscribers: int = 1         # --play-only: start once this many subscriptions match

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"--rate must be > 0 (a multiplier of the recorded rate), "
                             f"got {self.rate}")
        if self.wait_subscribers < 1:
            raise ValueError(f"--wait-subscribers must be >= 1, got {self.wait_subscribers}")


@dataclass(frozen=True)
class NodeSettings:
    """The node the replay starts (``start=False``: one is already running)."""

    start: bool = True
    checkpoint: str | None = None     # None: the shipped weights
    runtime: RuntimeOptions = RuntimeOptions()
    extra_params: tuple[str, ...] = ()  # NAME:=VALUE, after the ones from ``runtime``


@dataclass(frozen=True)
class Timeouts:
    """Deadlines (seconds): safety nets, never measurements."""

    startup_s: float = 120.0          # node connected and model loaded
    drain_s: float = 5.0              # after the last frame: no mask for this long -> done
    idle_s: float = 10.0              # listening: stop this long after the last frame/mask
    wait_s: float = 600.0             # listening / play-only: give up when nothing happens
    lockstep_s: float = 60.0          # lockstep: a frame without a mask by then is dropped


# -- the node ------------------------------------------------------------------------------------
def node_remaps(settings: ReplaySettings, compressed: bool) -> list[tuple[str, str]]:
    """The node's input and mask topics remapped to the replay's."""
    input_name = "image/compressed" if compressed else "image"
    return [(input_name, settings.image_topic), ("segmentation/mask", settings.mask_topic)]


def node_parameter_args(node: NodeSettings, checkpoint: Path | None,
                        compressed: bool) -> list[str]:
    """The node's parameters as ``-p NAME:=VALUE`` rules (``extra_params`` last)."""
    runtime = node.runtime
    values: dict[str, Any] = {
        "input_type": "compressed" if compressed else "raw",
        "backend": runtime.backend,
        "precision": runtime.precision or "fp32",
        # A deeper output history so that the collector never loses a mask to QoS.
        "output_depth": 10,
    }
    if checkpoint is not None:
        values["checkpoint"] = checkpoint.resolve()
    if runtime.input_size:
        values["input_size"] = f"[{runtime.input_size[0]}, {runtime.input_size[1]}]"
    if runtime.resize_mode != "stretch":
        values["resize_mode"] = runtime.resize_mode
    if runtime.intra_op_threads:
        values["threads"] = runtime.intra_op_threads
    if runtime.engine_cache_dir:
        values["engine_cache_dir"] = runtime.engine_cache_dir.resolve()
    if runtime.device and runtime.device.startswith("cuda:"):
        values["gpu_id"] = int(runtime.device.split(":", 1)[1])
    args = [arg for name, value in values.items() for arg in ("-p", f"{name}:={value}")]
    for param in node.extra_params:
        args += ["-p", param]
    return args


def start_node(settings: ReplaySettings, node: NodeSettings, checkpoint: Path | None,
               compressed: bool, env: dict[str, str], out_dir: Path) -> NodeProcess:
    """``python -m dfanet_ros.segment_node --ros-args ...`` in its own process, its output in
    ``out_dir/node.log``."""
    process = NodeProcess(None, env, out_dir, remaps=node_remaps(settings, compressed),
                          extra_args=node_parameter_args(node, checkpoint, compressed))
    LOG.info("starting node: %s", " ".join(process.command))
    return process


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


@dataclass(frozen=True)
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
class ReplayGraph(RosClient):
    """The replay's rclpy client: the image publisher (or, listening, an observer), the mask
    subscription, the node's class info and diagnostics. Callbacks only timestamp and queue."""

    def __init__(self, settings: ReplaySettings, image_type: str, *,
                 watch_node: bool = True) -> None:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        super().__init__(f"dfanet_bag_replay_{os.getpid()}")
        self.msg_class = CompressedImage if image_type == COMPRESSED_TYPE else Image
        self.mask_topic = settings.mask_topic
        self.image_topic = settings.image_topic
        self.masks: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.observed: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.statuses: queue.Queue[tuple[int, Status]] = queue.Queue()
        self.model_ready = threading.Event()
        self.class_info: dict[str, Any] | None = None
        self.publisher = None
        self.mask_subscription = None
        if settings.play:
            reliability = (ReliabilityPolicy.RELIABLE if settings.publish_reliable
                           else ReliabilityPolicy.BEST_EFFORT)
            self.publisher = self.node.create_publisher(
                self.msg_class, self.image_topic,
                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=settings.publish_depth,
                           reliability=reliability))
        else:
            self.node.create_subscription(
                self.msg_class, self.image_topic,
                lambda data: self.observed.put((time.monotonic_ns(), data)),
                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                           reliability=ReliabilityPolicy.BEST_EFFORT), raw=True)
        if watch_node:
            from diagnostic_msgs.msg import DiagnosticArray
            from std_msgs.msg import String

            from ..qos import latched_qos

            self.node.create_subscription(String, class_info_topic(self.mask_topic),
                                          self._on_class_info, latched_qos())
            self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                          self._on_diagnostics, 50)
        self.start()

    def _on_class_info(self, msg: Any) -> None:
        try:
            self.class_info = json.loads(msg.data)
        except ValueError:
            LOG.warning("unreadable class info on %s: %.80s", class_info_topic(self.mask_topic),
                        msg.data)
            return
        self.model_ready.set()

    def _on_diagnostics(self, msg: Any) -> None:
        now = time.monotonic_ns()
        for status in msg.status:
            self.statuses.put((now, status_from_msg(status)))

    def subscribe_masks(self) -> None:
        """Subscribe to the masks with the reliability their publisher offers."""
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        infos = self.node.get_publishers_info_by_topic(self.mask_topic)
        reliability = ReliabilityPolicy.RELIABLE
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                         for i in infos):
            reliability = ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=reliability)
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
        return masks_ok and (self.publisher is None or self.subscribers() > 0)

    def subscribers(self) -> int:
        """Subscriptions matched to our image publisher."""
        return self.publisher.get_subscription_count() if self.publisher is not None else 0

    def publish(self, data: bytes) -> None:
        """Publish serialized image bytes as they are."""
        assert self.publisher is not None
        self.publisher.publish(data)

    def wait_acknowledged(self, timeout_s: float) -> bool:
        """Reliable publishing: wait until every subscriber acknowledged what was sent."""
        from rclpy.duration import Duration

        if self.publisher is None:
            return True
        return self.publisher.wait_for_all_acked(Duration(nanoseconds=int(timeout_s * 1e9)))


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
    """Takes masks off the graph's queue, records arrival times and (with a ``writer``) writes
    them to the output bag with the input's stamp and log time, aligned with the input bag."""

    def __init__(self, graph: ReplayGraph, log_times: dict[int, int], log: ReplayLog,
                 writer: AtomicBagWriter | None = None) -> None:
        self.graph = graph
        self.writer = writer
        self.log_times = log_times
        self.log = log
        self.probe_stamps: set[int] = set()
        self.probes_back: set[int] = set()
        self.masks_seen = 0
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
            self.masks_seen += 1
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
        if self.writer is not None:
            self.writer.write_raw(MASK_TOPIC, self.log_times[stamp], data)


def wait_until_connected(graph: ReplayGraph, node: NodeProcess | None, timeout_s: float) -> None:
    """Wait for the node's mask publisher (and its image subscription when we play)."""
    deadline = time.monotonic() + timeout_s

    def wait(condition: Any, period_s: float) -> None:
        while not condition():  # graph discovery has no event to wait on: poll it
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


def wait_for_model(graph: ReplayGraph, node: NodeProcess | None, timeout_s: float) -> None:
    """Wait for the node's class info (latched, published once its model is loaded)."""
    deadline = time.monotonic() + timeout_s
    while not graph.model_ready.wait(timeout=0.5):
        if node is not None:
            node.check_alive()
        if time.monotonic() > deadline:
            if node is not None:
                raise ReplayError(f"the node did not load its model within {timeout_s:.0f} s; "
                                  f"end of its log:\n{node.log_tail()}")
            LOG.warning("no class info on %s: cannot tell whether the node's model is loaded",
                        class_info_topic(graph.mask_topic))
            return


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
        retry_at = time.monotonic() + 2.0  # best effort may lose a probe: send another
        while time.monotonic() < min(retry_at, deadline):
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
         settings: ReplaySettings, log: ReplayLog, progress: bool,
         lockstep_timeout_s: float = 60.0) -> None:
    """Publish each frame at its recorded log time / rate (handling masks in between), or, with
    ``settings.lockstep``, each once the previous one's mask came back (``sink`` needed)."""
    from tqdm import tqdm

    pace = "lockstep" if settings.lockstep else f"x{settings.rate:g}"
    bar = tqdm(total=total, desc=f"replay {pace}", unit="frame", disable=not progress)
    start_wall = None
    first_log = 0
    for item in items:
        if start_wall is None:
            start_wall, first_log = time.monotonic_ns(), item.log_time_ns
        due = start_wall + (item.log_time_ns - first_log) / settings.rate
        while not settings.lockstep and (remaining := (due - time.monotonic_ns()) / 1e9) > 0:
            if sink is not None:
                sink.drain(timeout_s=min(remaining, 0.02))
            else:
                time.sleep(min(remaining, 0.02))
        log.sent[item.stamp_ns] = time.monotonic_ns()
        graph.publish(item.data)
        if settings.lockstep:
            assert sink is not None, "lockstep needs the masks"
            deadline = time.monotonic() + lockstep_timeout_s
            while item.stamp_ns not in log.received and time.monotonic() < deadline:
                sink.drain(timeout_s=0.05)
            if item.stamp_ns not in log.received:
                LOG.warning("no mask for %s within %.0f s: counted as dropped",
                            format_stamp(item.stamp_ns), lockstep_timeout_s)
        bar.update(1)
    bar.close()


def drain_until_complete(graph: ReplayGraph, sink: MaskSink, log: ReplayLog,
                         timeout_s: float) -> None:
    """After the last frame: handle masks until every frame has one, or the node reports twice
    (diagnostics received after the last publish, the same frames_in) that it holds no frame
    and every mask it published arrived; ``timeout_s`` without a mask is the safety net."""
    last_sent = max(log.sent.values(), default=0)
    node_status = status_name(graph.class_info["node"]) if graph.class_info else None
    idle_reports: list[int] = []
    last_progress = time.monotonic()
    while log.missing() and time.monotonic() - last_progress < timeout_s:
        if sink.drain(timeout_s=0.05):
            last_progress = time.monotonic()
        while True:
            try:
                received, status = graph.statuses.get_nowait()
            except queue.Empty:
                break
            if received < last_sent or (node_status and status.name != node_status):
                continue
            values = values_dict(status)
            if node_idle(status) and int(values["frames_out"]) <= sink.masks_seen:
                idle_reports.append(int(values["frames_in"]))
            else:
                idle_reports.clear()
        if len(idle_reports) >= 2 and idle_reports[-1] == idle_reports[-2]:
            return


def listen(graph: ReplayGraph, sink: MaskSink, log: ReplayLog, expected: int,
           timeouts: Timeouts) -> None:
    """Record the frames someone else plays and the masks that come back, until every bag frame
    has a mask or nothing happened for ``timeouts.idle_s``."""
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
            if now - started > timeouts.wait_s:
                raise ReplayError(f"no frame was played on {graph.image_topic} within "
                                  f"{timeouts.wait_s:.0f} s")
        elif now - last_activity > timeouts.idle_s:
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
def model_fields(checkpoint: Path | None, runtime: RuntimeOptions,
                 class_info: dict[str, Any] | None) -> dict[str, Any]:
    """Classes, palette and model description: from the node's class info when it sent one
    (what really ran), else from the checkpoint."""
    meta: dict[str, Any] = {}
    if checkpoint is not None:
        from dfanet_core.checkpoint import read_checkpoint

        meta = read_checkpoint(checkpoint)[1]
    if class_info is None and not meta:
        raise ReplayError("no class information: the node sent no class info and no "
                          "--checkpoint was given")
    info = class_info or {}
    palette = ([[(c >> 16) & 255, (c >> 8) & 255, c & 255] for c in info["palette"]]
               if "palette" in info else meta["palette"])
    return {
        "checkpoint": info.get("checkpoint", str(checkpoint) if checkpoint else None),
        "variant": info.get("model", meta.get("variant")),
        "trained": info.get("trained", meta.get("trained")),
        "dataset": info.get("dataset", meta.get("dataset")),
        "backend": info.get("backend", runtime.backend),
        "precision": info.get("precision", runtime.precision or "fp32"),
        "input_size": info.get("network_input_size", meta.get("input_size")),
        "num_classes": int(info.get("num_classes", meta.get("num_classes", 0))),
        "class_names": list(info.get("class_names", meta.get("class_names", []))),
        "palette": palette,
        "ignore_index": int(meta.get("ignore_index", 255)),
    }


def run_replay(bag_path: str | os.PathLike, out_dir: str | os.PathLike,
               settings: ReplaySettings, node: NodeSettings, env: dict[str, str],
               timeouts: Timeouts = Timeouts(),
               outputs: OutputSettings = OutputSettings()) -> dict[str, Any]:
    """Replay (or listen to) a bag through the node and write the report; returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = (resolve_checkpoint(node.checkpoint) if node.start or node.checkpoint
                  else None)
    with open_bag(bag_path) as bag:
        info = preflight(bag, settings.image_topic, settings.label_topic)
        log_times = scan_stamps(bag, settings.image_topic)
        compressed = info["image_type"] == COMPRESSED_TYPE
        process = (start_node(settings, node, checkpoint, compressed, env, out_dir)
                   if node.start else None)
        log = ReplayLog()
        probe_ms = None
        try:
            with ReplayGraph(settings, info["image_type"]) as graph:
                wait_until_connected(graph, process, timeouts.startup_s)
                wait_for_model(graph, process, timeouts.startup_s)
                model = model_fields(checkpoint, node.runtime, graph.class_info)
                with AtomicBagWriter(out_dir / OUTPUT_BAG_NAME, output_storage(
                        bag, outputs.storage), overwrite=True) as writer:
                    writer.add_topic(MASK_TOPIC, IMAGE_TYPE)
                    sink = MaskSink(graph, log_times, log, writer)
                    if settings.play:
                        first = next(image_messages(bag, settings.image_topic))
                        probe_ms = probe(graph, sink, process, first, timeouts.startup_s)
                        LOG.info("node ready (probe round trip %.1f ms); replaying %s",
                                 probe_ms, "in lockstep" if settings.lockstep
                                 else f"at x{settings.rate:g}")
                        play(graph, sink, image_messages(bag, settings.image_topic),
                             len(log_times), settings, log, outputs.progress,
                             timeouts.lockstep_s)
                        drain_until_complete(graph, sink, log, timeouts.drain_s)
                    else:
                        listen(graph, sink, log, len(log_times), timeouts)
                    if not log.received:
                        raise ReplayError(_nothing_back(log, process))
        finally:
            node_exit = process.stop() if process is not None else None
        recorder = OverlayRecorder(out_dir, model["palette"], len(log.received),
                                   bag_frame_rate(bag, settings.image_topic) * settings.rate,
                                   outputs.strip_frames, video=outputs.video)
        try:
            meter = evaluate_replay(bag, out_dir, settings, model, log, recorder)
            written = recorder.finish()
        except BaseException:
            recorder.discard()
            raise
        report = _live_report(bag, info, settings, node, model, log, meter, probe_ms, node_exit)
    report["outputs"].update(written)
    if process is not None:
        report["outputs"]["node_log"] = process.log_path.name
    latencies = [(log.received[s] - log.sent[s]) / 1e6 for s in sorted(log.sent)
                 if s in log.received]
    write_report(out_dir, report, latencies, latency_label="end-to-end latency")
    return report


def play_only(bag_path: str | os.PathLike, settings: ReplaySettings,
              timeouts: Timeouts = Timeouts(), progress: bool = True) -> int:
    """Publish the bag's image topic at its recorded timing / rate (or in lockstep with the
    node's masks) once ``settings.wait_subscribers`` subscriptions are matched (the node, and a
    collector listening with ``--no-play``, which would miss the frames sent before it matched):
    what ``ros2 bag play`` does, for machines without it. Returns the frames published."""
    with open_bag(bag_path) as bag:
        info = preflight(bag, settings.image_topic, None)
        log = ReplayLog()
        with ReplayGraph(settings, info["image_type"], watch_node=False) as graph:
            deadline = time.monotonic() + timeouts.wait_s
            while graph.subscribers() < settings.wait_subscribers:  # discovery: poll the graph
                if time.monotonic() > deadline:
                    raise ReplayError(f"{graph.subscribers()} of the {settings.wait_subscribers}"
                                      f" subscriptions awaited on {settings.image_topic} "
                                      f"within {timeouts.wait_s:.0f} s (--wait-subscribers)")
                time.sleep(0.05)
            sink = None
            if settings.lockstep:
                wait_until_connected(graph, None, timeouts.startup_s)
                sink = MaskSink(graph, scan_stamps(bag, settings.image_topic), log)
            else:
                time.sleep(0.5)  # best effort: let the subscriber's discovery finish as well
            play(graph, sink, image_messages(bag, settings.image_topic), info["image_count"],
                 settings, log, progress, timeouts.lockstep_s)
            if settings.publish_reliable:
                graph.wait_acknowledged(timeouts.drain_s)
            else:
                time.sleep(0.5)  # best effort: nothing to wait on; give the last frames time
    return len(log.sent)


def _nothing_back(log: ReplayLog, node: NodeProcess | None) -> str:
    text = (f"no mask came back for any of the {len(log.sent)} frames sent"
            if log.sent else "no frame was seen on the image topic")
    if node is not None:
        text += f"; end of the node's log:\n{node.log_tail()}"
    return text


def _live_report(bag: Bag, info: dict[str, Any], settings: ReplaySettings, node: NodeSettings,
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
        "lockstep": settings.lockstep,
        "played_by": "bag_replay" if settings.play else "external (--no-play)",
        "node_started_by": "bag_replay" if node.start else "external (--no-node)",
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
