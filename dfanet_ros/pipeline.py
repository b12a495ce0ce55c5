"""The node's frame pipeline as plain Python: the single-slot hand-off between the subscription
callback and the inference worker, decoding, segmentation and the optional outputs. No rclpy.

The callback never blocks: it puts the newest message into a :class:`LatestSlot` (replacing, and
so dropping, an older one the worker has not taken yet). The worker takes it and runs
:func:`segment_frame`, which returns numpy results plus per-stage timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from . import conversions

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-item buffer: ``put`` replaces what is there, ``take`` waits for an item."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T) -> bool:
        """Store ``item``; True if it replaced an item nobody took (that one is dropped)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The item (emptying the slot), or None after ``timeout`` seconds or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiter; later ``take`` calls return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class LogThrottle:
    """Lets one message per key through every ``period_s`` and counts the ones held back."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str, now: float) -> int | None:
        """None if the message should be suppressed, else how many were suppressed before it."""
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


@dataclass(frozen=True)
class Frame:
    """A received message and when it arrived (time.monotonic seconds)."""

    msg: Any
    received: float


@dataclass
class FrameResult:
    """What one frame produced: mask (H, W) uint8 class ids, optional confidence (H, W) float32
    and the decoded pixels (kept for overlays), with when processing started (monotonic s) and
    the stage times in ms (decode, preprocess, inference, postprocess)."""

    mask: np.ndarray
    confidence: np.ndarray | None
    pixels: np.ndarray
    channel_order: str
    started: float
    timings_ms: dict[str, float] = field(default_factory=dict)


class BadFrame(ValueError):
    """The message could not be decoded (the node counts it as a bad frame)."""


class BackendFailure(RuntimeError):
    """The Segmenter raised on a decodable frame (the node counts it as a backend error)."""


def decode(msg: Any, compressed: bool, max_pixels: int | None) -> tuple[np.ndarray, str]:
    """Message -> (uint8 (H, W, 3) pixels, channel order); BadFrame on any decoding problem."""
    try:
        if compressed:
            return conversions.compressed_for_model(msg, max_pixels)
        return conversions.image_for_model(msg, max_pixels)
    except ValueError as exc:
        raise BadFrame(str(exc)) from exc


def segment_frame(
    frame: Frame,
    segmenter: Any,
    *,
    compressed: bool,
    max_pixels: int | None = None,
    confidence: bool = False,
) -> FrameResult:
    """Decode and segment one frame. Raises BadFrame or BackendFailure."""
    start = time.monotonic()
    pixels, order = decode(frame.msg, compressed, max_pixels)
    decoded = time.monotonic()
    try:
        result = segmenter.predict_detailed([pixels], channel_order=order, confidence=confidence)
    except Exception as exc:  # noqa: BLE001 - any backend failure must not kill the node
        raise BackendFailure(f"{type(exc).__name__}: {exc}") from exc
    timings = {"decode": (decoded - start) * 1e3}
    for stage in ("preprocess", "inference", "postprocess"):
        timings[stage] = float(result.timings_ms.get(stage, 0.0))
    conf = result.confidences[0] if confidence and result.confidences else None
    return FrameResult(result.masks[0], conf, pixels, order, start, timings)


def colour_output(
    result: FrameResult, palette: Sequence[Sequence[int]], mode: str, alpha: float
) -> np.ndarray:
    """RGB (H, W, 3) colour mask, or the mask blended over the camera image for 'overlay'."""
    from dfanet_core.imaging import colorize, overlay

    if mode == "overlay":
        rgb = result.pixels if result.channel_order == "RGB" else result.pixels[..., ::-1]
        return overlay(np.ascontiguousarray(rgb), result.mask, palette, alpha)
    return colorize(result.mask, palette)


def class_info(segmenter: Any, node: str, mask_topic: str, checkpoint: str,
               ignore_value: int) -> dict[str, Any]:
    """The latched class-info message (JSON) of a loaded model: what a consumer needs to read
    the masks (class names, palette as 0xRRGGBB, the ignore value) and what produced them."""
    from dfanet_core.imaging import palette_to_hex

    names = list(segmenter.class_names)
    return {
        "node": node,
        "mask_topic": mask_topic,
        "encoding": "mono8",
        "model": segmenter.meta.get("variant", ""),
        "dataset": segmenter.meta.get("dataset"),
        "trained": segmenter.meta.get("trained", True),
        "checkpoint": checkpoint,
        "backend": segmenter.backend_name,
        "precision": segmenter.precision,
        "network_input_size": list(segmenter.input_size),
        "num_classes": len(names),
        "class_names": names,
        "palette": palette_to_hex(segmenter.palette),
        "ignore_value": ignore_value,
    }
