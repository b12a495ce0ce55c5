"""The DFANet segmentation node (contract: docs/ros_interface.md), glue over ``params``,
``pipeline``, ``outputs``, ``stats``, ``diagnostics``, ``conversions`` and ``qos``:
``python -m dfanet_ros.segment_node --ros-args --params-file config/segment.yaml``.

A lifecycle node: ``managed: true`` exposes the lifecycle services (configure loads the model,
activate subscribes, deactivate stops inference, cleanup frees it); unmanaged (the default) it
configures and activates itself. The image callback hands the newest frame to the worker thread
(pipeline.FrameWorker); diagnostics come from their own thread (pipeline.Periodic), so they
report while a transition loads a model."""

from __future__ import annotations

import sys
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from dfanet_core.deploy.heads import UNLABELLED  # what backends write below min_confidence

from . import conversions, diagnostics, outputs, params, pipeline
from .graph import PythonLogBridge, keep_large_buffers
from .params import NodeConfig, ParameterError
from .qos import describe_qos, incompatible_reason, latched_qos, make_qos, overridable
from .stats import PipelineStats

NODE_NAME = "segment_node"
EXIT_OK, EXIT_FAILED, EXIT_BAD_PARAMETER = 0, 1, 2
SUCCESS, ERROR = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.ERROR
MODEL_FACTS = {"class_names": Parameter.Type.STRING_ARRAY,
               "class_palette": Parameter.Type.INTEGER_ARRAY,
               "num_classes": Parameter.Type.INTEGER, "ignore_value": Parameter.Type.INTEGER}


