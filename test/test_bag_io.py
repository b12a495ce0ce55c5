"""dfanet_ros.bag.io on the real shared bags and on damaged copies of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _helpers import BAG_FRAMES, FIRST_STAMP, SECOND
from rosbags.rosbag2 import StoragePlugin, Writer

from dfanet_core.imaging import read_image, read_label
from dfanet_ros.bag.io import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    TYPESTORE,
    AtomicBagWriter,
    BagError,
    StampMatcher,
    TopicError,
    match_by_stamp,
    open_bag,
)

STORAGES = ["sqlite3", "mcap"]


def camvid_frames(camvid_root: Path, n: int = 10) -> list[str]:
    """The bag's frames: Seq05VD_f00000 .. f00270 (every 30th video frame)."""
    names = [f"{stem}.png" for stem in BAG_FRAMES[:n]]
    assert all((camvid_root / "test" / name).is_file() for name in names)
    return names


def copy_bag(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in dst.iterdir():
        path.chmod(0o644)
    return dst


def storage_file(bag_dir: Path) -> Path:
    (path,) = [p for p in bag_dir.iterdir() if p.suffix in (".db3", ".mcap")]
    return path


@pytest.mark.parametrize("storage", STORAGES)
def test_lists_topics_with_types_and_counts(camvid_bag_dirs, storage):
    with open_bag(camvid_bag_dirs[storage]) as bag:
        assert bag.storage == storage
        assert {t.name: (t.msgtype, t.count) for t in bag.topics.values()} == {
            "/camera/image_raw": (IMAGE_TYPE, 10),
            "/camera/image_raw/compressed": (COMPRESSED_TYPE, 10),
            "/camera/labels": (IMAGE_TYPE, 10),
        }
        assert bag.message_count == 30
        assert bag.start_ns == FIRST_STAMP
        assert sorted(bag.image_topics()) == sorted(bag.topics)


@pytest.mark.parametrize("storage", STORAGES)
def test_decoded_frames_equal_the_camvid_pngs(camvid_bag_dirs, camvid_root, storage):
    names = camvid_frames(camvid_root)
    with open_bag(camvid_bag_dirs[storage]) as bag:
        raw = list(bag.images("/camera/image_raw"))
        jpeg = list(bag.images("/camera/image_raw/compressed"))
        labels = list(bag.labels("/camera/labels"))
    assert [m.stamp_ns for m in raw] == [FIRST_STAMP + i * SECOND for i in range(10)]
    assert {m.frame_id for m in raw + jpeg + labels} == {"camera"}
    pairs = match_by_stamp(raw, reversed(labels))  # label order must not matter
    for (image, label), jpg, name in zip(pairs, jpeg, names):
        assert label is not None and label.stamp_ns == image.stamp_ns == jpg.stamp_ns
        png = read_image(camvid_root / "test" / name)
        np.testing.assert_array_equal(image.array, png)
        np.testing.assert_array_equal(label.array, read_label(camvid_root / "testannot" / name))
        assert jpg.array.shape == png.shape
        assert np.abs(jpg.array.astype(int) - png).mean() < 3.0  # README: at most 2.8


def test_storage_files_open_directly(camvid_bag_dirs):
    for bag_dir in camvid_bag_dirs.values():
        with open_bag(storage_file(bag_dir)) as bag:
            assert bag.topics["/camera/labels"].count == 10
            assert bag.first("/camera/labels", as_label=True).array.shape == (360, 480)


def test_stream_merges_images_and_labels_in_time_order(camvid_bag_dirs):
    with open_bag(camvid_bag_dirs["mcap"]) as bag:
        stream = list(bag.stream("/camera/image_raw/compressed", "/camera/labels"))
    assert len(stream) == 20
    assert [m.log_time_ns for _, m in stream] == sorted(m.log_time_ns for _, m in stream)
    assert sum(is_label for is_label, _ in stream) == 10
    assert all(m.array.ndim == (2 if is_label else 3) for is_label, m in stream)


def test_ros1_bag_is_read(tmp_path):
    from rosbags.rosbag1 import Writer as Ros1Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    types = store.types
    image = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    path = tmp_path / "drive.bag"
    with Ros1Writer(path) as writer:
        connection = writer.add_connection("/cam", IMAGE_TYPE, typestore=store)
        header = types["std_msgs/msg/Header"](
            seq=3, stamp=types["builtin_interfaces/msg/Time"](sec=5, nanosec=7), frame_id="cam")
        msg = types[IMAGE_TYPE](header=header, height=4, width=6, encoding="bgr8",
                                is_bigendian=0, step=18, data=image.reshape(-1))
        writer.write(connection, 5 * SECOND + 7, store.serialize_ros1(msg, IMAGE_TYPE))
    with open_bag(path) as bag:
        assert bag.storage == "rosbag1"
        (frame,) = list(bag.images("/cam"))
        # For live replay the message is re-serialized as ROS 2 CDR (no seq), pixels untouched.
        (raw,) = [raw for _, _, _, raw in bag.raw_messages(["/cam"])]
        ros2 = TYPESTORE.deserialize_cdr(bag.to_cdr("/cam", IMAGE_TYPE, raw), IMAGE_TYPE)
    assert (frame.stamp_ns, frame.frame_id) == (5 * SECOND + 7, "cam")
    np.testing.assert_array_equal(frame.array, image[..., ::-1])  # bgr8 -> RGB
    assert (ros2.header.stamp.sec, ros2.header.stamp.nanosec, ros2.header.frame_id) == (5, 7,
                                                                                      "cam")
    assert (ros2.encoding, ros2.step) == ("bgr8", 18)
    np.testing.assert_array_equal(ros2.data, image.reshape(-1))


# -- bad input -----------------------------------------------------------------------------------
def test_missing_bag(tmp_path):
    with pytest.raises(BagError, match="does not exist") as err:
        open_bag(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.98])
