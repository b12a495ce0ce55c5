"""Drive a segment_node from Python: start it as a process (:class:`NodeProcess`), feed it
images and record what it publishes (:class:`SegmentationClient`). The tests, the demo and the
node latency benchmark use it; ``test/test_ros_testing.py`` tests it.

    env = ros_environment(42, discovery_range="LOCALHOST")   # dfanet_ros.graph
    apply_ros_environment(env)                    # this process joins the same isolated graph
    with NodeProcess({"backend": "onnxruntime"}, env, workdir) as node, SegmentationClient() as c:
        c.wait_ready(node)
        stamp = c.publish_image(rgb)
        mask = c.wait_mask(stamp, node)

Every wait has a timeout that raises :class:`NodeError` with the end of the node's log, so a
failing test or demo says why (the timeouts are safety nets, not measurements).
"""

from __future__ import annotations

import array
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import conversions
from .diagnostics import Status, node_idle, status_from_msg, values_dict
from .graph import (
    ROS_ENV_KEYS,
    NodeError,
    NodeProcess,
    RosClient,
    apply_ros_environment,
    ros_environment,
    write_params_file,
)

__all__ = [
    "ROS_ENV_KEYS",
    "NodeError",
    "NodeProcess",
    "Received",
    "SegmentationClient",
    "apply_ros_environment",
    "ros_environment",
    "write_params_file",
]



@dataclass
class Received:
    """One image a segment_node published, as this process received it."""

    stamp_ns: int
    frame_id: str
    encoding: str
    array: np.ndarray | None  # None when the client keeps no pixels
    received: float  # time.monotonic()
    width: int
    height: int


