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

The pieces (accuracy meter, latency summary, overlays, report writer) are shared with the live
replay in :mod:`dfanet_ros.bag_replay`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfanet_core.imaging import atomic_write_bytes, colorize, overlay, write_image
from dfanet_ros.bag_io import (
    IMAGE_TYPE,
    STORAGES,
    AtomicBagWriter,
    Bag,
    BagError,
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


# -- latency -------------------------------------------------------------------------------------
def summarize_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, min, p50, p90, p99, max of a list of milliseconds (None when empty)."""
    if not values:
        return {"count": 0, "mean": None, "min": None, "p50": None, "p90": None, "p99": None,
                "max": None}
    data = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {"count": int(data.size), "mean": float(data.mean()), "min": float(data.min()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(data.max())}


# -- overlays ------------------------------------------------------------------------------------
class OverlayRecorder:
    """Collects a few overlay tiles for a PNG strip and streams every overlay into an mp4.

    The mp4 is written to a hidden temporary file in the output folder and renamed only when
    finished. OpenCV builds without an mp4 encoder give no video, never a broken file.
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
        self._video_tmp: Path | None = None
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
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{VIDEO_NAME}.", suffix=".partial.mp4",
                                        dir=self.out_dir)
            os.close(fd)
            self._video_tmp = Path(name)
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
        if self._writer is not None and self._video_tmp is not None:
            self._writer.release()
            self._writer = None
            if self.video_frames > 0 and self._video_tmp.stat().st_size > 0:
                self._video_tmp.chmod(0o644)  # mkstemp makes 0600
                os.replace(self._video_tmp, self.out_dir / VIDEO_NAME)
                outputs["video"] = VIDEO_NAME
        self.discard()
        return outputs

    def discard(self) -> None:
        """Drop an unfinished video (after an error, or when mp4 cannot be written)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._video_tmp is not None:
            self._video_tmp.unlink(missing_ok=True)
            self._video_tmp = None


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
    report["outputs"]["latency_plot"] = _plot_latency(out_dir / LATENCY_PLOT, frame_latency_ms,
                                                      latency_label)
    report["outputs"]["iou_plot"] = _plot_iou(out_dir / IOU_PLOT, report.get("per_class_iou"),
                                              report.get("miou"))
    atomic_write_bytes(out_dir / REPORT_JSON,
                       (json.dumps(report, indent=2, sort_keys=False) + "\n").encode())
    atomic_write_bytes(out_dir / REPORT_MD, render_markdown(report).encode())
    LOG.info("report written to %s", out_dir / REPORT_JSON)


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (imported on first use: it is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_latency(path: Path, values: Sequence[float], label: str) -> str | None:
    if not values:
        return None
    plt = _pyplot()
    stats = summarize_ms(values)
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    ax.plot(range(len(values)), values, marker=".", linewidth=1, label=label)
    ax.axhline(stats["p50"], color="tab:green", linestyle="--", label=f"p50 {stats['p50']:.1f} ms")
    ax.axhline(stats["p99"], color="tab:red", linestyle=":", label=f"p99 {stats['p99']:.1f} ms")
    ax.set_xlabel("frame")
    ax.set_ylabel("ms")
    ax.set_title(f"Per-frame {label.lower()}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path.name


def _plot_iou(path: Path, per_class: dict[str, float | None] | None,
              miou: float | None) -> str | None:
    if not per_class:
        return None
    plt = _pyplot()
    names = list(per_class)
    values = [100.0 * v if v is not None else 0.0 for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2), dpi=100)
    bars = ax.barh(names, values, color="tab:blue")
    for bar, value in zip(bars, per_class.values()):
        text = "n/a" if value is None else f"{100 * value:.1f}"
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, text,
                va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    title = "Per-class IoU" + (f" (mIoU {100 * miou:.1f}%)" if miou is not None else "")
    ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path.name


def _save_figure(fig: Any, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def _fmt(value: Any, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{scale * value:.{digits}f}{unit}"


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
        f"- **mIoU: {_fmt(report['miou'], 100, 2, '%')}**, pixel accuracy "
        f"{_fmt(report.get('pixel_accuracy'), 100, 2, '%')}",
        f"- throughput: {_fmt(report.get('throughput_fps'), 1, 2)} frames/s; wall time per frame "
        f"{_fmt(report.get('wall_time_per_frame_ms'), 1, 1, ' ms')}",
    ]
    if "dropped_frames" in report:
        lines.append(f"- sent {report['frames_sent']}, masks received {report['frames']}, "
                     f"**dropped {report['dropped_frames']}**; input rate "
                     f"{_fmt(report.get('input_rate_hz'), 1, 2)} Hz, output rate "
                     f"{_fmt(report.get('output_rate_hz'), 1, 2)} Hz")
    lines += ["", f"## Latency ({report.get('latency_kind', 'Segmenter')}, ms)", "",
              "| count | mean | p50 | p90 | p99 | max |", "|---:|---:|---:|---:|---:|---:|",
              f"| {lat['count']} | {_fmt(lat['mean'])} | {_fmt(lat['p50'])} | "
              f"{_fmt(lat['p90'])} | {_fmt(lat['p99'])} | {_fmt(lat['max'])} |"]
    stages = report.get("stage_latency_ms") or {}
    if stages:
        lines += ["", "| stage | p50 ms | p99 ms |", "|---|---:|---:|"]
        lines += [f"| {name} | {_fmt(stat['p50'])} | {_fmt(stat['p99'])} |"
                  for name, stat in stages.items()]
    if report.get("per_class_iou"):
        lines += ["", "## Per-class IoU", "", "| class | IoU (%) |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(v, 100, 2)} |" for name, v in report["per_class_iou"].items()]
    outputs = {k: v for k, v in report["outputs"].items() if v}
    lines += ["", "## Outputs", ""] + [f"- {k}: `{v}`" for k, v in outputs.items()]
    for key in ("latency_plot", "iou_plot", "strip"):
        if outputs.get(key):
            lines += ["", f"![{key}]({outputs[key]})"]
    return "\n".join(lines) + "\n"


# -- the evaluation loop -------------------------------------------------------------------------
@dataclass
class EvalSettings:
    """What to evaluate and which outputs to write."""

    image_topic: str
    label_topic: str | None = None
    out_storage: str | None = None     # None: the input's storage (mcap for ROS 1 bags)
    color: bool = True
    video: bool = True
    strip_frames: int = 8
    warmup: int = 1
    max_frames: int | None = None
    overwrite: bool = True
    progress: bool = True
    checkpoint: str | None = None      # for the report
    extra: dict[str, Any] = field(default_factory=dict)


def load_segmenter(checkpoint: str | os.PathLike | None, backend: str = "auto",
                   precision: str = "fp32", input_size: Sequence[int] | None = None) -> Any:
    """The Segmenter for a checkpoint (default: the shipped weights under weights/)."""
    from dfanet_core import Segmenter

    path = resolve_checkpoint(checkpoint)
    kwargs: dict[str, Any] = {"backend": backend, "precision": precision}
    if input_size:
        kwargs["input_size"] = tuple(input_size)
    LOG.info("loading %s (backend %s, %s)", path, backend, precision)
    return Segmenter.from_checkpoint(path, **kwargs)


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """The given checkpoint, or the shipped weights under weights/; FileNotFoundError if none."""
    from dfanet_core.checkpoint import default_checkpoint

    path = Path(checkpoint) if checkpoint else default_checkpoint()
    if path is None:
        raise FileNotFoundError("no --checkpoint given and no shipped weights under weights/; "
                                "pass --checkpoint PATH.safetensors")
    return path


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
        return _evaluate_open_bag(bag, info, segmenter, out_dir, settings)


def _evaluate_open_bag(bag: Bag, info: dict[str, Any], segmenter: Any, out_dir: Path,
                       settings: EvalSettings) -> dict[str, Any]:
    from tqdm import tqdm

    model = model_description(segmenter, settings.checkpoint)
    meter = AccuracyMeter(model["num_classes"], segmenter.class_names, model["ignore_index"])
    total = info["image_count"] if settings.max_frames is None else min(
        info["image_count"], settings.max_frames)
    recorder = OverlayRecorder(out_dir, segmenter.palette, total,
                               bag_frame_rate(bag, settings.image_topic), settings.strip_frames,
                               video=settings.video)
    matcher: StampMatcher[tuple[np.ndarray, int], StampedImage] = StampMatcher()
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    storage = output_storage(bag, settings.out_storage)
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
                            disable=not settings.progress)
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
    report.update(settings.extra)
    if settings.label_topic and meter.pairs == 0:
        LOG.warning("no label on %s has the header stamp of an image on %s: no accuracy",
                    settings.label_topic, settings.image_topic)
    return report


# -- CLI -----------------------------------------------------------------------------------------
# What the CLIs report as a clear error (exit code 2): bad bags/topics, checkpoints
# (CheckpointError), missing backends, export failures, a replay that could not run.
CLI_ERRORS = (BagError, FileNotFoundError, ValueError, ImportError, RuntimeError)


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    """BAG, --image-topic, --label-topic, shared with bag_replay."""
    parser.add_argument("bag", help="rosbag2 directory, .db3/.mcap file or ROS 1 .bag")
    parser.add_argument("--image-topic", required=True,
                        help="sensor_msgs/Image or CompressedImage topic to segment")
    parser.add_argument("--label-topic", default=None,
                        help="mono8 Image topic of class ids, matched to images by header stamp")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--out-storage, --no-video, --no-progress, --verbose, shared with bag_replay."""
    parser.add_argument("--out-storage", choices=list(STORAGES), default=None,
                        help="storage of the output bag (default: the input bag's)")
    parser.add_argument("--no-video", action="store_true", help="do not write overlay.mp4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint/--backend/--precision/--input-size, shared with bag_replay."""
    parser.add_argument("--checkpoint", default=None,
                        help="dfanet checkpoint (.safetensors); default: shipped weights/")
    parser.add_argument("--backend", default="auto",
                        choices=["auto", "onnxruntime", "torch", "tensorrt"],
                        help="Segmenter backend (default auto)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size (default: the checkpoint's)")


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line interface of the offline evaluation."""
    parser = argparse.ArgumentParser(
        prog="python -m dfanet_ros.bag_eval",
        description="Evaluate a DFANet checkpoint on a rosbag: mIoU against a label topic, "
                    "latency, output bag with /segmentation/mask and /segmentation/color.")
    add_bag_arguments(parser)
    parser.add_argument("--out", required=True, help="output directory")
    add_model_arguments(parser)
    parser.add_argument("--no-color", action="store_true", help="do not write /segmentation/color")
    parser.add_argument("--strip-frames", type=int, default=8,
                        help="frames in overlay_strip.png (default 8)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed Segmenter runs before the timed pass (default 1)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N images")
    add_output_arguments(parser)
    return parser


def setup_logging(verbose: bool = False) -> None:
    """Plain logging to stderr for the CLIs."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def print_summary(report: dict[str, Any], out_dir: Path) -> None:
    """A few lines on stdout for the user of the CLI."""
    lat = report["latency_ms"]
    lines = [f"frames: {report['frames']} (with labels: {report['frames_with_labels']})",
             f"mIoU: {_fmt(report['miou'], 100, 2, '%')}",
             f"latency ms: p50 {_fmt(lat['p50'])} p99 {_fmt(lat['p99'])}",
             f"throughput: {_fmt(report.get('throughput_fps'), 1, 2)} frames/s",
             f"report: {out_dir / REPORT_JSON}"]
    if "dropped_frames" in report:
        lines.insert(1, f"dropped: {report['dropped_frames']} of {report['frames_sent']} sent")
    sys.stdout.write("\n".join(lines) + "\n")


def run_cli(work: Callable[[], dict[str, Any] | None], out_dir: Path, verbose: bool,
            log: logging.Logger = LOG) -> int:
    """Run a CLI's ``work``: a :data:`CLI_ERRORS` failure is logged (exit code 2), a report is
    summarized on stdout (exit code 0). Shared with bag_replay."""
    try:
        report = work()
    except CLI_ERRORS as exc:
        log.error("%s", exc, exc_info=verbose)
        return 2
    if report is not None:
        print_summary(report, out_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dfanet_ros.bag_eval`` / ``dfanet-bag-eval``."""
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    settings = EvalSettings(image_topic=args.image_topic, label_topic=args.label_topic,
                            out_storage=args.out_storage, color=not args.no_color,
                            video=not args.no_video, strip_frames=args.strip_frames,
                            warmup=args.warmup, max_frames=args.max_frames,
                            progress=not args.no_progress)
    out_dir = Path(args.out)

    def work() -> dict[str, Any]:
        with open_bag(args.bag) as bag:
            info = preflight(bag, args.image_topic, args.label_topic)
            LOG.info("bag %s: %d frames on %s (%s)", bag.path, info["image_count"],
                     args.image_topic, info["image_type"])
            checkpoint = resolve_checkpoint(args.checkpoint)
            settings.checkpoint = str(checkpoint)
            with load_segmenter(checkpoint, args.backend, args.precision,
                                args.input_size) as segmenter:
                return _evaluate_open_bag(bag, info, segmenter, out_dir, settings)

    return run_cli(work, out_dir, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