def test_truncated_bag(camvid_bag_dirs, tmp_path, storage, keep):
    bag_dir = copy_bag(camvid_bag_dirs[storage], tmp_path / f"cut_{storage}")
    path = storage_file(bag_dir)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BagError, match="truncated, corrupt") as err:
        open_bag(bag_dir)
    assert str(bag_dir) in str(err.value)


def test_corrupt_mcap_chunk_is_reported_not_skipped(camvid_bag_dirs, tmp_path):
    # rosbags skips records it cannot parse: the index count check turns that into an error.
    bag_dir = copy_bag(camvid_bag_dirs["mcap"], tmp_path / "garbled")
    path = storage_file(bag_dir)
    data = bytearray(path.read_bytes())
    data[1000:200_000] = np.random.default_rng(1).integers(0, 256, 199_000, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(BagError, match="truncated or corrupt") as err:
        with open_bag(bag_dir) as bag:
            for _ in bag.stream("/camera/image_raw", "/camera/labels"):
                pass
    assert str(bag_dir) in str(err.value)


def test_directory_without_metadata(camvid_bag_dirs, tmp_path):
    bag_dir = copy_bag(camvid_bag_dirs["sqlite3"], tmp_path / "nometa")
    (bag_dir / "metadata.yaml").unlink()
    with pytest.raises(BagError, match="without metadata.yaml.*camvid_seq_db3.db3"):
        open_bag(bag_dir)


def test_empty_files_are_not_bags(tmp_path):
    for name in ("empty.bag", "empty.mcap", "empty.db3"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(BagError, match="empty file"):
            open_bag(tmp_path / name)
    (tmp_path / "junk.mcap").write_bytes(b"not an mcap file")
    with pytest.raises(BagError, match="junk.mcap cannot be opened"):
        open_bag(tmp_path / "junk.mcap")


@pytest.mark.parametrize("storage", STORAGES)
def test_bag_without_messages(tmp_path, storage):
    path = tmp_path / f"empty_{storage}"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        writer.add_connection("/camera/image_raw", IMAGE_TYPE, typestore=TYPESTORE)
    with pytest.raises(BagError, match="contains no messages.*/camera/image_raw") as err:
        open_bag(path)
    assert str(path) in str(err.value)


def test_missing_topic_lists_available_topics(camvid_bag_dirs):
    with open_bag(camvid_bag_dirs["mcap"]) as bag:
        with pytest.raises(TopicError) as err:
            bag.require_topic("/front/image")
        message = str(err.value)
        assert "/front/image" in message and str(camvid_bag_dirs["mcap"]) in message
        for topic in bag.topics:
            assert topic in message
        with pytest.raises(TopicError, match="label topic '/camera/image_raw/compressed'.*"
                                             "CompressedImage"):
            list(bag.labels("/camera/image_raw/compressed"))


def test_rgb_topic_as_labels_is_an_encoding_error(camvid_bag_dirs):
    with open_bag(camvid_bag_dirs["sqlite3"]) as bag:
        with pytest.raises(TopicError, match="/camera/image_raw.*encoding is 'rgb8'.*mono8"):
            next(bag.labels("/camera/image_raw"))


# -- matching and writing ------------------------------------------------------------------------
def test_stamp_matcher_pairs_in_any_order_and_bounds_memory():
    matcher: StampMatcher[str, str] = StampMatcher(max_pending=2)
    assert matcher.add_right(2, "label2") is None
    assert matcher.add_left(1, "mask1") is None
    assert matcher.add_left(2, "mask2") == ("mask2", "label2")
    assert matcher.add_right(1, "label1") == ("mask1", "label1")
    for stamp in (10, 11, 12):
        matcher.add_left(stamp, f"mask{stamp}")
    assert matcher.unmatched_left == [11, 12] and matcher.evicted == 1
    assert matcher.matched == 2


def test_atomic_writer_round_trip_and_no_partial_bag(tmp_path):
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    target = tmp_path / "out"
    with AtomicBagWriter(target, "sqlite3") as writer:
        writer.add_topic("/img")
        writer.write_image("/img", image, "rgb8", 7 * SECOND, "cam")
        assert not target.exists()  # nothing visible until complete
    with open_bag(target) as bag:
        (frame,) = list(bag.images("/img"))
    assert frame.stamp_ns == 7 * SECOND and frame.frame_id == "cam"
    np.testing.assert_array_equal(frame.array, image)

    with pytest.raises(BagError, match="already exists"):
        AtomicBagWriter(target, "mcap")

    failing = tmp_path / "failing"
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicBagWriter(failing, "mcap") as writer:
            writer.add_topic("/img")
            writer.write_image("/img", image, "rgb8", SECOND, "cam")
            raise RuntimeError("boom")
    assert not failing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir left

    with AtomicBagWriter(target, "mcap", overwrite=True) as writer:
        writer.add_topic("/other")
        writer.write_image("/other", image[..., 0], "mono8", SECOND, "cam")
    with open_bag(target) as bag:
        assert list(bag.topics) == ["/other"] and bag.storage == "mcap"
