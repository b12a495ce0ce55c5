"""Offline evaluation of a segmentation model on a rosbag: accuracy, latency, output bag, report.

    python -m dfanet_ros.bag_eval BAG --image-topic T [--label-topic L] [--checkpoint C]
                                  [--backend B] --out DIR

Reads the image topic (Image or CompressedImage) as fast as the Segmenter runs, pairs each
prediction with the label of the same header stamp (mono8 class ids) and accumulates the
confusion matrix of ``dfanet_core.metrics``, the module training uses, so an mIoU here means
what it means in ``training/evaluate.py``. Writes into DIR:

- ``segmentation_bag/``: rosbag2 with ``/segmentation/mask`` (mono8) and ``/segmentation/color``
  (rgb8), each with the input's header and log time (written atomically);
- ``report.json``, ``report.md``, ``latency.png``, ``per_class_iou.png``;
- ``overlay_strip.png`` and ``overlay.mp4`` (when OpenCV can write mp4 here).

The pieces (accuracy meter, overlays, report writer) are shared with the live replay in
:mod:`dfanet_ros.bag.replay`; latency summaries, tables and plots come from
:mod:`dfanet_core.reports`. The command line is in :mod:`dfanet_ros.bag.cli`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfanet_core.deploy.options import RuntimeOptions
from dfanet_core.files import atomic_path, atomic_write_json, atomic_write_text, resolve_checkpoint
from dfanet_core.imaging import colorize, overlay, write_image
from dfanet_core.reports import fmt, markdown_table, plot_latency, plot_per_class_iou, summarize_ms

from .io import (
    IMAGE_TYPE,
    STORAGES,
    AtomicBagWriter,
    Bag,
    StampedImage,
    StampMatcher,
    check_label_fits,
    open_bag,
)

LOG = logging.getLogger("dfanet_ros.bag_eval")

MASK_TOPIC = "/segmentation/mask"
COLOR_TOPIC = "/segmentation/color"
OUTPUT_BAG_NAME = "segmentation_bag"
STRIP_NAME = "overlay_strip.png"
VIDEO_NAME = "overlay.mp4"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LATENCY_PLOT = "latency.png"
IOU_PLOT = "per_class_iou.png"


# -- accuracy ------------------------------------------------------------------------------------
class AccuracyMeter:
    """Confusion matrix over (prediction, label) pairs: ``dfanet_core.metrics.ConfusionMatrix``.

    Label values outside ``0..num_classes-1`` (the ignore index, CamVid's void = 11) are not
    counted, exactly as in training/evaluate.py; their pixels are reported as ``void_pixels``.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str], ignore_index: int) -> None:
        from dfanet_core.metrics import ConfusionMatrix

        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
        self.pairs = 0
        self.void_pixels = 0

    def update(self, mask: np.ndarray, label: np.ndarray) -> None:
        """Add one prediction/label pair (same HxW, uint8)."""
        self.matrix.update(label, mask)
        self.void_pixels += int(np.count_nonzero(label >= self.num_classes))
        self.pairs += 1

    def result(self) -> dict[str, Any]:
        """mIoU, per-class IoU (None for classes in neither labels nor predictions), pixel
        accuracy; all None before the first pair."""
        from dfanet_core.metrics import to_jsonable

        if self.pairs == 0:
            return {"miou": None, "per_class_iou": None, "pixel_accuracy": None,
                    "mean_class_accuracy": None}
        scores = to_jsonable(self.matrix.compute())
        return {
            "miou": scores["miou"],
            "per_class_iou": dict(zip(self.class_names, scores["per_class_iou"])),
            "pixel_accuracy": scores["pixel_accuracy"],
            "mean_class_accuracy": scores["mean_class_accuracy"],
        }


