"""Rosbag reading and writing for offline evaluation, live replay and the bag maker. No rclpy.

Reads rosbag2 directories (sqlite3 or MCAP), single .db3/.mcap files and ROS 1 .bag files through
the PyPI ``rosbags`` library; every failure becomes a :class:`BagError` that names the bag (and
the topic) and says what is wrong. Writes rosbag2 bags atomically: the bag is built in a hidden
temporary directory beside the target and renamed into place only when complete, so a crash never
leaves a bag that looks finished.
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from .. import conversions
from ..conversions import stamp_to_ns

LOG = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
# rosbags already names ROS 1 types the ROS 2 way; these cover other spellings.
_ROS1_NAMES = {"sensor_msgs/Image": IMAGE_TYPE, "sensor_msgs/CompressedImage": COMPRESSED_TYPE}
LABEL_ENCODINGS = ("mono8", "8UC1")
STORAGES = ("sqlite3", "mcap")
# Messages are written with the definitions and type hashes of this store (identical for Image
# and CompressedImage from Humble to Kilted).
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)

T = TypeVar("T")
U = TypeVar("U")


class BagError(RuntimeError):
    """A bag that is missing, truncated/corrupt, empty, or lacks what was asked of it."""


class TopicError(BagError):
    """A topic that is missing from a bag or holds messages of the wrong type/encoding/size."""


@dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag: its name, message type and message count."""

    name: str
    msgtype: str
    count: int


@dataclass
class StampedImage:
    """A decoded message: RGB uint8 (H, W, 3) image or uint8 (H, W) label, with its header."""

    topic: str
    stamp_ns: int      # header.stamp: what images, labels and masks are matched on
    log_time_ns: int   # when the recorder received it: what replay timing follows
    frame_id: str
    array: np.ndarray


def format_stamp(stamp_ns: int) -> str:
    """Nanoseconds -> 'sec.nanosec' as ROS tools print stamps."""
    return f"{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}"


