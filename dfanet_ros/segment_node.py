"""The DFANet segmentation node: camera images in, class-id masks (+ colour, confidence,
class info, diagnostics) out.

    ros2 run dfanet_ros segment_node --ros-args --params-file config/segment.yaml
    python -m dfanet_ros.segment_node --ros-args -p backend:=onnxruntime -r image:=/cam/image

Topics (relative, so a namespace /cam1 gives /cam1/segmentation/mask):
    in   image                      sensor_msgs/Image             (input_type: raw)
         image/compressed           sensor_msgs/CompressedImage   (input_type: compressed)
    out  segmentation/mask          sensor_msgs/Image mono8, class id per pixel, input size+header
         segmentation/color         sensor_msgs/Image rgb8, only computed while subscribed
         segmentation/confidence    sensor_msgs/Image mono8 or 32FC1 (publish_confidence)
         segmentation/class_info    std_msgs/String JSON, transient local
         /diagnostics               diagnostic_msgs/DiagnosticArray, every diagnostics_period_s

The callback only checks the header and hands the message to a worker thread through a
one-item slot (newest frame wins, replaced frames count as dropped), so it never waits for
inference; the worker also loads the model, so diagnostics report progress while an engine
builds. This file is glue over ``params``, ``pipeline``, ``stats``, ``diagnostics``,
``conversions`` and ``qos``. The full contract: docs/ros_interface.md.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_policy_name_from_kind
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from . import conversions, diagnostics, params, pipeline
from .graph import PythonLogBridge
from .params import NodeConfig, ParameterError
from .pipeline import BackendFailure, BadFrame, Frame
from .qos import describe_qos, latched_qos, make_qos
from .stats import PipelineStats, frame_latencies

NODE_NAME = "segment_node"
IGNORE_VALUE = 255  # mask value reserved for "no prediction" (not produced by the current model)
EXIT_OK, EXIT_FAILED, EXIT_BAD_PARAMETER = 0, 1, 2


class SegmentNode(Node):
    """Subscribes to camera images, runs the Segmenter on the newest one, publishes masks."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.config: NodeConfig = self._declare_parameters()
        self.checkpoint = params.model_source(self.config)
        self.finished: Future = Future()  # result: the process exit code
        self.stats = PipelineStats(time.monotonic(), max(2.0, self.config.no_input_timeout_s),
                                   self.config.error_window_s)
        self.thresholds = diagnostics.Thresholds.of(self.config)
        self._throttle = pipeline.LogThrottle(5.0)
        self._slot: pipeline.LatestSlot[Frame] = pipeline.LatestSlot()
        self._stop = threading.Event()
        self._state = ("loading", "loading checkpoint", time.monotonic())
        self._segmenter: Any = None
        self._input_resolution = ""
        self._log_bridge = PythonLogBridge(self.get_logger(), "dfanet_core")
        self._create_interfaces()
        self._info = diagnostics.pipeline_info(
            self.get_fully_qualified_name(), self.config, self._sub.topic_name,
            str(self.checkpoint))
        self._ready_guard = self.create_guard_condition(self._on_model_ready)
        self._worker = threading.Thread(target=self._work, name="segmentation", daemon=True)
        self._worker.start()
        self.create_timer(self.config.diagnostics_period_s, self._publish_diagnostics)

    # -- set-up ---------------------------------------------------------------------------
    def _declare_parameters(self) -> NodeConfig:
        """Declare every parameter (read-only, with description and constraints), validate."""
        declared = self.declare_parameters("", [
            (spec.name, spec.default, ParameterDescriptor(
                description=spec.description, additional_constraints=spec.constraints,
                read_only=True, dynamic_typing=True))  # types are checked by config_from_values
            for spec in params.PARAMETERS
        ])
        for message in params.unknown_parameters(getattr(self, "_parameter_overrides", {})):
            self.get_logger().warning(message)
        return params.config_from_values({p.name: p.value for p in declared})

    def _create_interfaces(self) -> None:
        config = self.config
        output_qos = make_qos(config.output_qos, config.output_depth)
        input_qos = make_qos(config.input_qos, config.input_depth)
        self._mask_pub, self._color_pub, self._confidence_pub = (
            self.create_publisher(Image, f"segmentation/{name}", output_qos) if wanted else None
            for name, wanted in (("mask", True), ("color", config.publish_color),
                                 ("confidence", config.publish_confidence)))
        self._class_info_pub = self.create_publisher(String, "segmentation/class_info",
                                                     latched_qos())
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        msg_type = CompressedImage if config.input_type == "compressed" else Image
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos,
                                            message_lost=self._on_message_lost)
        self._sub = self.create_subscription(msg_type, config.input_topic, self._on_image,
                                             input_qos, event_callbacks=events)
        self.get_logger().info(
            f"subscribed to {self._sub.topic_name} ({msg_type.__name__}, "
            f"{describe_qos(input_qos)}); publishing {self._mask_pub.topic_name} "
            f"({describe_qos(output_qos)})")

    # -- callbacks (executor thread) ------------------------------------------------------
    def _on_image(self, msg: Any) -> None:
        now = time.monotonic()
        self.stats.record_input(now)
        if self.config.input_type == "raw":
            try:  # O(1) header checks here; pixel work happens in the worker
                conversions.check_model_header(msg, self.config.max_input_pixels)
            except ValueError as exc:
                self._bad_frame(now, str(exc))
                return
        if self._slot.put(Frame(msg, now)):
            self.stats.record_drop(now)

    def _on_incompatible_qos(self, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        reason = (f"incompatible QoS with a publisher on {self._sub.topic_name}: policy "
                  f"{policy} (input_qos={self.config.input_qos}; a best-effort camera needs "
                  "SENSOR_DATA)")
        self.stats.record_failure(time.monotonic(), reason)
        self.get_logger().error(reason)

    def _on_message_lost(self, event: Any) -> None:
        self.stats.record_lost(int(event.total_count_change))

    def _on_model_ready(self) -> None:
        """Runs on the executor once the worker has loaded the model: class info out."""
        info = pipeline.class_info(self._segmenter, self.get_fully_qualified_name(),
                          self._mask_pub.topic_name, str(self.checkpoint), IGNORE_VALUE)
        self.declare_parameters("", [
            ("class_names", info["class_names"], _read_only("Class name of each id")),
            ("class_palette", info["palette"], _read_only("Colour of each id, 0xRRGGBB")),
            ("num_classes", info["num_classes"], _read_only("Number of classes")),
            ("ignore_value", IGNORE_VALUE, _read_only("Mask value for no prediction")),
        ])
        self._class_info_pub.publish(String(data=json.dumps(info)))
        height, width = info["network_input_size"]
        self.get_logger().info(
            f"ready: {info['model']} on {info['backend']} ({info['precision']}), network input "
            f"{width}x{height}, {info['num_classes']} classes")
        if self.config.build_only:
            self.get_logger().info("build_only: model and engine are ready, exiting")
            self.finished.set_result(EXIT_OK)

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        phase, detail, since = self._state
        status = diagnostics.build_status(
            self.stats.snapshot(now), self.thresholds,
            diagnostics.NodeState(phase, detail, now - since), self._info,
            self.count_publishers(self._sub.topic_name), self._input_resolution)
        stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(diagnostics.to_diagnostic_array([status], stamp))

    # -- worker thread --------------------------------------------------------------------
    def _work(self) -> None:
        try:
            self._segmenter = self._load_segmenter()
        except Exception as exc:  # noqa: BLE001 - reported, then the process exits 1
            self._state = ("failed", f"{type(exc).__name__}: {exc}", time.monotonic())
            self.get_logger().fatal(f"cannot load the model: {exc}")
            self._publish_diagnostics()
            self.finished.set_result(EXIT_FAILED)
            return
        self._state = ("ready", "", time.monotonic())
        self._ready_guard.trigger()
        while not self.config.build_only and not self._stop.is_set():
            frame = self._slot.take(timeout=0.5)
            if frame is not None:
                self._process(frame)

    def _load_segmenter(self) -> Any:
        import torch

        from dfanet_core import Segmenter

        config, name = self.config, self.checkpoint.name
        self.get_logger().info(f"loading {self.checkpoint} (backend {config.backend}, "
                               f"precision {config.precision})")
        started = time.monotonic()
        self._state = ("loading", f"loading {name} ({config.backend})", started)
        if config.threads:
            torch.set_num_threads(config.threads)
        segmenter = Segmenter.load(self.checkpoint,
                                   params.runtime_options(config, torch.cuda.is_available()))
        self._info = diagnostics.pipeline_info(
            self.get_fully_qualified_name(), config, self._sub.topic_name, str(self.checkpoint),
            segmenter)
        self.get_logger().info(f"model loaded in {time.monotonic() - started:.1f} s "
                               f"({segmenter.backend_name} on {segmenter.device})")
        if not segmenter.meta.get("trained", True):
            self.get_logger().warning(
                f"{self.checkpoint} holds UNTRAINED weights: the masks are meaningless")
        return segmenter

    def _process(self, frame: Frame) -> None:
        config = self.config
        try:
            result = pipeline.segment_frame(frame, self._segmenter,
                                   compressed=config.input_type == "compressed",
                                   max_pixels=config.max_input_pixels,
                                   confidence=self._confidence_pub is not None)
        except BadFrame as exc:
            self._bad_frame(time.monotonic(), str(exc))
            return
        except BackendFailure as exc:
            self._failure("backend error", str(exc), self.stats.record_backend_error)
            return
        header = frame.msg.header
        self._input_resolution = f"{result.mask.shape[1]}x{result.mask.shape[0]}"
        try:
            self._mask_pub.publish(
                Image(header=header, **conversions.mask_to_image_fields(result.mask)))
            self._publish_optional(header, result)
        except Exception as exc:  # noqa: BLE001 - e.g. shutting down; never kill the worker
            self._failure("backend error", f"publishing failed: {exc}",
                          self.stats.record_backend_error)
            return
        done = time.monotonic()
        self.stats.record_output(done, frame_latencies(
            result.timings_ms, frame.received, result.started, done,
            conversions.stamp_to_ns(header.stamp), self.get_clock().now().nanoseconds))

    def _publish_optional(self, header: Any, result: Any) -> None:
        config, seg = self.config, self._segmenter
        if self._color_pub is not None and self._color_pub.get_subscription_count() > 0:
            colour = pipeline.colour_output(result, seg.palette, config.color_mode,
                                            config.overlay_alpha)
            self._color_pub.publish(
                Image(header=header, **conversions.numpy_to_image_fields(colour, "rgb8")))
            self.stats.record_extra_output("color")
        if self._confidence_pub is not None and result.confidence is not None:
            fields = conversions.confidence_to_image_fields(result.confidence,
                                                            config.confidence_encoding)
            self._confidence_pub.publish(Image(header=header, **fields))
            self.stats.record_extra_output("confidence")

    def _bad_frame(self, now: float, reason: str) -> None:
        self._failure("bad frame", reason, self.stats.record_bad_frame, now)
    def _failure(self, kind: str, reason: str, record: Any, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        record(now, reason)
        held = self._throttle.admit(kind, now)
        if held is not None:
            more = f" ({held} more in the last {self._throttle.period_s:g} s)" if held else ""
            self.get_logger().error(f"{kind} on {self._sub.topic_name}: {reason}{more}")

    # -- shutdown -------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the worker (it finishes the frame in hand) and release the backend."""
        self._stop.set()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)
        if self._segmenter is not None:
            self._segmenter.close()
        self._log_bridge.detach()


def _read_only(description: str) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, read_only=True)


def main(args: list[str] | None = None) -> int:
    """Console entry point: run the node until Ctrl-C (or build_only / a fatal error)."""
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentNode()
        rclpy.spin_until_future_complete(node, node.finished)
        return node.finished.result() if node.finished.done() else EXIT_OK
    except ParameterError as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"invalid parameter: {exc}")
        return EXIT_BAD_PARAMETER
    except (KeyboardInterrupt, ExternalShutdownException):
        return EXIT_OK
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
