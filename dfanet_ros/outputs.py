"""The node's per-frame outputs over publisher objects (anything with ``publish(msg)`` and
``get_subscription_count()``): the mask always; the PNG mask, the colour image, the confidence and
camera_info when they are offered and (except the confidence) someone subscribes; every one with
the input image's header. No rclpy import: the node creates and destroys the publishers
(:meth:`Outputs.offer`), this module decides what to build and fills the messages with one copy
of the pixels into a buffer reused frame after frame (rclpy copies the data when it publishes, so
the buffer is free again once ``publish`` returns). Messages are made with ``check_fields=True``:
without it (the default unless ROS_PYTHON_CHECK_FIELDS=1) the generated ``data`` setter copies
the array once more, and the constructor's ``data=`` always does.
"""

from __future__ import annotations

import array
import threading
from collections.abc import Sequence
from typing import Any

from . import conversions, pipeline
from .pipeline import FrameResult

MASK, COMPRESSED, COLOR, CONFIDENCE, CAMERA_INFO = (
    "mask", "mask/compressed", "color", "confidence", "camera_info")
FRAME_OUTPUTS = (MASK, COMPRESSED, COLOR, CONFIDENCE, CAMERA_INFO)  # one message per frame
CLASS_INFO, LABEL_INFO = "class_info", "label_info"  # latched, once per model
#: Relative topic of each output.
TOPICS = {name: f"segmentation/{name}" for name in (*FRAME_OUTPUTS, CLASS_INFO, LABEL_INFO)}

#: diagnostics' idle_reason while nobody listens (lazy mode)
IDLE_REASON = ("nobody subscribes to segmentation/mask or the other outputs (lazy: true; "
               "lazy: false segments anyway)")


def wanted(config: Any) -> dict[str, bool]:
    """Which outputs a NodeConfig offers (the mask always)."""
    return {MASK: True, COMPRESSED: config.publish_compressed_mask, COLOR: config.publish_color,
            CONFIDENCE: config.publish_confidence, CAMERA_INFO: config.use_camera_info}


def message_type(name: str) -> Any:
    """The message class of an output."""
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    return {COMPRESSED: CompressedImage, CAMERA_INFO: CameraInfo}.get(name, Image)


class Outputs:
    """The output publishers of one node by name (MASK, COMPRESSED, ...) and what one frame
    publishes on them. Thread-safe: the worker publishes while the executor offers or withdraws
    publishers (live parameters, lifecycle transitions)."""

    def __init__(self) -> None:
        self._publishers: dict[str, Any] = {}
        self._buffers: dict[str, array.array] = {}
        self._lock = threading.Lock()

    def offer(self, name: str, publisher: Any) -> Any:
        """Publish ``name`` on ``publisher`` from the next frame on (None withdraws it); returns
        the publisher it replaces, for the node to destroy."""
        with self._lock:
            previous = self._publishers.pop(name, None)
            if publisher is not None:
                self._publishers[name] = publisher
            return previous

    def get(self, name: str) -> Any:
        return self._publishers.get(name)

    def withdraw_all(self) -> list[Any]:
        """Withdraw every publisher (cleanup); returns them for the node to destroy."""
        with self._lock:
            publishers, self._publishers = list(self._publishers.values()), {}
            self._buffers.clear()
            return publishers

    def listeners(self) -> int:
        """Subscriptions matched with any per-frame output: zero means nobody would see a mask
        (class and label info do not count)."""
        with self._lock:
            return sum(pub.get_subscription_count() for name, pub in self._publishers.items()
                       if name in FRAME_OUTPUTS)

    def publish(self, header: Any, result: FrameResult, config: Any,
                palette: Sequence[Sequence[int]], camera_info: Any = None) -> list[str]:
        """Publish one frame's outputs with ``header`` as ``config`` (a NodeConfig) says; returns
        the names of the optional outputs that went out."""
        from sensor_msgs.msg import CompressedImage, Image

        sent: list[str] = []
        with self._lock:
            pubs = self._publishers
            self._image(pubs[MASK], Image(header=header, check_fields=True), MASK, result.mask,
                        "mono8")
            pub = pubs.get(COMPRESSED)
            if pub is not None and pub.get_subscription_count():
                msg = CompressedImage(header=header, format=conversions.PNG_MASK_FORMAT,
                                      check_fields=True)
                msg.data = conversions.mask_to_png(result.mask, config.png_compression_level)
                pub.publish(msg)
                sent.append(COMPRESSED)
            pub = pubs.get(COLOR)
            if pub is not None and pub.get_subscription_count():
                colour = pipeline.colour_output(result, palette, config.color_mode,
                                                config.overlay_alpha)
                self._image(pub, Image(header=header, check_fields=True), COLOR, colour, "rgb8")
                sent.append(COLOR)
            pub = pubs.get(CONFIDENCE)
            if pub is not None and result.confidence is not None:
                fields = conversions.confidence_to_image_fields(result.confidence,
                                                                config.confidence_encoding)
                pub.publish(conversions.fill_fields(Image(header=header, check_fields=True),
                                                    fields))
                sent.append(CONFIDENCE)
            pub = pubs.get(CAMERA_INFO)
            if pub is not None and camera_info is not None and pub.get_subscription_count():
                camera_info.header = header  # the cache keys by stamp, not by this header
                pub.publish(camera_info)
                sent.append(CAMERA_INFO)
        return sent

    def publish_model_info(self, info: dict[str, Any], threshold: float, stamp: Any) -> None:
        """The latched model facts: class info (JSON of pipeline.class_info) and, when offered,
        vision_msgs/LabelInfo (its ``threshold`` = min_confidence)."""
        import json

        from std_msgs.msg import String

        with self._lock:
            self._publishers[CLASS_INFO].publish(String(data=json.dumps(info)))
            if LABEL_INFO in self._publishers:
                self._publishers[LABEL_INFO].publish(
                    label_info(info["class_names"], threshold, stamp))

    def _image(self, pub: Any, msg: Any, name: str, pixels: Any, encoding: str) -> None:
        conversions.fill_image(msg, pixels, encoding, self._buffers.get(name))
        self._buffers[name] = msg.data
        pub.publish(msg)


def label_info_type() -> Any:
    """vision_msgs/LabelInfo, or None when vision_msgs is not installed (run
    scripts/build_vision_msgs.sh without a ROS install)."""
    try:
        from vision_msgs.msg import LabelInfo
    except ImportError:
        return None
    return LabelInfo


def label_info(class_names: Sequence[str], threshold: float, stamp: Any) -> Any:
    """vision_msgs/LabelInfo of a model: every class id with its name, ``threshold`` =
    min_confidence (vision_msgs must import, see :func:`label_info_type`)."""
    from vision_msgs.msg import LabelInfo, VisionClass

    entries = pipeline.label_entries(class_names)
    msg = LabelInfo(threshold=float(threshold), class_map=[
        VisionClass(class_id=i, class_name=name) for i, name in entries])
    msg.header.stamp = stamp
    return msg
