"""The node's frame pipeline as plain Python: the single-slot hand-off between the subscription
callback and the inference worker, the model in service (:class:`ModelHolder`, swapped whole on a
reload), decoding, segmentation, camera_info pairing and the class facts consumers read. No rclpy.

The callback never blocks: it puts the newest message into a :class:`LatestSlot` (replacing, and
so dropping, an older one the worker has not taken yet). The worker takes it and runs
:func:`segment_frame`, which returns numpy results plus per-stage timings.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
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

    def clear(self) -> bool:
        """Drop the item nobody took (deactivation); True if there was one."""
        with self._cond:
            had, self._item = self._item is not None, None
            return had

    def close(self) -> None:
        """Wake every waiter; later ``take`` calls return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class ModelHolder:
    """The Segmenter in service. :meth:`reload` builds a new one in a background thread while
    the old one keeps serving, then swaps them between two frames and closes the old one;
    :meth:`using` holds the model for one frame (a swap waits for that frame)."""

    def __init__(self, load: Callable[[Any], Any]) -> None:
        self._load = load  # configuration -> a loaded Segmenter (raises on failure)
        self._lock = threading.Lock()
        self._current: Any = None
        self._reloading: threading.Thread | None = None
        self.config: Any = None  # the configuration the model in service was loaded with

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def reloading(self) -> bool:
        return self._reloading is not None and self._reloading.is_alive()

    def load(self, config: Any) -> Any:
        """Load the model for ``config`` in this thread (replacing and closing any other)."""
        self._swap(self._load(config), config)
        return self._current

    @contextlib.contextmanager
    def using(self) -> Iterator[Any]:
        """The model in service (None when none is loaded), held until the block ends."""
        with self._lock:
            yield self._current

    def reload(self, config: Any, done: Callable[[Exception | None], None]) -> bool:
        """Load a model for ``config`` beside the one in service and swap it in when ready;
        ``done(None)`` after the swap, ``done(error)`` if loading failed (the old model stays).
        False, and nothing started, while another reload is under way."""
        if self.reloading:
            return False

        def run() -> None:
            try:
                new = self._load(config)
            except Exception as exc:  # noqa: BLE001 - reported through done(); old model stays
                done(exc)
                return
            self._swap(new, config)
            done(None)

        self._reloading = threading.Thread(target=run, name="model-reload", daemon=True)
        self._reloading.start()
        return True

    def close(self) -> None:
        """Close the model in service (after the frame in hand); a reload under way finishes
        first, so nothing is left open."""
        if self._reloading is not None:
            self._reloading.join()
        self._swap(None, None)

    def _swap(self, new: Any, config: Any) -> None:
        with self._lock:
            old, self._current, self.config = self._current, new, config
        if old is not None:
            old.close()