class Bag:
    """An open bag: topic listing, message iteration and decoding, all errors as BagError.

    Use :func:`open_bag` (or ``with Bag(path) as bag``). The iterators check at the end that every
    message the bag's index announced was read, so a silently damaged file is still reported.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._reader = _open_reader(self.path)
        self.storage = _storage_name(self.path)
        self.topics: dict[str, TopicSummary] = {
            name: TopicSummary(name, _normalize_type(info.msgtype or "?"), int(info.msgcount))
            for name, info in sorted(self._reader.topics.items())
        }
        self.message_count = sum(t.count for t in self.topics.values())
        if self.message_count == 0:
            self.close()
            topics = ", ".join(self.topics) or "none"
            raise BagError(f"bag {self.path} contains no messages (topics: {topics})")
        self.start_ns = int(self._reader.start_time)
        self.end_ns = int(self._reader.end_time)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the bag's files."""
        if self._reader.stack is not None:
            self._reader.close()

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- topics ---------------------------------------------------------------------------------
    def describe_topics(self) -> str:
        """One line per topic, 'name [type] xcount', for error messages and the CLIs."""
        return "\n".join(f"  {t.name} [{t.msgtype}] x{t.count}" for t in self.topics.values())

    def require_topic(self, name: str, msgtypes: Iterable[str] = IMAGE_TYPES,
                      role: str = "image") -> TopicSummary:
        """The named topic, or a TopicError listing the bag's topics (missing / wrong type)."""
        msgtypes = tuple(msgtypes)
        topic = self.topics.get(name)
        if topic is None:
            raise TopicError(f"{role} topic {name!r} is not in bag {self.path}; "
                             f"available topics:\n{self.describe_topics()}")
        if topic.msgtype not in msgtypes:
            raise TopicError(f"{role} topic {name!r} in bag {self.path} has type {topic.msgtype}, "
                             f"expected {' or '.join(msgtypes)}; available topics:\n"
                             f"{self.describe_topics()}")
        return topic

    def image_topics(self) -> list[str]:
        """Topics holding Image or CompressedImage messages."""
        return [t.name for t in self.topics.values() if t.msgtype in IMAGE_TYPES]

    # -- messages -------------------------------------------------------------------------------
    def raw_messages(self, topics: Iterable[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, msgtype, log_time_ns, CDR bytes) of the given topics in log-time order."""
        names = list(topics)
        connections = [c for c in self._reader.connections if c.topic in names]
        expected = {name: self.topics[name].count for name in names}
        seen = dict.fromkeys(names, 0)
        try:
            for connection, log_time, raw in self._reader.messages(connections=connections):
                seen[connection.topic] += 1
                yield connection.topic, _normalize_type(connection.msgtype), int(log_time), raw
        except BagError:
            raise
        except Exception as exc:  # rosbags/sqlite3/struct errors on damaged files
            raise BagError(f"bag {self.path} is truncated or corrupt "
                           f"(reading {', '.join(names)}): {exc}") from exc
        short = {n: (seen[n], expected[n]) for n in names if seen[n] != expected[n]}
        if short:
            detail = ", ".join(f"{n}: read {s} of {e}" for n, (s, e) in short.items())
            raise BagError(f"bag {self.path} is truncated or corrupt: its index announces more "
                           f"messages than could be read ({detail})")

    def deserialize(self, raw: bytes, msgtype: str, topic: str) -> Any:
        """Serialized bytes -> rosbags message object; BagError naming the topic if damaged."""
        try:
            return self._reader.deserialize(raw, msgtype)
        except Exception as exc:
            raise BagError(f"bag {self.path}: a message on {topic} cannot be decoded "
                           f"(truncated or corrupt): {exc}") from exc

    def to_cdr(self, topic: str, msgtype: str, raw: bytes) -> bytes:
        """A message as ROS 2 CDR bytes, ready to publish: rosbag2 data as it is, ROS 1 images
        re-serialized field by field (the ROS 1 header's seq is dropped, pixels untouched)."""
        if self.storage != "rosbag1":
            return bytes(raw)
        msg = self.deserialize(raw, msgtype, topic)
        header = _header(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id))
        types = TYPESTORE.types
        if msgtype == COMPRESSED_TYPE:
            ros2 = types[COMPRESSED_TYPE](header=header, format=msg.format, data=msg.data)
        elif msgtype == IMAGE_TYPE:
            ros2 = types[IMAGE_TYPE](header=header, height=msg.height, width=msg.width,
                                     encoding=msg.encoding, is_bigendian=msg.is_bigendian,
                                     step=msg.step, data=msg.data)
        else:
            raise TopicError(f"bag {self.path}: cannot convert {msgtype} on {topic} to ROS 2")
        return bytes(TYPESTORE.serialize_cdr(ros2, msgtype))

    def decode(self, topic: str, msgtype: str, log_time_ns: int, raw: bytes,
               *, as_label: bool = False) -> StampedImage:
        """Deserialize and decode one image (RGB) or label (mono8 class ids) message."""
        msg = self.deserialize(raw, msgtype, topic)
        stamp = stamp_to_ns(msg.header.stamp)
        where = f"bag {self.path}, topic {topic}, stamp {format_stamp(stamp)}"
        if as_label:
            array = decode_label(msg, msgtype, where)
        else:
            array = decode_image(msg, msgtype, where)
        return StampedImage(topic, stamp, log_time_ns, str(msg.header.frame_id), array)

    def images(self, topic: str) -> Iterator[StampedImage]:
        """Decoded RGB frames of an Image or CompressedImage topic, in log-time order."""
        self.require_topic(topic)
        for name, msgtype, log_time, raw in self.raw_messages([topic]):
            yield self.decode(name, msgtype, log_time, raw)

    def labels(self, topic: str) -> Iterator[StampedImage]:
        """Decoded mono8 label masks of an Image topic, in log-time order."""
        self.require_topic(topic, (IMAGE_TYPE,), role="label")
        for name, msgtype, log_time, raw in self.raw_messages([topic]):
            yield self.decode(name, msgtype, log_time, raw, as_label=True)

    def stream(self, image_topic: str, label_topic: str | None = None
               ) -> Iterator[tuple[bool, StampedImage]]:
        """(is_label, decoded message) of an image topic and optionally a label topic, merged in
        log-time order, so a consumer can pair them by stamp with bounded memory."""
        self.require_topic(image_topic)
        topics = [image_topic]
        if label_topic is not None:
            self.require_topic(label_topic, (IMAGE_TYPE,), role="label")
            topics.append(label_topic)
        for name, msgtype, log_time, raw in self.raw_messages(topics):
            is_label = name == label_topic
            yield is_label, self.decode(name, msgtype, log_time, raw, as_label=is_label)

    def first(self, topic: str, *, as_label: bool = False) -> StampedImage:
        """The first decoded message of a topic (a cheap check before a long run)."""
        for name, msgtype, log_time, raw in self._first_raw(topic):
            return self.decode(name, msgtype, log_time, raw, as_label=as_label)
        raise TopicError(f"topic {topic} in bag {self.path} has no messages")

    def _first_raw(self, topic: str) -> Iterator[tuple[str, str, int, bytes]]:
        connections = [c for c in self._reader.connections if c.topic == topic]
        try:
            for connection, log_time, raw in self._reader.messages(connections=connections):
                yield connection.topic, _normalize_type(connection.msgtype), int(log_time), raw
                return
        except Exception as exc:
            raise BagError(f"bag {self.path} is truncated or corrupt (reading {topic}): "
                           f"{exc}") from exc


def open_bag(path: str | os.PathLike) -> Bag:
    """Open a rosbag2 directory, a .db3/.mcap file or a ROS 1 .bag; BagError says what is wrong."""
    return Bag(path)


def _open_reader(path: Path) -> AnyReader:
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        storage_files = sorted(p.name for p in path.iterdir() if p.suffix in (".db3", ".mcap"))
        hint = (f"; it holds {', '.join(storage_files)}: open that file directly or run "
                f"'ros2 bag reindex {path}'" if storage_files else "")
        raise BagError(f"bag {path} is a directory without metadata.yaml, so not a rosbag2 bag "
                       f"(or an unfinished one){hint}")
    if path.is_file() and path.stat().st_size == 0:
        raise BagError(f"bag {path} is an empty file (truncated or never written)")
    try:
        reader = AnyReader([path], default_typestore=TYPESTORE)
        reader.open()
    except Exception as exc:  # AnyReaderError, sqlite3/struct/yaml errors, unknown suffixes
        raise BagError(f"bag {path} cannot be opened: it is truncated, corrupt or not a rosbag "
                       f"({type(exc).__name__}: {exc})") from exc
    return reader


def _storage_name(path: Path) -> str:
    if path.suffix == ".bag":
        return "rosbag1"
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    meta = (path / "metadata.yaml").read_text(errors="replace")
    return "mcap" if "storage_identifier: mcap" in meta else "sqlite3"


def _normalize_type(msgtype: str) -> str:
    return _ROS1_NAMES.get(msgtype, msgtype)


# -- decoding ------------------------------------------------------------------------------------
def decode_image(msg: Any, msgtype: str, where: str) -> np.ndarray:
    """Image/CompressedImage message -> RGB uint8 (H, W, 3) through dfanet_ros.conversions."""
    try:
        if msgtype == COMPRESSED_TYPE:
            return conversions.compressed_to_rgb(msg)
        return conversions.image_to_rgb(msg)
    except ValueError as exc:
        raise TopicError(f"{where}: cannot decode image: {exc}") from exc


def decode_label(msg: Any, msgtype: str, where: str) -> np.ndarray:
    """mono8 Image -> uint8 (H, W) class ids; any other type or encoding is a TopicError."""
    if msgtype != IMAGE_TYPE:
        raise TopicError(f"{where}: label messages must be {IMAGE_TYPE} (mono8 class ids), "
                         f"got {msgtype}")
    if msg.encoding not in LABEL_ENCODINGS:
        raise TopicError(f"{where}: label encoding is {msg.encoding!r}, expected mono8 "
                         f"(one class id per pixel)")
    try:
        return conversions.image_to_numpy(msg)
    except ValueError as exc:
        raise TopicError(f"{where}: cannot decode label: {exc}") from exc


def check_label_fits(label: StampedImage, image_shape: tuple[int, ...], image_topic: str) -> None:
    """A label must have the size of the image it is paired with; TopicError names both topics."""
    if label.array.shape != tuple(image_shape[:2]):
        h, w = label.array.shape[:2]
        stamp = format_stamp(label.stamp_ns)
        raise TopicError(f"label topic {label.topic}: label at stamp {stamp}"
                         f" is {w}x{h} (width x height) but image topic {image_topic} is "
                         f"{image_shape[1]}x{image_shape[0]}; labels must match the image size")


# -- matching by stamp ---------------------------------------------------------------------------
class StampMatcher(Generic[T, U]):
    """Pairs items of two streams (predictions and labels) that carry the same header stamp,
    whatever order they arrive in. Unpaired items wait in a bounded buffer (oldest evicted)."""

    def __init__(self, max_pending: int = 512) -> None:
        self.max_pending = max_pending
        self._left: OrderedDict[int, T] = OrderedDict()
        self._right: OrderedDict[int, U] = OrderedDict()
        self.matched = 0
        self.evicted = 0

    def add_left(self, stamp_ns: int, item: T) -> tuple[T, U] | None:
        """Offer a left item (e.g. a predicted mask); returns the pair when its match is known."""
        if stamp_ns in self._right:
            self.matched += 1
            return item, self._right.pop(stamp_ns)
        self._push(self._left, stamp_ns, item)
        return None

    def add_right(self, stamp_ns: int, item: U) -> tuple[T, U] | None:
        """Offer a right item (e.g. a label); returns the pair when its match is known."""
        if stamp_ns in self._left:
            self.matched += 1
            return self._left.pop(stamp_ns), item
        self._push(self._right, stamp_ns, item)
        return None

    def _push(self, buffer: OrderedDict[int, Any], stamp_ns: int, item: Any) -> None:
        buffer[stamp_ns] = item
        if len(buffer) > self.max_pending:
            buffer.popitem(last=False)
            self.evicted += 1

    @property
    def unmatched_left(self) -> list[int]:
        """Stamps of left items still without a partner."""
        return list(self._left)

    @property
    def unmatched_right(self) -> list[int]:
        """Stamps of right items still without a partner."""
        return list(self._right)


def match_by_stamp(images: Iterable[StampedImage], labels: Iterable[StampedImage]
                   ) -> list[tuple[StampedImage, StampedImage | None]]:
    """Each image with the label of exactly the same header stamp (or None), in image order."""
    by_stamp = {label.stamp_ns: label for label in labels}
    return [(image, by_stamp.get(image.stamp_ns)) for image in images]


def merge_by_time(*streams: Iterable[StampedImage]) -> Iterator[StampedImage]:
    """Merge decoded streams in log-time order."""
    return heapq.merge(*streams, key=lambda m: m.log_time_ns)


# -- writing -------------------------------------------------------------------------------------
def _header(stamp_ns: int, frame_id: str) -> Any:
    types = TYPESTORE.types
    stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                  nanosec=stamp_ns % 1_000_000_000)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def serialize_image(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> bytes:
    """numpy (H, W) or (H, W, C) uint8 -> CDR bytes of a sensor_msgs/Image with that header."""
    fields = conversions.numpy_to_image_fields(array, encoding)
    msg = TYPESTORE.types[IMAGE_TYPE](
        header=_header(stamp_ns, frame_id), height=fields["height"], width=fields["width"],
        encoding=fields["encoding"], is_bigendian=fields["is_bigendian"], step=fields["step"],
        data=np.frombuffer(fields["data"], np.uint8))
    return bytes(TYPESTORE.serialize_cdr(msg, IMAGE_TYPE))


def serialize_compressed(data: bytes, fmt: str, stamp_ns: int, frame_id: str) -> bytes:
    """Encoded image bytes -> CDR bytes of a sensor_msgs/CompressedImage with that header."""
    msg = TYPESTORE.types[COMPRESSED_TYPE](header=_header(stamp_ns, frame_id), format=fmt,
                                           data=np.frombuffer(data, np.uint8))
    return bytes(TYPESTORE.serialize_cdr(msg, COMPRESSED_TYPE))


class AtomicBagWriter:
    """A rosbag2 writer that only makes the bag visible at ``path`` once it is complete.

    The bag is written to a hidden temporary directory beside ``path`` and renamed into place on
    a clean exit from the ``with`` block; on an exception the temporary directory is removed and
    nothing (not even a partial bag) appears at ``path``. ``overwrite`` replaces an existing bag
    only at that final rename.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap", *,
                 overwrite: bool = False) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        self.storage = storage
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise BagError(f"output bag {self.path} already exists; remove it or choose another "
                           f"path")
        self._tmpdir: Path | None = None
        self._writer: Writer | None = None
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> AtomicBagWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-",
                                             dir=self.path.parent))
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._tmpdir / self.path.name, version=8, storage_plugin=plugin)
        self._writer.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._writer is not None and self._tmpdir is not None
        try:
            if exc_type is None:
                self._writer.close()
                self._commit()
            else:
                self._writer.abort()
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _commit(self) -> None:
        assert self._tmpdir is not None
        built = self._tmpdir / self.path.name
        if self.path.exists():
            if not self.overwrite:
                raise BagError(f"output bag {self.path} appeared while writing; not replacing it")
            os.replace(self.path, self._tmpdir / "replaced")
        os.replace(built, self.path)
        LOG.info("wrote bag %s (%s)", self.path,
                 ", ".join(f"{t} x{n}" for t, n in self.counts.items()))

    def add_topic(self, topic: str, msgtype: str = IMAGE_TYPE) -> None:
        """Declare a topic before writing to it."""
        assert self._writer is not None, "use AtomicBagWriter in a with block"
        self._connections[topic] = self._writer.add_connection(topic, msgtype,
                                                               typestore=TYPESTORE)
        self.counts[topic] = 0

    def write_raw(self, topic: str, log_time_ns: int, data: bytes) -> None:
        """Write an already serialized (CDR) message at the given log time."""
        assert self._writer is not None, "use AtomicBagWriter in a with block"
        if topic not in self._connections:
            raise BagError(f"topic {topic} was not added to output bag {self.path}")
        self._writer.write(self._connections[topic], log_time_ns, data)
        self.counts[topic] += 1

    def write_image(self, topic: str, array: np.ndarray, encoding: str, stamp_ns: int,
                    frame_id: str, log_time_ns: int | None = None) -> None:
        """Write a numpy image as sensor_msgs/Image (log time defaults to the stamp)."""
        data = serialize_image(array, encoding, stamp_ns, frame_id)
        self.write_raw(topic, stamp_ns if log_time_ns is None else log_time_ns, data)

    def write_compressed(self, topic: str, data: bytes, fmt: str, stamp_ns: int, frame_id: str,
                         log_time_ns: int | None = None) -> None:
        """Write encoded bytes as sensor_msgs/CompressedImage (log time defaults to the stamp)."""
        payload = serialize_compressed(data, fmt, stamp_ns, frame_id)
        self.write_raw(topic, stamp_ns if log_time_ns is None else log_time_ns, payload)
