"""Build a replayable rosbag2 from an image folder (+ label folder) or a video.

    python -m dfanet_ros.make_bag --images DIR [--labels DIR] --out BAG --rate HZ
                                  [--storage {sqlite3,mcap}] [--raw] [--compressed]
    python -m dfanet_ros.make_bag --video FILE --out BAG [--rate HZ] ...

(the command line is in :mod:`dfanet_ros.bag.cli`.)

Frames are stamped ``start + i / rate``; the log (receive) time equals the header stamp, so a
replay follows the given rate and images pair with labels by exact stamp. Topics (names are
options): raw ``sensor_msgs/Image`` rgb8 on ``/camera/image_raw``, ``CompressedImage`` (JPEG or
PNG, image_transport format string) on ``<image topic>/compressed``, mono8 labels on
``/camera/labels``. The bag is written atomically: it appears at ``--out`` only when complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dfanet_core.files import list_images
from dfanet_core.imaging import encode_image, read_image, read_label

from .io import COMPRESSED_TYPE, IMAGE_TYPE, STORAGES, AtomicBagWriter

LOG = logging.getLogger("dfanet_ros.make_bag")


@dataclass
class SourceFrame:
    """One frame to write: RGB image, optional label of the same size, and where it came from."""

    image: np.ndarray
    label: np.ndarray | None
    name: str


@dataclass
class BagSpec:
    """What the bag holds and how it is stamped."""

    rate_hz: float
    storage: str = "mcap"
    raw: bool = True
    compressed: bool = False
    frame_id: str = "camera"
    image_topic: str = "/camera/image_raw"
    compressed_topic: str | None = None     # default: <image_topic>/compressed
    label_topic: str = "/camera/labels"
    compressed_format: str = "jpeg"
    jpeg_quality: int = 90
    start_ns: int | None = None             # default: now, rounded to the second

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise ValueError(f"rate must be > 0 Hz, got {self.rate_hz}")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if not (self.raw or self.compressed):
            raise ValueError("nothing to write: enable raw and/or compressed images")
        if self.compressed_format not in ("jpeg", "png"):
            raise ValueError(f"compressed format must be jpeg or png, "
                             f"got {self.compressed_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {self.jpeg_quality}")
        if self.compressed_topic is None:
            self.compressed_topic = self.image_topic.rstrip("/") + "/compressed"

    def stamp_ns(self, index: int) -> int:
        """Header stamp (and log time) of frame ``index``."""
        assert self.start_ns is not None
        return self.start_ns + round(index * 1e9 / self.rate_hz)


# -- sources -------------------------------------------------------------------------------------
def folder_frames(images_dir: str | os.PathLike, labels_dir: str | os.PathLike | None = None,
                  max_frames: int | None = None) -> tuple[int, Iterator[SourceFrame]]:
    """(frame count, frames) of an image folder, each with the label of the same file stem."""
    images = list_images(Path(images_dir))[:max_frames]
    labels: dict[str, Path] = {}
    if labels_dir is not None:
        labels = {p.stem: p for p in list_images(Path(labels_dir))}
        missing = [p.name for p in images if p.stem not in labels]
        if missing:
            raise ValueError(f"label folder {labels_dir} has no label for {len(missing)} "
                             f"image(s), e.g. {missing[:3]} (labels are matched by file stem)")

    def generate() -> Iterator[SourceFrame]:
        for path in images:
            image = read_image(path)
            label = None
            if labels_dir is not None:
                label_path = labels[path.stem]
                label = read_label(label_path)
                if label.shape != image.shape[:2]:
                    raise ValueError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} "
                                     f"but image {path} is {image.shape[1]}x{image.shape[0]}")
            yield SourceFrame(image, label, path.name)

    return len(images), generate()


def video_frames(video: str | os.PathLike, max_frames: int | None = None
                 ) -> tuple[int, float, Iterator[SourceFrame]]:
    """(frame count or 0 if unknown, frames per second, RGB frames) of a video file."""
    path = Path(video)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"video file {path} cannot be opened by OpenCV")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if max_frames is not None:
        count = min(count, max_frames) if count else max_frames

    def generate() -> Iterator[SourceFrame]:
        index = 0
        try:
            while max_frames is None or index < max_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                yield SourceFrame(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), None,
                                  f"{path.name}#{index}")
                index += 1
        finally:
            capture.release()
        if index == 0:
            raise ValueError(f"video file {path} has no readable frames")

    return count, fps, generate()


# -- writing -------------------------------------------------------------------------------------
def compressed_format_string(fmt: str) -> str:
    """The image_transport format string for an rgb8 source encoded as ``fmt``."""
    return f"rgb8; {fmt} compressed bgr8"


def write_bag(out: str | os.PathLike, frames: Iterator[SourceFrame], spec: BagSpec, *,
              total: int | None = None, with_labels: bool = False, overwrite: bool = False,
              progress: bool = True) -> dict[str, int]:
    """Write frames into a new rosbag2 at ``out`` (atomically); returns messages per topic."""
    from tqdm import tqdm

    if spec.start_ns is None:
        spec = dataclasses.replace(spec, start_ns=int(time.time()) * 1_000_000_000)
    suffix = ".jpg" if spec.compressed_format == "jpeg" else ".png"
    fmt = compressed_format_string(spec.compressed_format)
    count = 0
    with AtomicBagWriter(out, spec.storage, overwrite=overwrite) as writer:
        if spec.raw:
            writer.add_topic(spec.image_topic, IMAGE_TYPE)
        if spec.compressed:
            writer.add_topic(spec.compressed_topic, COMPRESSED_TYPE)
        if with_labels:
            writer.add_topic(spec.label_topic, IMAGE_TYPE)
        for index, frame in enumerate(tqdm(frames, total=total or None, unit="frame",
                                           desc=f"bag {Path(out).name}", disable=not progress)):
            stamp = spec.stamp_ns(index)
            if spec.raw:
                writer.write_image(spec.image_topic, frame.image, "rgb8", stamp, spec.frame_id)
            if spec.compressed:
                data = encode_image(frame.image, suffix, quality=spec.jpeg_quality)
                writer.write_compressed(spec.compressed_topic, data, fmt, stamp, spec.frame_id)
            if with_labels:
                if frame.label is None:
                    raise ValueError(f"frame {frame.name} has no label")
                writer.write_image(spec.label_topic, frame.label, "mono8", stamp, spec.frame_id)
            count += 1
        if count == 0:
            raise ValueError("no frames to write")
        counts = dict(writer.counts)
    return counts