# -- overlays ------------------------------------------------------------------------------------
class OverlayRecorder:
    """Collects a few overlay tiles for a PNG strip and streams every overlay into an mp4.

    The mp4 is written to a hidden temporary file in the output folder and renamed only when
    finished (:func:`dfanet_core.files.atomic_path`). OpenCV builds without an mp4 encoder give
    no video, never a broken file.
    """

    def __init__(self, out_dir: Path, palette: Sequence[Sequence[int]], total_frames: int,
                 fps: float, strip_frames: int = 8, tile_width: int = 320,
                 video: bool = True) -> None:
        self.out_dir = out_dir
        self.palette = palette
        count = min(strip_frames, total_frames)
        self.strip_indices = set(np.linspace(0, total_frames - 1, count).round().astype(int)
                                 .tolist()) if count > 0 else set()
        self.tile_width = tile_width
        self.fps = max(1.0, min(60.0, fps))
        self.want_video = video
        self.tiles: dict[int, np.ndarray] = {}
        self._writer: cv2.VideoWriter | None = None
        self._video_file = contextlib.ExitStack()  # the atomic_path of the video, while open
        self._video_size: tuple[int, int] = (0, 0)
        self.video_frames = 0

    def add(self, index: int, image: np.ndarray, mask: np.ndarray) -> None:
        """Record frame ``index``: into the video, and as a strip tile if it is sampled."""
        blended = overlay(image, mask, self.palette)
        if self.want_video:
            self._write_video(blended)
        if index in self.strip_indices:
            self.tiles[index] = _resize_width(blended, self.tile_width)

    def add_label(self, index: int, label: np.ndarray) -> None:
        """Put the ground truth (colourized) under the tile of frame ``index``, if it has one."""
        if index in self.tiles:
            truth = _resize_width(colorize(label, self.palette), self.tile_width, nearest=True)
            self.tiles[index] = np.vstack([self.tiles[index], truth])

    def _write_video(self, frame: np.ndarray) -> None:
        if self._writer is None:
            name = str(self._video_file.enter_context(
                atomic_path(self.out_dir / VIDEO_NAME, suffix=".partial.mp4")))
            # mp4v wants even frame sizes.
            self._video_size = (frame.shape[1] - frame.shape[1] % 2,
                                frame.shape[0] - frame.shape[0] % 2)
            writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                     self._video_size)
            if not writer.isOpened():
                LOG.warning("OpenCV cannot write mp4 here: no overlay video, PNG strip only")
                self.want_video = False
                self.discard()
                return
            self._writer = writer
        if (frame.shape[1], frame.shape[0]) != self._video_size:
            frame = cv2.resize(frame, self._video_size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.video_frames += 1

    def finish(self) -> dict[str, str | None]:
        """Write the strip PNG and move the finished video into place."""
        outputs: dict[str, str | None] = {"strip": None, "video": None}
        if self.tiles:
            tiles = [self.tiles[i] for i in sorted(self.tiles)]
            height = max(t.shape[0] for t in tiles)
            padded = [np.pad(t, ((0, height - t.shape[0]), (0, 2), (0, 0))) for t in tiles]
            write_image(self.out_dir / STRIP_NAME, np.hstack(padded))
            outputs["strip"] = STRIP_NAME
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            if self.video_frames > 0:
                self._video_file.close()  # renames the finished video into place
                outputs["video"] = VIDEO_NAME
        self.discard()
        return outputs

    def discard(self) -> None:
        """Drop an unfinished video (after an error, or when mp4 cannot be written)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._video_file.__exit__(_Discard, _Discard(), None)  # removes the temporary file


class _Discard(Exception):
    """Thrown into the video's atomic_path: remove the temporary file, keep no video."""


def _resize_width(image: np.ndarray, width: int, nearest: bool = False) -> np.ndarray:
    if image.shape[1] == width:
        return image
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=interp)


