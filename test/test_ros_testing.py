"""dfanet_ros.testing, the client the node tests, the demo and the latency benchmark drive a node
with, against a peer node in this process that answers like segment_node (real rclpy, the
test's own ROS domain): it records masks by stamp with the sender's header, the latched class
info and the diagnostics; its waits end on messages and fail with the node's log."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from dfanet_ros import conversions, diagnostics
from dfanet_ros.graph import NodeError, NodeProcess, RosClient
from dfanet_ros.qos import latched_qos
from dfanet_ros.testing import SegmentationClient

pytestmark = pytest.mark.timeout(300)


class EchoNode(RosClient):
    """Answers each image with a mask (its first channel, same header), reports what it got in
    a diagnostic status every 0.1 s and publishes a latched class info."""

    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        super().__init__("echo_segment_node")
        self.frames = 0
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.masks = self.node.create_publisher(Image, "/segmentation/mask", reliable)
        self.statuses = self.node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        info = self.node.create_publisher(String, "/segmentation/class_info", latched_qos())
        info.publish(String(data=json.dumps({"class_names": ["a", "b"], "palette": [0, 255]})))
        self.node.create_subscription(Image, "/image", self._on_image, reliable)
        self.node.create_timer(0.1, self._report)
        self.start()

    def _on_image(self, msg) -> None:
        from sensor_msgs.msg import Image

        self.frames += 1
        pixels = conversions.image_to_numpy(msg)[:, :, 0].copy()
        self.masks.publish(Image(header=msg.header, **conversions.mask_to_image_fields(pixels)))

    def _report(self) -> None:
        status = diagnostics.Status(
            diagnostics.OK, "echo_segment_node: segmentation", "ok", "echo",
            (("frames_in", str(self.frames)), ("frames_out", str(self.frames)),
             ("total_dropped_frames", "0"), ("bad_frames", "0"), ("backend_errors", "0")))
        stamp = self.node.get_clock().now().to_msg()
        self.statuses.publish(diagnostics.to_diagnostic_array([status], stamp))


def test_the_client_records_what_a_node_publishes(ros_env):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(3)]
    with EchoNode() as peer, SegmentationClient(input_reliable=True) as client:
        assert client.wait_ready(timeout_s=60.0) == {"class_names": ["a", "b"],
                                                     "palette": [0, 255]}
        stamps = [client.publish_image(rgb, frame_id=f"cam{i}") for i, rgb in
                  enumerate(frames)]
        assert stamps == sorted(set(stamps))  # fresh, strictly increasing stamps
        for index, (stamp, rgb) in enumerate(zip(stamps, frames)):
            mask = client.wait_mask(stamp, timeout_s=60.0)
            assert (mask.frame_id, mask.encoding, mask.height, mask.width) == (
                f"cam{index}", "mono8", 48, 64)
            np.testing.assert_array_equal(mask.array, rgb[:, :, 0])
        latencies = client.latencies_ms()
        assert sorted(latencies) == stamps and all(v > 0 for v in latencies.values())
        # two idle reports in a row with the same frames_in, both received after the last mask:
        # the node is done (reports from before it, frames_in 0 or 3, do not count)
        client.wait_mask(client.publish_image(frames[0]), timeout_s=60.0)
        status = client.wait_idle(timeout_s=60.0, after=time.monotonic())
        assert diagnostics.values_dict(status)["frames_in"] == "4"
        assert peer.frames == 4
        with pytest.raises(NodeError, match=r"timed out waiting for mask 1 \(0.2 s\)"):
            client.wait_mask(1, timeout_s=0.2)


def test_waits_fail_with_the_node_log_when_it_exits(ros_env, tmp_path):
    node = NodeProcess({"backend": "cuda"}, ros_env, tmp_path)  # an invalid parameter: exit 2
    try:
        with SegmentationClient() as client:
            with pytest.raises(NodeError, match="the node exited waiting for class_info") as err:
                client.wait_ready(node, timeout_s=120.0)
        assert "parameter 'backend': invalid value 'cuda'" in str(err.value)
        assert node.process.returncode == 2
    finally:
        node.stop()


def test_the_echo_node_answers_each_frame_with_a_mask_of_its_size(ros_env, tmp_path):
    """dfanet_ros.echo_node (the transport floor of bench/node_latency.py), in its own process:
    every frame comes back as a zero mono8 mask of the frame's size with the frame's header."""
    frames = [np.full((40 + 8 * i, 64 + 16 * i, 3), 200, np.uint8) for i in range(3)]
    extra = ["-p", "input_qos:=DEFAULT"]
    with NodeProcess(None, ros_env, tmp_path, extra_args=extra, module="dfanet_ros.echo_node") \
            as echo, SegmentationClient(input_reliable=True) as client:
        assert client.wait_ready(echo, timeout_s=60.0)["echo"] is True
        for index, rgb in enumerate(frames):
            stamp = client.publish_image(rgb, frame_id=f"cam{index}")
            mask = client.wait_mask(stamp, echo, timeout_s=60.0)
            assert (mask.frame_id, mask.encoding, mask.height, mask.width) == (
                f"cam{index}", "mono8", *rgb.shape[:2])
            assert mask.array.shape == rgb.shape[:2] and not mask.array.any()


def test_the_echo_node_refuses_an_unknown_qos_preset_naming_the_parameter(ros_env, tmp_path):
    with NodeProcess(None, ros_env, tmp_path, extra_args=["-p", "output_qos:=FAST"],
                     module="dfanet_ros.echo_node") as echo:
        assert echo.wait_exit(60.0) == 2
        assert "parameter output_qos: 'FAST' is not one of SENSOR_DATA" in echo.log_text()