class CameraInfoCache:
    """The last few camera_info messages by stamp: the one of a frame's stamp when it came, else
    the newest (cameras publish the pair with one stamp, but not always in order)."""

    def __init__(self, size: int = 8) -> None:
        self._items: OrderedDict[int, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self.resolution = ""  # "WxH" the newest camera_info describes

    def add(self, msg: Any) -> None:
        """Keep a sensor_msgs/CameraInfo (by its header stamp)."""
        stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
        self.resolution = camera_info_resolution(msg)
        with self._lock:
            self._items[stamp_ns] = msg
            self._items.move_to_end(stamp_ns)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def match(self, stamp_ns: int) -> Any:
        """The camera_info stamped ``stamp_ns``, else the newest one, else None."""
        with self._lock:
            if stamp_ns in self._items:
                return self._items[stamp_ns]
            return next(reversed(self._items.values()), None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
        self.resolution = ""


def camera_info_resolution(msg: Any) -> str:
    """'WxH' of the images a sensor_msgs/CameraInfo describes (binning divides the size), or ''
    for an uncalibrated, size-less one."""
    width, height = int(msg.width), int(msg.height)
    if not width or not height:
        return ""
    return f"{width // max(1, int(msg.binning_x))}x{height // max(1, int(msg.binning_y))}"


def label_entries(class_names: Sequence[str]) -> list[tuple[int, str]]:
    """(class id, name) of every class of the model, in id order: LabelInfo's class_map."""
    return list(enumerate(class_names))


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


class Periodic:
    """Calls ``action`` every ``period_s`` seconds (wall clock), from construction until
    :meth:`stop`, on its own daemon thread outside the ROS executor, so it keeps going while a
    callback blocks (a model or engine loading in a lifecycle transition). An exception is passed
    to ``on_error`` (once per run of the same failure) and the calls go on."""

    def __init__(self, period_s: float, action: Callable[[], None],
                 on_error: Callable[[str], None]) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.period_s, self._action, self._on_error = period_s, action, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dfanet-periodic", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """No call starts after this returns (one in progress is waited for, up to the timeout)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        deadline, last_error = time.monotonic(), None
        while True:
            deadline += self.period_s
            if self._stop.wait(max(0.0, deadline - time.monotonic())):
                return
            try:
                self._action()
                last_error = None
            except Exception as exc:  # noqa: BLE001 - reported, the next period runs again
                error = f"{type(exc).__name__}: {exc}"
                if error != last_error:  # once per run of the same failure
                    self._on_error(f"periodic {self._action.__name__} failed: {error}")
                last_error = error
            deadline = max(deadline, time.monotonic() - self.period_s)  # no burst after a stall


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


class FrameWorker:
    """A node's inference thread: takes the newest frame from :attr:`slot` and, while
    :attr:`active`, segments it with the model in service (``model``, a :class:`ModelHolder`) and
    publishes its outputs (``outputs``, a dfanet_ros.outputs.Outputs), counting everything in
    ``stats``. ``config()`` gives the node's NodeConfig of the moment (read once per frame, so a
    live parameter applies from the next frame on), ``now_ns()`` its clock, ``log_error`` its
    logger. :meth:`pause` returns once no frame is in hand."""

    def __init__(self, model: ModelHolder, outputs: Any, stats: Any, camera_infos: CameraInfoCache,
                 config: Callable[[], Any], now_ns: Callable[[], int],
                 log_error: Callable[[str], None]) -> None:
        self.model, self.outputs, self.stats = model, outputs, stats
        self.camera_infos = camera_infos
        self._config, self._now_ns, self._log_error = config, now_ns, log_error
        self.slot: LatestSlot[Frame] = LatestSlot()
        self.active = False
        self.topic = ""  # the input topic, for log messages
        self.input_resolution = ""  # "WxH" of the last frame segmented
        self._idle, self._stop = threading.Event(), threading.Event()
        self._idle.set()
        self._throttle = LogThrottle(5.0)
        self._thread = threading.Thread(target=self._run, name="segmentation", daemon=True)
        self._thread.start()

    def offer(self, frame: Frame) -> None:
        """Hand a frame over (the callback's side); one nobody took yet is dropped and counted."""
        if self.slot.put(frame):
            self.stats.record_drop(frame.received)

    def pause(self, timeout_s: float = 60.0) -> None:
        """Stop segmenting: drop a waiting frame, wait for the one in hand to be published."""
        self.active = False
        if self.slot.clear():
            self.stats.record_drop(time.monotonic())
        self._idle.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the thread (it finishes the frame in hand)."""
        self._stop.set()
        self.slot.close()
        self._thread.join(timeout_s)

    def failure(self, kind: str, reason: str, record: Callable[[float, str], None],
                now: float | None = None) -> None:
        """Count a failure with ``record`` (a PipelineStats method) and log it, throttled."""
        now = time.monotonic() if now is None else now
        record(now, reason)
        held = self._throttle.admit(kind, now)
        if held is not None:
            more = f" ({held} more in the last {self._throttle.period_s:g} s)" if held else ""
            self._log_error(f"{kind} on {self.topic}: {reason}{more}")

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = self.slot.take(timeout=0.5)
            if frame is None:
                continue
            self._idle.clear()
            try:
                if self.active:  # checked after clearing _idle: pause() waits for this frame
                    self._process(frame)
            finally:
                self._idle.set()

    def _process(self, frame: Frame) -> None:
        from .stats import frame_latencies

        config, stats = self._config(), self.stats
        with self.model.using() as segmenter:
            try:
                result = segment_frame(
                    frame, segmenter, compressed=config.input_type == "compressed",
                    max_pixels=config.max_input_pixels, min_confidence=config.min_confidence,
                    confidence=self.outputs.get("confidence") is not None)
            except BadFrame as exc:
                return self.failure("bad frame", str(exc), stats.record_bad_frame)
            except BackendFailure as exc:
                return self.failure("backend error", str(exc), stats.record_backend_error)
            palette = segmenter.meta["palette"]
        header = frame.msg.header
        stamp_ns = conversions.stamp_to_ns(header.stamp)
        self.input_resolution = f"{result.mask.shape[1]}x{result.mask.shape[0]}"
        try:
            sent = self.outputs.publish(header, result, config, palette,
                                        self.camera_infos.match(stamp_ns))
        except Exception as exc:  # noqa: BLE001 - e.g. shutting down; never end the thread
            return self.failure("backend error", f"publishing failed: {exc}",
                                stats.record_backend_error)
        for kind in sent:
            stats.record_extra_output(kind)
        done = time.monotonic()
        stats.record_output(done, frame_latencies(result.timings_ms, frame.received,
                                                  result.started, done, stamp_ns, self._now_ns()))


def load_segmenter(config: Any, logger: Any) -> Any:
    """The Segmenter a NodeConfig describes (params.model_source, params.runtime_options), with
    what it is doing and how long it took told to ``logger`` (``info``/``warning``: an rclpy or a
    Python logger)."""
    import torch

    from dfanet_core import Segmenter

    from . import params

    source = params.model_source(config)
    logger.info(f"loading {source} (backend {config.backend}, precision {config.precision})")
    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    segmenter = Segmenter.load(source, params.runtime_options(config, torch.cuda.is_available()))
    logger.info(f"model loaded in {time.monotonic() - started:.1f} s ({segmenter.backend_name} "
                f"on {segmenter.device})")
    if not segmenter.meta.get("trained", True):
        logger.warning(f"{source} holds UNTRAINED weights: the masks are meaningless")
    return segmenter


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
    min_confidence: float = 0.0,
) -> FrameResult:
    """Decode and segment one frame (pixels below ``min_confidence`` become 255, on the
    backend's device). Raises BadFrame or BackendFailure."""
    start = time.monotonic()
    pixels, order = decode(frame.msg, compressed, max_pixels)
    decoded = time.monotonic()
    try:
        result = segmenter.predict_detailed([pixels], channel_order=order, confidence=confidence,
                                            min_confidence=min_confidence)
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