class SegmentationClient(RosClient):
    """A :class:`~dfanet_ros.graph.RosClient` that publishes camera images (and camera_info) to a
    segment_node and records what it publishes: masks, colour images, confidences, PNG masks,
    camera_info, class info, label info and diagnostics; it also sets the node's parameters and
    drives its lifecycle through the real services.

    Topics are the node's relative names under ``namespace``. The environment (domain id,
    discovery range, transport) is taken from ``os.environ`` (see :func:`apply_ros_environment`).
    ``subscribe_mask=False`` starts without a mask subscription (lazy mode: nobody listens).
    """

    def __init__(
        self,
        namespace: str = "",
        *,
        input_type: str = "raw",
        input_topic: str | None = None,
        input_reliable: bool = False,
        input_depth: int = 1,
        keep_pixels: bool = True,
        subscribe_mask: bool = True,
        name: str = "dfanet_test_client",
    ) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_msgs.msg import String

        from .qos import latched_qos

        super().__init__(name)
        self._Image, self._CompressedImage, self._CameraInfo = Image, CompressedImage, CameraInfo
        self.prefix = f"/{namespace.strip('/')}/" if namespace.strip("/") else "/"
        self.keep_pixels = keep_pixels
        self._cond = threading.Condition()
        self.masks: dict[int, Received] = {}
        self.colors: dict[int, Received] = {}
        self.confidences: dict[int, Received] = {}
        self.compressed_masks: dict[int, Any] = {}  # stamp -> CompressedImage
        self.camera_infos: dict[int, Any] = {}  # stamp -> CameraInfo
        self.class_info: dict[str, Any] | None = None
        self.label_infos: list[Any] = []  # vision_msgs/LabelInfo, in arrival order
        self.statuses: list[tuple[float, Status]] = []
        self.published: dict[int, float] = {}  # stamp -> publish time (monotonic)
        self.publish_call_ms: dict[int, float] = {}  # stamp -> time spent in publish()
        self._last_stamp = 0

        reliability = (
            ReliabilityPolicy.RELIABLE if input_reliable else ReliabilityPolicy.BEST_EFFORT
        )
        compressed = input_type == "compressed"
        default_topic = "image/compressed" if compressed else "image"
        self.input_topic = input_topic or self.prefix + default_topic
        self._image_pub = self.node.create_publisher(
            CompressedImage if compressed else Image, self.input_topic,
            QoSProfile(depth=input_depth, reliability=reliability),
        )
        self._camera_info_pub = self.node.create_publisher(
            CameraInfo, self.prefix + "camera_info",
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._image_buffer: Any = None
        self.node.create_subscription(
            String, self.prefix + "segmentation/class_info", self._on_class_info, latched_qos()
        )
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self._subs: dict[str, Any] = {}
        if subscribe_mask:
            self.subscribe_mask()
        self.start()

    # -- subscriptions --------------------------------------------------------------------
    def subscribe_mask(self, enable: bool = True) -> None:
        """Start (or stop) listening on segmentation/mask."""
        self._toggle("mask", self._Image, lambda m: self._store(self.masks, m), enable)

    def subscribe_color(self, enable: bool = True) -> None:
        """Start (or stop) listening on segmentation/color."""
        self._toggle("color", self._Image, lambda m: self._store(self.colors, m), enable)

    def subscribe_confidence(self, enable: bool = True) -> None:
        """Start (or stop) listening on segmentation/confidence."""
        self._toggle("confidence", self._Image, lambda m: self._store(self.confidences, m),
                     enable)

    def subscribe_compressed_mask(self, enable: bool = True) -> None:
        """Start (or stop) listening on segmentation/mask/compressed (kept as messages)."""
        self._toggle("mask/compressed", self._CompressedImage,
                     lambda m: self._keep(self.compressed_masks, m), enable)

    def subscribe_camera_info(self, enable: bool = True) -> None:
        """Start (or stop) listening on segmentation/camera_info (kept as messages)."""
        self._toggle("camera_info", self._CameraInfo,
                     lambda m: self._keep(self.camera_infos, m), enable)

    def subscribe_label_info(self, qos: Any = None) -> Any:
        """Listen on segmentation/label_info (vision_msgs/LabelInfo) with ``qos`` (default:
        reliable + transient local, so the latched message arrives); returns the subscription."""
        from vision_msgs.msg import LabelInfo

        from .qos import latched_qos

        def on_label_info(msg: Any) -> None:
            with self._cond:
                self.label_infos.append(msg)
                self._cond.notify_all()

        return self.node.create_subscription(
            LabelInfo, self.prefix + "segmentation/label_info", on_label_info,
            latched_qos() if qos is None else qos)

    def _toggle(self, output: str, msg_type: Any, callback: Any, enable: bool) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        current = self._subs.get(output)
        if enable and current is None:
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
            self._subs[output] = self.node.create_subscription(
                msg_type, f"{self.prefix}segmentation/{output}", callback, qos)
        elif not enable and current is not None:
            self.node.destroy_subscription(self._subs.pop(output))

    # -- the node's parameters and lifecycle (real services) ----------------------------------
    def _call(self, srv_type: Any, service: str, request: Any, timeout_s: float = 60.0) -> Any:
        client = self.node.create_client(srv_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise NodeError(f"service {service} not available after {timeout_s} s")
            future = client.call_async(request)
            self.wait_for(future.done, timeout_s, f"a response from {service}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, values: dict[str, Any], node: str = "/segment_node") -> list[Any]:
        """Set parameters of a node through its set_parameters service: one
        rcl_interfaces/SetParametersResult (successful, reason) per value, in order."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return list(self._call(SetParameters, f"{node}/set_parameters", request).results)

    def get_parameters(self, names: list[str], node: str = "/segment_node") -> list[Any]:
        """Values of ``names`` on a node through its get_parameters service."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        response = self._call(GetParameters, f"{node}/get_parameters",
                              GetParameters.Request(names=names))
        return [parameter_value_to_python(v) for v in response.values]

    def change_state(self, transition: str, node: str = "/segment_node",
                     timeout_s: float = 300.0) -> bool:
        """Trigger a lifecycle transition by label ('configure', 'activate', 'deactivate',
        'cleanup', 'shutdown') through ``<node>/change_state``; True if it succeeded."""
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.label = transition
        return bool(self._call(ChangeState, f"{node}/change_state", request, timeout_s).success)

    def lifecycle_state(self, node: str = "/segment_node") -> str:
        """The node's lifecycle state label ('unconfigured', 'inactive', 'active', ...)."""
        from lifecycle_msgs.srv import GetState

        return self._call(GetState, f"{node}/get_state", GetState.Request()).current_state.label

    # -- publishing -----------------------------------------------------------------------
    def next_stamp(self) -> int:
        """A fresh stamp (ns): the wall clock, like a live camera, strictly increasing so that
        every frame is identifiable."""
        with self._cond:
            self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
            return self._last_stamp

    def publish_image(
        self, pixels: np.ndarray, encoding: str = "rgb8", stamp: int | None = None,
        frame_id: str = "camera",
    ) -> int:
        """Publish a raw image; returns its stamp (ns). The pixels are copied once, into a buffer
        reused from frame to frame (rclpy copies it again when it publishes)."""
        msg = conversions.fill_image(self._Image(check_fields=True), pixels, encoding,
                                     self._image_buffer)
        self._image_buffer = msg.data
        return self.publish_msg(msg, stamp, frame_id)

    def publish_compressed(
        self, data: bytes, fmt: str = "rgb8; jpeg compressed bgr8", stamp: int | None = None,
        frame_id: str = "camera",
    ) -> int:
        """Publish a CompressedImage with ``data`` (JPEG/PNG bytes); returns its stamp (ns)."""
        msg = self._CompressedImage(format=fmt)
        msg.data = array.array("B", data)
        return self.publish_msg(msg, stamp, frame_id)

    def publish_msg(self, msg: Any, stamp: int | None = None, frame_id: str = "camera") -> int:
        """Publish a prepared Image/CompressedImage (any fields, e.g. broken ones) stamped now."""
        stamp = self.next_stamp() if stamp is None else stamp
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.header.frame_id = frame_id
        with self._cond:
            self.published[stamp] = sent = time.monotonic()
        self._image_pub.publish(msg)
        self.publish_call_ms[stamp] = (time.monotonic() - sent) * 1e3  # serialisation, mostly
        return stamp

    def publish_camera_info(self, width: int, height: int, stamp: int,
                            frame_id: str = "camera") -> None:
        """Publish a sensor_msgs/CameraInfo for images of ``width`` x ``height`` on the node's
        ``camera_info`` (reliable, depth 10) stamped ``stamp`` (ns)."""
        msg = self._CameraInfo(width=width, height=height, distortion_model="plumb_bob")
        msg.k = [500.0, 0.0, width / 2, 0.0, 500.0, height / 2, 0.0, 0.0, 1.0]
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.header.frame_id = frame_id
        self._camera_info_pub.publish(msg)

    def camera_info_subscribers(self) -> int:
        return self._camera_info_pub.get_subscription_count()

    def input_subscribers(self) -> int:
        return self._image_pub.get_subscription_count()

    # -- waiting --------------------------------------------------------------------------
    def wait_for(
        self, predicate: Callable[[], Any], timeout_s: float, what: str,
        node: NodeProcess | None = None,
    ) -> Any:
        """Wait until ``predicate()`` is truthy (evaluated under the client's lock) and return
        it; NodeError naming ``what`` (and the node's log) on timeout or node exit."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                if node is not None and not node.alive():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.2))
        log = f"\nnode log:\n{node.log_tail()}" if node is not None else ""
        state = "the node exited" if node is not None and not node.alive() else "timed out"
        raise NodeError(f"{state} waiting for {what} ({timeout_s} s){log}")

    def wait_ready(self, node: NodeProcess | None = None, timeout_s: float = 180.0) -> dict:
        """Class info (latched, published once the model is loaded) and a matched input."""
        info = self.wait_for(lambda: self.class_info, timeout_s, "class_info", node)
        self.wait_for(lambda: self.input_subscribers() > 0, 30.0, "input subscription", node)
        return info

    def wait_mask(self, stamp: int, node: NodeProcess | None = None,
                  timeout_s: float = 60.0) -> Received:
        return self.wait_for(lambda: self.masks.get(stamp), timeout_s, f"mask {stamp}", node)

    def wait_status(self, predicate: Callable[[Status], bool], node: NodeProcess | None = None,
                    timeout_s: float = 30.0, after: float | None = None,
                    what: str = "diagnostic status") -> Status:
        """The first status received after ``after`` (monotonic; default now) that satisfies
        ``predicate``."""
        since = time.monotonic() if after is None else after

        def find() -> Status | None:
            for received, status in self.statuses:
                if received >= since and predicate(status):
                    return status
            return None

        return self.wait_for(find, timeout_s, what, node)

    def wait_idle(self, node: NodeProcess | None = None, after: float | None = None,
                  timeout_s: float = 120.0) -> Status:
        """The node's second status in a row, received after ``after`` (monotonic; default now)
        with the same frames_in, saying it holds no frame, every mask it published having
        arrived here: the end of a burst, told by the node rather than by a quiet window."""
        since = time.monotonic() if after is None else after

        def settled() -> Status | None:
            recent = [s for t, s in self.statuses if t >= since]
            if len(recent) < 2:
                return None
            previous, last = recent[-2], recent[-1]
            frames = [values_dict(s) for s in (previous, last)]
            if (all(node_idle(s) for s in (previous, last))
                    and frames[0]["frames_in"] == frames[1]["frames_in"]
                    and int(frames[1]["frames_out"]) <= len(self.masks)):
                return last
            return None

        return self.wait_for(settled, timeout_s, "the node to finish its frames", node)

    def latencies_ms(self) -> dict[int, float]:
        """Publish -> mask received, per stamp, for masks of frames this client published."""
        with self._cond:
            return {
                s: (r.received - self.published[s]) * 1e3
                for s, r in self.masks.items()
                if s in self.published
            }

    # -- callbacks ------------------------------------------------------------------------
    def _store(self, store: dict[int, Received], msg: Any) -> None:
        now = time.monotonic()
        array = None
        if self.keep_pixels:
            array = np.array(conversions.image_to_numpy(msg))  # own copy
        item = Received(conversions.stamp_to_ns(msg.header.stamp), msg.header.frame_id,
                        msg.encoding, array, now, msg.width, msg.height)
        with self._cond:
            store[item.stamp_ns] = item
            self._cond.notify_all()

    def _keep(self, store: dict[int, Any], msg: Any) -> None:
        with self._cond:
            store[conversions.stamp_to_ns(msg.header.stamp)] = msg
            self._cond.notify_all()

    def _on_class_info(self, msg: Any) -> None:
        with self._cond:
            self.class_info = json.loads(msg.data)
            self._cond.notify_all()

    def _on_diagnostics(self, msg: Any) -> None:
        now = time.monotonic()
        with self._cond:
            for status in msg.status:
                if status.name.endswith(": segmentation"):
                    self.statuses.append((now, status_from_msg(status)))
            del self.statuses[:-500]
            self._cond.notify_all()

    def __enter__(self) -> SegmentationClient:
        return self