class SegmentNode(LifecycleNode):
    """Subscribes to camera images, runs the Segmenter on the newest one, publishes masks."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        Node.__init__(self, node_name, **kwargs)
        for message in params.unknown_parameters(self._parameter_overrides):
            self.get_logger().warning(message)
        self.config: NodeConfig = params.config_from_values({  # ParameterError: exit 2
            n: p.value for n, p in self._parameter_overrides.items() if n in params.SPECS})
        self.declare_parameters("", [(s.name, s.default, params.descriptor(s))
                                     for s in params.PARAMETERS])
        LifecycleNodeMixin.__init__(self, enable_communication_interface=self.config.managed)
        if not self.config.managed:
            params.model_source(self.config)  # no model file: exit 2 now (managed: configure)
        self.finished: Future = Future()  # result: the process exit code
        self.stats = PipelineStats(time.monotonic(), max(2.0, self.config.no_input_timeout_s),
                                   self.config.error_window_s)
        self.model = pipeline.ModelHolder(lambda c: pipeline.load_segmenter(c, self.get_logger()))
        self.outputs, self.camera_infos = outputs.Outputs(), pipeline.CameraInfoCache()
        self.worker = pipeline.FrameWorker(
            self.model, self.outputs, self.stats, self.camera_infos, lambda: self.config,
            lambda: self.get_clock().now().nanoseconds, self.get_logger().error)
        self._state = ("unconfigured" if self.config.managed else "loading", "", time.monotonic())
        self._subs, self._reload_note, self._reload_errors = [], "", []
        self.live = params.LiveParameters(lambda: self.config, lambda: self.model.reloading,
                                          self._apply_change, MODEL_FACTS)
        self.log_bridge = PythonLogBridge(self.get_logger(), "dfanet_core")
        self._refresh_info()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._reloaded = self.create_guard_condition(self._after_reload)
        self.declare_parameters("", [(name, kind, ParameterDescriptor(description=f"{name} of the "
                                 "model (set by the node once it is loaded; read-only)"))
                                     for name, kind in MODEL_FACTS.items()])
        self.add_on_set_parameters_callback(self.live.review)
        self.add_post_set_parameters_callback(self.live.applied)
        self.reporter = pipeline.Periodic(self.config.diagnostics_period_s,
                                          self._publish_diagnostics, self.get_logger().error)
        if not self.config.managed:
            self._autostart = self.create_timer(0.0, self._start_unmanaged)

    # -- lifecycle (unmanaged: _start_unmanaged runs configure and activate) -------------------
    def _start_unmanaged(self) -> None:
        self.destroy_timer(self._autostart)
        if self.trigger_configure() != SUCCESS:
            self.finished.set_result(EXIT_FAILED)
        elif self.config.build_only:
            self.get_logger().info("build_only: model and engine are ready, exiting")
            self.finished.set_result(EXIT_OK)
        else:
            self.trigger_activate()

    def on_configure(self, state: Any) -> TransitionCallbackReturn:
        self._state = ("loading", f"loading {self._info.checkpoint}", time.monotonic())
        try:
            self.model.load(self.config)
        except Exception as exc:  # noqa: BLE001 - the transition fails with the reason
            self._state = ("failed", f"{type(exc).__name__}: {exc}", time.monotonic())
            self.get_logger().fatal(f"cannot load the model: {exc}")
            self._publish_diagnostics()
            return ERROR
        self._refresh_info()
        self._sync_outputs()
        for name, msg_type in ((outputs.CLASS_INFO, String),
                               (outputs.LABEL_INFO, outputs.label_info_type())):
            if msg_type is None:
                self.get_logger().warning("vision_msgs does not import: no label_info")
            else:
                self.outputs.offer(name, self._publisher(msg_type, outputs.TOPICS[name],
                                                         latched_qos(), overrides=None))
        self._state = ("inactive", "", time.monotonic())
        return SUCCESS

    def on_activate(self, state: Any) -> TransitionCallbackReturn:
        config = self.config
        input_qos = make_qos(config.input_qos, config.input_depth)
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda event: self._incompatible(
                event, f"a publisher on {self._info.input_topic}", f" (input_qos="
                f"{self.config.input_qos}; a best-effort camera needs SENSOR_DATA)"),
            message_lost=lambda event: self.stats.record_lost(int(event.total_count_change)))
        msg_type = CompressedImage if config.input_type == "compressed" else Image
        self._subs = [self.create_subscription(msg_type, config.input_topic, self._on_image,
                                               input_qos, event_callbacks=events,
                                               qos_overriding_options=overridable())]
        if config.use_camera_info:
            self._subs.append(self.create_subscription(
                CameraInfo, "camera_info", self.camera_infos.add, make_qos(config.input_qos, 5),
                qos_overriding_options=overridable()))
        self.worker.topic = self._subs[0].topic_name
        self._publish_model_info()
        self.worker.active = True
        self._state = ("ready", "", time.monotonic())
        self.get_logger().info(f"ready: {self._info.model} on {self._info.backend}; subscribed "
                               f"to {self.worker.topic} ({msg_type.__name__}, "
                               f"{describe_qos(input_qos)})")
        return SUCCESS

    def on_deactivate(self, state: Any) -> TransitionCallbackReturn:
        while self._subs:
            self.destroy_subscription(self._subs.pop())
        self.worker.pause()  # the frame in hand is published before deactivate returns
        self._state = ("inactive", "", time.monotonic())
        return SUCCESS

    def on_cleanup(self, state: Any) -> TransitionCallbackReturn:
        for publisher in self.outputs.withdraw_all():
            self.destroy_publisher(publisher)
        self.camera_infos.clear()
        self.model.close()
        self._state = ("unconfigured", "", time.monotonic())
        return SUCCESS

    def on_shutdown(self, state: Any) -> TransitionCallbackReturn:
        self.on_error(state)
        if not self.finished.done():
            self.finished.set_result(EXIT_OK)
        return SUCCESS

    def on_error(self, state: Any) -> TransitionCallbackReturn:
        """Release what a failed transition left; back to unconfigured, the reason kept."""
        failed = self._state if self._state[0] == "failed" else None
        self.on_deactivate(state)
        self.on_cleanup(state)
        self._state = failed or self._state
        return SUCCESS

    # -- callbacks (executor) ---------------------------------------------------------------
    def _on_image(self, msg: Any) -> None:
        now = time.monotonic()
        self.stats.record_input(now)
        if self.config.lazy and not self.outputs.listeners():
            self.stats.record_idle()
            return
        if self.config.input_type == "raw":
            try:  # O(1) header checks here; pixel work happens in the worker
                conversions.check_model_header(msg, self.config.max_input_pixels)
            except ValueError as exc:
                self.worker.failure("bad frame", str(exc), self.stats.record_bad_frame, now)
                return
        self.worker.offer(pipeline.Frame(msg, now))

    def _publisher(self, msg_type: Any, topic: str, qos: Any, overrides: Any = True) -> Any:
        events = PublisherEventCallbacks(incompatible_qos=lambda event: self._incompatible(
            event, f"a subscriber on {self.resolve_topic_name(topic)}", ""))
        overrides = overridable() if overrides is True else overrides
        return self.create_publisher(msg_type, topic, qos, event_callbacks=events,
                                     qos_overriding_options=overrides)

    def _incompatible(self, event: Any, whom: str, hint: str) -> None:
        reason = incompatible_reason(event, whom, hint)
        self.stats.record_failure(time.monotonic(), reason)
        self.get_logger().error(reason)

    def _publish_model_info(self) -> None:
        """Model facts as read-only parameters and on the latched class/label info topics."""
        with self.model.using() as seg:
            info = pipeline.class_info(seg, self.get_fully_qualified_name(),
                                       self.resolve_topic_name(outputs.TOPICS[outputs.MASK]),
                                       self._info.checkpoint, UNLABELLED)
        facts = (info["class_names"], info["palette"], info["num_classes"], UNLABELLED)
        with self.live.own():
            self.set_parameters([Parameter(n, value=v) for n, v in zip(MODEL_FACTS, facts)])
        self.outputs.publish_model_info(info, self.config.min_confidence,
                                        self.get_clock().now().to_msg())

    def _publish_diagnostics(self) -> None:
        now, (phase, detail, since), config = time.monotonic(), self._state, self.config
        idle = self.worker.active and config.lazy and not self.outputs.listeners()
        observed = diagnostics.Observations(
            self.count_publishers(self._info.input_topic), self.worker.input_resolution,
            self.camera_infos.resolution, outputs.IDLE_REASON if idle else "", self._reload_note,
            config.min_confidence)
        status = diagnostics.build_status(self.stats.snapshot(now),
                                          diagnostics.Thresholds.of(config),
                                          diagnostics.NodeState(phase, detail, now - since),
                                          self._info, observed)
        stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(diagnostics.to_diagnostic_array([status], stamp))

    # -- live parameters (reviewed by params.LiveParameters) ---------------------------------
    def _apply_change(self, change: params.Change) -> None:
        self.config = change.config
        self.stats.set_error_window(self.config.error_window_s)
        self._refresh_info()
        self._sync_outputs()
        if "min_confidence" in change.changed and self.worker.active:
            self._publish_model_info()  # label_info carries the threshold
        if change.reload and self.model.loaded:
            self._reload_note = f"loading {', '.join(sorted(change.changed))}; the previous " \
                                "model serves until it is ready"
            self.model.reload(self.config, lambda error: (  # on the reload thread
                self._reload_errors.append(error), self._reloaded.trigger()))

    def _after_reload(self) -> None:
        while self._reload_errors:
            error, self._reload_note = self._reload_errors.pop(0), ""
            if error is not None:  # the parameters go back to what the served model was made of
                self.get_logger().error(f"model reload failed, the previous model serves: {error}")
                self.stats.record_failure(time.monotonic(), f"model reload failed: {error}")
                served = params.reload_values(self.model.config)
                with self.live.own():
                    self.set_parameters([Parameter(n, value=v) for n, v in served.items()])
                self.config = params.review_change(self.config, served).config
            else:
                self.get_logger().info("model reloaded")
            self._refresh_info()
            if self.worker.active:
                self._publish_model_info()

    def _sync_outputs(self) -> None:
        """Create or remove output publishers as the parameters say (once configured)."""
        if self._state[0] in ("unconfigured", "failed"):
            return
        qos = make_qos(self.config.output_qos, self.config.output_depth)
        for name, wanted in outputs.wanted(self.config).items():
            if wanted and self.outputs.get(name) is None:
                self.outputs.offer(name, self._publisher(outputs.message_type(name),
                                                         outputs.TOPICS[name], qos))
            elif not wanted and self.outputs.get(name) is not None:
                self.destroy_publisher(self.outputs.offer(name, None))

    def _refresh_info(self) -> None:
        with self.model.using() as seg:
            self._info = diagnostics.pipeline_info(self.get_fully_qualified_name(), self.config,
                                                   self.resolve_topic_name(
                                                       self.config.input_topic), segmenter=seg)


def main(args: list[str] | None = None) -> int:
    """Console entry point: run the node until Ctrl-C (or build_only / a fatal error)."""
    keep_large_buffers()  # camera-sized messages reuse their buffers (no page faults per frame)
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentNode()
        executor = SingleThreadedExecutor()  # multi-threaded: frames up to 2.5 s late (measured)
        executor.add_node(node)
        executor.spin_until_future_complete(node.finished)
        return node.finished.result() if node.finished.done() else EXIT_OK
    except ParameterError as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"invalid parameter: {exc}")
        return EXIT_BAD_PARAMETER
    except (KeyboardInterrupt, ExternalShutdownException):
        return EXIT_OK
    finally:
        if node is not None:  # the worker finishes the frame in hand; the model is released
            node.reporter.stop()
            node.worker.stop()
            node.model.close()
            node.log_bridge.detach()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