# -- report --------------------------------------------------------------------------------------
def write_report(out_dir: Path, report: dict[str, Any], frame_latency_ms: Sequence[float],
                 latency_label: str = "Segmenter latency") -> None:
    """report.json, report.md and the two plots (per-frame latency, per-class IoU)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    latency = plot_latency(frame_latency_ms, out_dir / LATENCY_PLOT, latency_label)
    report["outputs"]["latency_plot"] = latency.name if latency else None
    per_class, miou = report.get("per_class_iou"), report.get("miou")
    iou = None
    if per_class:
        title = "Per-class IoU" + (f" (mIoU {100 * miou:.1f}%)" if miou is not None else "")
        iou = plot_per_class_iou(per_class, out_dir / IOU_PLOT, title, miou).name
    report["outputs"]["iou_plot"] = iou
    atomic_write_json(out_dir / REPORT_JSON, report, sort_keys=False)
    atomic_write_text(out_dir / REPORT_MD, render_markdown(report))
    LOG.info("report written to %s", out_dir / REPORT_JSON)


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: summary, latency table, per-class IoU table, outputs."""
    lat = report["latency_ms"]
    lines = [
        f"# Segmentation evaluation ({report['mode']}): {Path(report['bag']).name}",
        "",
        f"- bag: `{report['bag']}` ({report['storage']}), image topic `{report['image_topic']}`"
        f" ({report['image_type']}), label topic `{report.get('label_topic') or '-'}`",
        f"- model: `{report['checkpoint']}` ({report['variant']}, backend {report['backend']}, "
        f"{report['precision']}, network input {report['input_size']})",
        f"- frames: {report['frames']}, with labels: {report['frames_with_labels']}",
        f"- **mIoU: {fmt(report['miou'], 100, 2, '%')}**, pixel accuracy "
        f"{fmt(report.get('pixel_accuracy'), 100, 2, '%')}",
        f"- throughput: {fmt(report.get('throughput_fps'), 1, 2)} frames/s; wall time per frame "
        f"{fmt(report.get('wall_time_per_frame_ms'), 1, 1, ' ms')}",
    ]
    if "dropped_frames" in report:
        lines.append(f"- sent {report['frames_sent']}, masks received {report['frames']}, "
                     f"**dropped {report['dropped_frames']}**; input rate "
                     f"{fmt(report.get('input_rate_hz'), 1, 2)} Hz, output rate "
                     f"{fmt(report.get('output_rate_hz'), 1, 2)} Hz")
    lines += ["", f"## Latency ({report.get('latency_kind', 'Segmenter')}, ms)", ""]
    lines += markdown_table(("count", "mean", "p50", "p90", "p99", "max"), [
        (lat["count"], *(fmt(lat[k]) for k in ("mean", "p50", "p90", "p99", "max")))], "rrrrrr")
    stages = report.get("stage_latency_ms") or {}
    if stages:
        lines += [""] + markdown_table(("stage", "p50 ms", "p99 ms"), [
            (name, fmt(stat["p50"]), fmt(stat["p99"])) for name, stat in stages.items()], "lrr")
    if report.get("per_class_iou"):
        lines += ["", "## Per-class IoU", ""] + markdown_table(("class", "IoU (%)"), [
            (name, fmt(v, 100, 2)) for name, v in report["per_class_iou"].items()], "lr")
    outputs = {k: v for k, v in report["outputs"].items() if v}
    lines += ["", "## Outputs", ""] + [f"- {k}: `{v}`" for k, v in outputs.items()]
    for key in ("latency_plot", "iou_plot", "strip"):
        if outputs.get(key):
            lines += ["", f"![{key}]({outputs[key]})"]
    return "\n".join(lines) + "\n"


