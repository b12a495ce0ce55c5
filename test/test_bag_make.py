"""dfanet_ros.make_bag: image folders and videos become bags that read back what went in."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfanet_core.imaging import read_image, read_label, write_image
from dfanet_ros.bag.io import COMPRESSED_TYPE, IMAGE_TYPE, open_bag
from dfanet_ros.make_bag import main

SECOND = 1_000_000_000


@pytest.fixture
def camvid_folders(camvid_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Three CamVid test frames and their labels, copied into tmp folders (same file names)."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in sorted(p.name for p in (camvid_root / "test").glob("*.png"))[:3]:
        shutil.copy(camvid_root / "test" / name, images / name)
        shutil.copy(camvid_root / "testannot" / name, labels / name)
    return images, labels


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_image_folder_round_trip(camvid_folders, tmp_path, storage):
    images, labels = camvid_folders
    out = tmp_path / f"drive_{storage}"
    code = main(["--images", str(images), "--labels", str(labels), "--out", str(out),
                 "--rate", "4", "--storage", storage, "--raw", "--compressed",
                 "--frame-id", "cam_front", "--start-time", "100", "--no-progress"])
    assert code == 0
    names = sorted(p.name for p in images.iterdir())
    with open_bag(out) as bag:
        assert bag.storage == storage
        assert {t.name: (t.msgtype, t.count) for t in bag.topics.values()} == {
            "/camera/image_raw": (IMAGE_TYPE, 3),
            "/camera/image_raw/compressed": (COMPRESSED_TYPE, 3),
            "/camera/labels": (IMAGE_TYPE, 3),
        }
        raw = list(bag.images("/camera/image_raw"))
        jpeg = list(bag.images("/camera/image_raw/compressed"))
        truth = list(bag.labels("/camera/labels"))
    stamps = [100 * SECOND + i * SECOND // 4 for i in range(3)]
    for frames in (raw, jpeg, truth):
        assert [f.stamp_ns for f in frames] == stamps
        assert [f.log_time_ns for f in frames] == stamps
        assert {f.frame_id for f in frames} == {"cam_front"}
    for name, image, compressed, label in zip(names, raw, jpeg, truth):
        png = read_image(images / name)
        np.testing.assert_array_equal(image.array, png)
        np.testing.assert_array_equal(label.array, read_label(labels / name))
        error = np.abs(compressed.array.astype(int) - png)
        assert error.mean() < 3.0 and compressed.array.shape == png.shape


def test_png_compression_is_lossless_and_compressed_only(camvid_folders, tmp_path):
    images, _ = camvid_folders
    out = tmp_path / "png_bag"
    assert main(["--images", str(images), "--out", str(out), "--compressed",
                 "--compressed-format", "png", "--image-topic", "/cam/image",
                 "--no-progress"]) == 0
    with open_bag(out) as bag:
        assert list(bag.topics) == ["/cam/image/compressed"]
        frames = list(bag.images("/cam/image/compressed"))
    stamps = [f.stamp_ns for f in frames]
    assert np.diff(stamps).tolist() == [SECOND // 10] * 2  # default 10 Hz
    for frame, path in zip(frames, sorted(images.iterdir())):
        np.testing.assert_array_equal(frame.array, read_image(path))


def test_video_round_trip(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    assert writer.isOpened()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 50)]
    for rgb in colours:
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:] = rgb
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "video_bag"
    assert main(["--video", str(video), "--out", str(out), "--storage", "sqlite3",
                 "--start-time", "0", "--no-progress"]) == 0
    with open_bag(out) as bag:
        frames = list(bag.images("/camera/image_raw"))
    assert [f.stamp_ns for f in frames] == [i * SECOND // 5 for i in range(4)]  # video's 5 fps
    for frame, rgb in zip(frames, colours):
        assert frame.array.shape == (48, 64, 3)
        assert np.abs(frame.array.reshape(-1, 3).mean(0) - rgb).max() < 12


# -- bad input -----------------------------------------------------------------------------------
def test_refuses_existing_output_and_leaves_it_alone(camvid_folders, tmp_path, caplog):
    images, _ = camvid_folders
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--images", str(images), "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in caplog.text
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_label_of_another_size_fails_without_a_bag(camvid_folders, tmp_path, caplog):
    images, labels = camvid_folders
    last = sorted(labels.iterdir())[-1]
    write_image(last, read_label(last)[:100, :100])
    out = tmp_path / "bad_labels"
    assert main(["--images", str(images), "--labels", str(labels), "--out", str(out),
                 "--no-progress"]) == 2
    assert f"label {last} is 100x100" in caplog.text
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_labels_and_empty_inputs(camvid_folders, tmp_path, caplog):
    images, labels = camvid_folders
    sorted(labels.iterdir())[0].unlink()
    assert main(["--images", str(images), "--labels", str(labels), "--out",
                 str(tmp_path / "a"), "--no-progress"]) == 2
    assert "has no label for 1 image" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--images", str(empty), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert f"image folder {empty} holds no images" in caplog.text
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    assert main(["--video", str(tmp_path / "broken.avi"), "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 2
    assert "broken.avi" in caplog.text
    assert not any((tmp_path / name).exists() for name in "abc")
    assert main(["--images", str(images), "--out", str(tmp_path / "d"), "--rate", "0",
                 "--no-progress"]) == 2
    assert "rate must be > 0" in caplog.text
