"""Drive a segment_node from Python: start it as a process, feed it images and record what it
publishes. Used by the demo, the node latency benchmark and the ROS tests.

    env = ros_environment(domain_id=42, log_dir=Path("/tmp/ros"))
    apply_ros_environment(env)                    # this process joins the same isolated graph
    with NodeProcess({"backend": "onnxruntime"}, env, workdir) as node, SegmentationClient() as c:
        c.wait_ready(node)
        stamp = c.publish_image(rgb)
        mask = c.wait_mask(stamp, node)

Every wait has a timeout that raises :class:`HarnessError` with the end of the node's log, so a
failing test or demo says why (the timeouts are safety nets, not measurements).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import conversions
from .diagnostics import Status, status_from_msg

NODE_MODULE = "dfanet_ros.segment_node"
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
ROS_ENV_KEYS = (
    "ROS_DOMAIN_ID",
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "FASTDDS_BUILTIN_TRANSPORTS",
    "RMW_IMPLEMENTATION",
    "ROS_LOG_DIR",
)


class HarnessError(RuntimeError):
    """The node did not start, died, or did not answer in time; the message has its log."""


def ros_environment(
    domain_id: int,
    log_dir: Path,
    base: Mapping[str, str] | None = None,
    discovery_range: str = "LOCALHOST",
) -> dict[str, str]:
    """Environment for a graph of this machine's processes: the domain, the discovery range,
    Fast DDS large-data transport.

    Caution (measured with rmw_fastrtps 9.3): with ``LOCALHOST`` discovery rmw_fastrtps sets its
    own transports and ignores LARGE_DATA, so best-effort messages over ~0.5 MB are lost; use
    reliable QoS for large frames there, or ``SUBNET`` discovery (LARGE_DATA then carries them
    after the first ~0.5 s of TCP connection set-up).
    """
    check_domain_id(domain_id)
    if discovery_range not in ("LOCALHOST", "SUBNET", "OFF", "SYSTEM_DEFAULT"):
        raise ValueError(f"unknown discovery range {discovery_range!r}")
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "ROS_DOMAIN_ID": str(domain_id),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": discovery_range,
            "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
            "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
            "ROS_LOG_DIR": str(log_dir),
        }
    )
    env.setdefault("HOME", str(log_dir))
    return env


def check_domain_id(domain_id: int, what: str = "ROS domain id") -> int:
    """``domain_id`` if it is a valid ROS 2 domain (0..232), else ValueError naming ``what``."""
    if not 0 <= domain_id <= 232:
        raise ValueError(f"{what} must be in 0..232, got {domain_id}")
    return domain_id


def process_domain_id() -> int:
    """A domain id (100..199) from this process's id, for a command that runs its own graph:
    parallel runs rarely share one."""
    return 100 + os.getpid() % 100


def apply_ros_environment(env: Mapping[str, str]) -> None:
    """Copy the ROS/DDS variables of ``env`` into this process (before rclpy creates a context)."""
    for key in ROS_ENV_KEYS + ("HOME",):
        if key in env:
            os.environ[key] = env[key]


def write_params_file(path: Path, params: Mapping[str, Any], node_key: str = "/**") -> Path:
    """A ROS 2 params YAML for ``params`` under ``node_key`` (``/**`` matches any node)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({node_key: {"ros__parameters": dict(params)}}))
    return path


class NodeProcess:
    """``python -m dfanet_ros.segment_node`` in a child process, output to ``<workdir>/node.log``.

    ``params`` is a dict (written to a params file), the path of a params file, or None (no
    params file: parameters only as ``-p`` rules in ``extra_args``); ``remaps`` are
    ``from:=to`` pairs; ``namespace`` sets ``__ns``.
    """

    def __init__(
        self,
        params: Mapping[str, Any] | Path | None,
        env: Mapping[str, str],
        workdir: Path,
        *,
        namespace: str = "",
        remaps: Iterable[tuple[str, str]] = (),
        extra_args: Iterable[str] = (),
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.command = [sys.executable, "-m", NODE_MODULE, "--ros-args"]
        if params is not None:
            params_file = (
                Path(params)
                if isinstance(params, (str, Path))
                else write_params_file(workdir / "params.yaml", params)
            )
            self.command += ["--params-file", str(params_file)]
        if namespace:
            self.command += ["-r", f"__ns:=/{namespace.strip('/')}"]
        for source, target in remaps:
            self.command += ["-r", f"{source}:={target}"]
        self.command += list(extra_args)
        self.log_path = workdir / "node.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        child_env = dict(env)
        # the child imports this very dfanet_ros/dfanet_core, installed or from a checkout
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PACKAGE_PARENT), child_env.get("PYTHONPATH", "")) if p
        )
        self.process = subprocess.Popen(
            self.command, env=child_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_alive(self) -> None:
        """HarnessError with the log's end if the node has exited."""
        code = self.process.poll()
        if code is not None:
            raise HarnessError(
                f"segment_node exited with code {code} ({' '.join(self.command)}); "
                f"end of {self.log_path}:\n{self.log_tail()}"
            )

    def wait_exit(self, timeout_s: float) -> int:
        """The exit code, once the node ends by itself (HarnessError after ``timeout_s``)."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"segment_node still running after {timeout_s} s; log:\n{self.log_tail()}"
            ) from None

    def rss_bytes(self) -> int:
        """Resident memory of the node process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise HarnessError(f"no VmRSS for pid {self.pid}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGINT (clean rclpy shutdown), then SIGTERM, then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
                try:
                    self.process.wait(timeout=timeout_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class SegmentationClient:
    """An rclpy node in this process, on its own context: publishes camera images to a
    segment_node and records its masks, colour images, confidences, class info and diagnostics.

    Topics are the node's relative names under ``namespace``. The environment (domain id,
    discovery range, transport) is taken from ``os.environ`` (see :func:`apply_ros_environment`).
    """

    def __init__(
        self,
        namespace: str = "",
        *,
        input_type: str = "raw",
        input_topic: str | None = None,
        input_reliable: bool = False,
        keep_pixels: bool = True,
        name: str = "dfanet_test_client",
    ) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from .qos import latched_qos

        self._Image, self._CompressedImage = Image, CompressedImage
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.prefix = f"/{namespace.strip('/')}/" if namespace.strip("/") else "/"
        self.keep_pixels = keep_pixels
        self._cond = threading.Condition()
        self.masks: dict[int, Received] = {}
        self.colors: dict[int, Received] = {}
        self.confidences: dict[int, Received] = {}
        self.class_info: dict[str, Any] | None = None
        self.statuses: list[tuple[float, Status]] = []
        self.published: dict[int, float] = {}  # stamp -> publish time (monotonic)
        self._last_stamp = 0

        reliability = (
            ReliabilityPolicy.RELIABLE if input_reliable else ReliabilityPolicy.BEST_EFFORT
        )
        compressed = input_type == "compressed"
        default_topic = "image/compressed" if compressed else "image"
        self.input_topic = input_topic or self.prefix + default_topic
        self._image_pub = self.node.create_publisher(
            CompressedImage if compressed else Image, self.input_topic,
            QoSProfile(depth=1, reliability=reliability),
        )
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(
            Image, self.prefix + "segmentation/mask",
            lambda m: self._store(self.masks, m), reliable,
        )
        self.node.create_subscription(
            String, self.prefix + "segmentation/class_info", self._on_class_info, latched_qos()
        )
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self._color_sub = None
        self._confidence_sub = None
        self._running = True
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="client-spin", daemon=True)
        self._spinner.start()

    # -- subscriptions --------------------------------------------------------------------
    def subscribe_color(self, enable: bool = True) -> None:
        """Start (or stop) listening on segmentation/color."""
        self._toggle("_color_sub", "segmentation/color", self.colors, enable)

    def subscribe_confidence(self, enable: bool = True) -> None:
        """Start (or stop) listening on segmentation/confidence."""
        self._toggle("_confidence_sub", "segmentation/confidence", self.confidences, enable)

    def _toggle(self, attr: str, topic: str, store: dict[int, Received], enable: bool) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        current = getattr(self, attr)
        if enable and current is None:
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
            sub = self.node.create_subscription(
                self._Image, self.prefix + topic, lambda m: self._store(store, m), qos
            )
            setattr(self, attr, sub)
        elif not enable and current is not None:
            self.node.destroy_subscription(current)
            setattr(self, attr, None)

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
        """Publish a raw image; returns its stamp (ns)."""
        msg = self._Image(**conversions.numpy_to_image_fields(pixels, encoding))
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
            self.published[stamp] = time.monotonic()
        self._image_pub.publish(msg)
        return stamp

    def input_subscribers(self) -> int:
        return self._image_pub.get_subscription_count()

    # -- waiting --------------------------------------------------------------------------
    def wait_for(
        self, predicate: Callable[[], Any], timeout_s: float, what: str,
        node: NodeProcess | None = None,
    ) -> Any:
        """Wait until ``predicate()`` is truthy (evaluated under the client's lock) and return
        it; HarnessError naming ``what`` (and the node's log) on timeout or node exit."""
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
        raise HarnessError(f"{state} waiting for {what} ({timeout_s} s){log}")

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
        item = Received(stamp_ns(msg.header.stamp), msg.header.frame_id, msg.encoding, array,
                        now, msg.width, msg.height)
        with self._cond:
            store[item.stamp_ns] = item
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

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):
            while self._running and self.context.ok():
                self._executor.spin_once(timeout_sec=0.05)

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        self._running = False
        self._spinner.join(timeout=5.0)
        self._executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