# -- the evaluation loop -------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputSettings:
    """What the bag tools write besides the report (offline evaluation and live replay)."""

    storage: str | None = None         # of the output bag; None: the input's (mcap for ROS 1)
    video: bool = True                 # overlay.mp4
    strip_frames: int = 8              # frames in overlay_strip.png
    progress: bool = True              # progress bars


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and which outputs to write."""

    image_topic: str
    label_topic: str | None = None
    color: bool = True                 # also write /segmentation/color
    warmup: int = 1
    max_frames: int | None = None
    overwrite: bool = True
    checkpoint: str | None = None      # for the report
    outputs: OutputSettings = OutputSettings()


def load_segmenter(checkpoint: str | os.PathLike | None, options: RuntimeOptions) -> Any:
    """The Segmenter for a checkpoint (default: the shipped weights) run as ``options`` say."""
    from dfanet_core.deploy.segmenter import Segmenter

    path = resolve_checkpoint(checkpoint)
    LOG.info("loading %s (backend %s, %s)", path, options.backend, options.precision or "fp32")
    return Segmenter.load(path, options)


def model_description(segmenter: Any, checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    """Checkpoint/model fields of a report."""
    meta = segmenter.meta
    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "variant": meta.get("variant"),
        "trained": meta.get("trained"),
        "dataset": meta.get("dataset"),
        "backend": segmenter.backend_name,
        "precision": segmenter.precision,
        "input_size": list(segmenter.input_size),
        "num_classes": int(meta["num_classes"]),
        "ignore_index": int(meta.get("ignore_index", 255)),
    }


def preflight(bag: Bag, image_topic: str, label_topic: str | None) -> dict[str, Any]:
    """Check topics and the first messages before the (slow) model load: fail early and clearly."""
    image_info = bag.require_topic(image_topic)
    first = bag.first(image_topic)
    info = {"image_type": image_info.msgtype, "image_count": image_info.count,
            "image_shape": list(first.array.shape)}
    if label_topic is not None:
        label_info = bag.require_topic(label_topic, (IMAGE_TYPE,), role="label")
        check_label_fits(bag.first(label_topic, as_label=True), first.array.shape, image_topic)
        info["label_count"] = label_info.count
    return info


def output_storage(bag: Bag, requested: str | None) -> str:
    """The output bag's storage: ``requested``, else the input bag's (mcap for a ROS 1 bag)."""
    return requested or (bag.storage if bag.storage in STORAGES else "mcap")


def bag_frame_rate(bag: Bag, topic: str) -> float:
    """Mean message rate of a topic over the bag's duration (1.0 when it cannot be told)."""
    count = bag.topics[topic].count
    duration_s = (bag.end_ns - bag.start_ns) / 1e9
    return (count - 1) / duration_s if count > 1 and duration_s > 0 else 1.0


def evaluate_bag(bag_path: str | os.PathLike, segmenter: Any, out_dir: str | os.PathLike,
                 settings: EvalSettings) -> dict[str, Any]:
    """Run the Segmenter over a bag's image topic; write output bag, overlays and report.

    Returns the report dict (also written to ``out_dir/report.json``). Raises BagError/TopicError
    on bad input; the output bag then never appears.
    """
    out_dir = Path(out_dir)
    with open_bag(bag_path) as bag:
        info = preflight(bag, settings.image_topic, settings.label_topic)
        return evaluate_open_bag(bag, info, segmenter, out_dir, settings)


