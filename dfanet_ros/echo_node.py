"""The ROS transport floor: a node that moves the same messages as segment_node and does no work.

    python -m dfanet_ros.echo_node --ros-args -p input_qos:=SENSOR_DATA -p output_qos:=DEFAULT

It subscribes to ``image`` (sensor_msgs/Image) and answers each frame with a mono8
``segmentation/mask`` of the frame's size and header, built the way segment_node builds its mask
(one copy into a buffer reused from frame to frame, the same executor, the same glibc setting
for camera-sized buffers), plus the latched ``segmentation/class_info`` a client waits for. No
model, no pixel is read. ``bench/node_latency.py`` times it beside the node: publish -> mask
received through it is what rclpy and the middleware cost for these messages on this machine,
so the node's overhead over the bare Segmenter splits into this floor and the node's own part.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from sensor_msgs.msg import Image
from std_msgs.msg import String

from . import conversions
from .graph import keep_large_buffers
from .qos import QOS_PRESETS, latched_qos, make_qos

NODE_NAME = "echo_node"


class EchoNode:
    """Frame in, zero mask of its size out."""

    def __init__(self, node: Any) -> None:
        self.node = node
        qos = {}
        for name, default in (("input_qos", "SENSOR_DATA"), ("output_qos", "DEFAULT")):
            value = str(node.declare_parameter(name, default).value).upper()
            if value not in QOS_PRESETS:
                raise ValueError(f"parameter {name}: {value!r} is not one of "
                                 f"{', '.join(QOS_PRESETS)}")
            qos[name] = make_qos(value, 1)
        self._mask: np.ndarray | None = None
        self._buffer: Any = None
        self._pub = node.create_publisher(Image, "segmentation/mask", qos["output_qos"])
        self._info = node.create_publisher(String, "segmentation/class_info", latched_qos())
        self._info.publish(String(data=json.dumps({"echo": True, "class_names": []})))
        node.create_subscription(Image, "image", self._on_image, qos["input_qos"])

    def _on_image(self, msg: Any) -> None:
        try:
            layout = conversions.check_model_header(msg)
        except ValueError as exc:
            self.node.get_logger().error(f"bad frame: {exc}")
            return
        shape = (layout.height, layout.width)
        if self._mask is None or self._mask.shape != shape:
            self._mask = np.zeros(shape, np.uint8)
        out = conversions.fill_image(Image(header=msg.header, check_fields=True), self._mask,
                                     "mono8", self._buffer)
        self._buffer = out.data
        self._pub.publish(out)


def main(args: list[str] | None = None) -> int:
    keep_large_buffers()  # as segment_node.main does
    rclpy.init(args=args)
    node = rclpy.create_node(NODE_NAME)
    try:
        EchoNode(node)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
        return 0
    except ValueError as exc:
        node.get_logger().fatal(str(exc))
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