def evaluate_open_bag(bag: Bag, info: dict[str, Any], segmenter: Any, out_dir: Path,
                       settings: EvalSettings) -> dict[str, Any]:
    from tqdm import tqdm

    model = model_description(segmenter, settings.checkpoint)
    meter = AccuracyMeter(model["num_classes"], segmenter.class_names, model["ignore_index"])
    total = info["image_count"] if settings.max_frames is None else min(
        info["image_count"], settings.max_frames)
    recorder = OverlayRecorder(out_dir, segmenter.palette, total,
                               bag_frame_rate(bag, settings.image_topic),
                               settings.outputs.strip_frames, video=settings.outputs.video)
    matcher: StampMatcher[tuple[np.ndarray, int], StampedImage] = StampMatcher()
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    storage = output_storage(bag, settings.outputs.storage)
    _warm_up(segmenter, bag.first(settings.image_topic).array, settings.warmup)
    frames = 0
    start = time.perf_counter()
    try:
        with AtomicBagWriter(out_dir / OUTPUT_BAG_NAME, storage,
                             overwrite=settings.overwrite) as writer:
            writer.add_topic(MASK_TOPIC)
            if settings.color:
                writer.add_topic(COLOR_TOPIC)
            progress = tqdm(total=total, desc=f"eval {Path(bag.path).name}", unit="frame",
                            disable=not settings.outputs.progress)
            for is_label, msg in bag.stream(settings.image_topic, settings.label_topic):
                if is_label:
                    pair = matcher.add_right(msg.stamp_ns, msg)
                    if pair is not None:
                        _score(meter, recorder, pair, settings.image_topic)
                    continue
                if frames >= total:
                    continue
                mask, elapsed_ms, timings = _predict(segmenter, msg.array)
                latencies.append(elapsed_ms)
                for stage, value in timings.items():
                    stages.setdefault(stage, []).append(float(value))
                writer.write_image(MASK_TOPIC, mask, "mono8", msg.stamp_ns, msg.frame_id,
                                   msg.log_time_ns)
                if settings.color:
                    writer.write_image(COLOR_TOPIC, colorize(mask, segmenter.palette), "rgb8",
                                       msg.stamp_ns, msg.frame_id, msg.log_time_ns)
                recorder.add(frames, msg.array, mask)
                pair = matcher.add_left(msg.stamp_ns, (mask, frames))
                if pair is not None:
                    _score(meter, recorder, pair, settings.image_topic)
                frames += 1
                progress.update(1)
            progress.close()
        wall_s = time.perf_counter() - start
        outputs = recorder.finish()
    except BaseException:
        recorder.discard()
        raise
    report = build_report("offline", bag, settings, model, info, frames, meter, matcher, wall_s)
    report["latency_ms"] = summarize_ms(latencies)
    report["latency_kind"] = "Segmenter.predict wall time per frame"
    report["stage_latency_ms"] = {k: summarize_ms(v) for k, v in stages.items()}
    report["outputs"].update(outputs)
    write_report(out_dir, report, latencies)
    return report


def _warm_up(segmenter: Any, image: np.ndarray, count: int) -> None:
    for _ in range(count):
        segmenter.predict(image)


def _predict(segmenter: Any, image: np.ndarray) -> tuple[np.ndarray, float, dict[str, float]]:
    start = time.perf_counter()
    result = segmenter.predict_detailed([image])
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    return result.masks[0], elapsed_ms, dict(result.timings_ms)


def _score(meter: AccuracyMeter, recorder: OverlayRecorder,
           pair: tuple[tuple[np.ndarray, int], StampedImage], image_topic: str) -> None:
    (mask, index), label = pair
    check_label_fits(label, mask.shape, image_topic)
    meter.update(mask, label.array)
    recorder.add_label(index, label.array)


def build_report(mode: str, bag: Bag, settings: EvalSettings, model: dict[str, Any],
                 info: dict[str, Any], frames: int, meter: AccuracyMeter,
                 matcher: StampMatcher, wall_s: float) -> dict[str, Any]:
    """The report fields common to offline evaluation and live replay."""
    accuracy = meter.result()
    report: dict[str, Any] = {
        "mode": mode,
        "bag": str(bag.path),
        "storage": bag.storage,
        "image_topic": settings.image_topic,
        "image_type": info["image_type"],
        "image_shape": info["image_shape"],
        "label_topic": settings.label_topic,
        **model,
        "frames": frames,
        "frames_with_labels": meter.pairs,
        "frames_without_label": frames - meter.pairs if settings.label_topic else frames,
        "labels_without_frame": len(matcher.unmatched_right),
        "void_label_pixels": meter.void_pixels,
        **accuracy,
        "wall_time_s": wall_s,
        "wall_time_per_frame_ms": 1000.0 * wall_s / frames if frames else None,
        "throughput_fps": frames / wall_s if frames and wall_s > 0 else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "outputs": {"bag": OUTPUT_BAG_NAME, "bag_topics": [MASK_TOPIC] + (
            [COLOR_TOPIC] if settings.color else [])},
    }
    if settings.label_topic and meter.pairs == 0:
        LOG.warning("no label on %s has the header stamp of an image on %s: no accuracy",
                    settings.label_topic, settings.image_topic)
    return report
