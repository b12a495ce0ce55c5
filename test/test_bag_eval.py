"""Offline bag evaluation (python -m dfanet_ros.bag_eval, dfanet_ros.bag) on the shared CamVid
bag.

The reference is training/evaluate.py's evaluation of the same checkpoint over the CamVid PNG
files of the bag's frames (Seq05VD_f00000 .. f00270) with the Segmenter and dfanet_core.metrics;
the bag path must give exactly the same masks and mIoU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from _helpers import BAG_BACKEND, BAG_FRAMES, BAG_STAMPS, FIRST_STAMP, SECOND

from dfanet_core.imaging import colorize, overlay, read_image, read_label
from dfanet_ros.bag.io import AtomicBagWriter, open_bag
from dfanet_ros.bag_eval import main


def run_eval(bag: Path, out: Path, checkpoint: Path, *extra: str,
             image_topic: str = "/camera/image_raw") -> int:
    return main([str(bag), "--image-topic", image_topic, "--checkpoint", str(checkpoint),
                 "--backend", BAG_BACKEND, "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_offline_eval_equals_png_evaluation(camvid_bag_dirs, calibrated_checkpoint, camvid_root,
                                            bag_reference, tmp_path, storage):
    out = tmp_path / "eval"
    assert run_eval(camvid_bag_dirs[storage], out, calibrated_checkpoint,
                    "--label-topic", "/camera/labels") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["miou"] == bag_reference["miou"]
    assert report["per_class_iou"] == bag_reference["per_class_iou"]
    assert report["frames"] == report["frames_with_labels"] == 10
    assert report["backend"] == BAG_BACKEND and report["storage"] == storage
    latency = report["latency_ms"]
    assert latency["count"] == 10 and 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert report["throughput_fps"] > 0
    assert f"{100 * bag_reference['miou']:.2f}%" in (out / "report.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert_strip_and_video(out, camvid_root, bag_reference)
    # the plots: decodable PNGs of the figure sizes, one IoU bar per class present
    assert read_image(out / "latency.png").shape == (350, 800, 3)
    assert_iou_bars(out / "per_class_iou.png", report["per_class_iou"])

    # The output bag: one mask and one colour image per input frame, same stamps and frame ids.
    with open_bag(out / "segmentation_bag") as bag:
        assert bag.storage == storage
        masks = list(bag.labels("/segmentation/mask"))
        colours = list(bag.images("/segmentation/color"))
    assert [m.stamp_ns for m in masks] == [c.stamp_ns for c in colours] == BAG_STAMPS
    assert [m.log_time_ns for m in masks] == BAG_STAMPS
    assert {m.frame_id for m in masks + colours} == {"camera"}
    for mask, colour, expected in zip(masks, colours, bag_reference["masks"]):
        np.testing.assert_array_equal(mask.array, expected)
        np.testing.assert_array_equal(colour.array, colorize(expected, report_palette(out)))


def assert_strip_and_video(out: Path, camvid_root: Path, reference: dict) -> None:
    """overlay_strip.png: 8 tiles of 320 px (frames 0, 1, 3, 4, 5, 6, 8, 9 of 10), each the
    overlay of the frame's reference mask over it above the colourized label; overlay.mp4 (this
    machine's OpenCV writes mp4): all 10 overlays."""
    palette = report_palette(out)
    strip = read_image(out / "overlay_strip.png")
    assert strip.shape == (2 * 240, 8 * (320 + 2), 3)
    for tile, index in enumerate([0, 1, 3, 4, 5, 6, 8, 9]):
        rgb = read_image(camvid_root / "test" / f"{BAG_FRAMES[index]}.png")
        label = read_label(camvid_root / "testannot" / f"{BAG_FRAMES[index]}.png")
        top = cv2.resize(overlay(rgb, reference["masks"][index], palette), (320, 240),
                         interpolation=cv2.INTER_AREA)
        bottom = cv2.resize(colorize(label, palette), (320, 240), interpolation=cv2.INTER_NEAREST)
        left = tile * 322
        np.testing.assert_array_equal(strip[:240, left:left + 320], top)
        np.testing.assert_array_equal(strip[240:, left:left + 320], bottom)
    video = cv2.VideoCapture(str(out / "overlay.mp4"))
    frames = 0
    while video.read()[0]:
        frames += 1
    assert frames == 10


def assert_iou_bars(path: Path, per_class_iou: dict) -> None:
    """The per-class IoU plot: one bar of dfanet_core.reports.IOU_BAR_COLOUR for each class
    whose IoU is wide enough to draw (the bar lengths are checked in test_files_reports)."""
    from dfanet_core.reports import IOU_BAR_COLOUR

    image = read_image(path)
    colour = np.array([int(IOU_BAR_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    bars = (np.abs(image.astype(int) - colour).sum(axis=2) < 10).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(bars)
    drawn = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] > 20]
    assert len(drawn) == sum(1 for v in per_class_iou.values() if v and v > 0.005)


def report_palette(out: Path) -> list:
    from dfanet_core.checkpoint import read_checkpoint

    report = json.loads((out / "report.json").read_text())
    return read_checkpoint(report["checkpoint"])[1]["palette"]


def test_compressed_topic_is_evaluated(camvid_bag_dirs, calibrated_checkpoint,
                                       reference_segmenter, tmp_path):
    from rosbags.highlevel import AnyReader

    segmenter = reference_segmenter
    bag_dir = camvid_bag_dirs["mcap"]
    out = tmp_path / "jpeg"
    assert run_eval(bag_dir, out, calibrated_checkpoint, "--label-topic", "/camera/labels",
                    "--no-color", "--no-video", image_topic="/camera/image_raw/compressed") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["image_type"] == "sensor_msgs/msg/CompressedImage"
    assert report["frames_with_labels"] == 10 and report["outputs"]["video"] is None
    with open_bag(out / "segmentation_bag") as bag:
        assert list(bag.topics) == ["/segmentation/mask"]
        masks = [m.array for m in bag.labels("/segmentation/mask")]
    # Expected: the JPEGs decoded here independently (rosbags + OpenCV, BGR -> RGB).
    assert segmenter.backend_name == BAG_BACKEND
    with AnyReader([bag_dir]) as reader:
        connections = [c for c in reader.connections
                       if c.topic == "/camera/image_raw/compressed"]
        for (connection, _, raw), mask in zip(reader.messages(connections), masks, strict=True):
            jpeg = reader.deserialize(raw, connection.msgtype).data
            bgr = cv2.imdecode(np.asarray(jpeg), cv2.IMREAD_COLOR)
            expected = segmenter.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            np.testing.assert_array_equal(mask, expected)


def test_without_labels_reports_latency_only(camvid_bag_dirs, calibrated_checkpoint, tmp_path):
    out = tmp_path / "nolabels"
    assert run_eval(camvid_bag_dirs["sqlite3"], out, calibrated_checkpoint, "--max-frames", "3",
                    "--no-video") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["miou"] is None and report["frames"] == 3
    assert report["latency_ms"]["count"] == 3


# -- bad input: clear errors, no output bag ------------------------------------------------------
def assert_no_outputs(out: Path) -> None:
    assert not (out / "segmentation_bag").exists()
    assert not (out / "report.json").exists()
    if out.exists():
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_missing_image_topic_lists_topics(camvid_bag_dirs, calibrated_checkpoint, tmp_path,
                                          caplog):
    out = tmp_path / "out"
    assert run_eval(camvid_bag_dirs["mcap"], out, calibrated_checkpoint,
                    image_topic="/front/image_raw") == 2
    assert "image topic '/front/image_raw' is not in bag" in caplog.text
    for topic in ("/camera/image_raw", "/camera/image_raw/compressed", "/camera/labels"):
        assert topic in caplog.text
    assert_no_outputs(out)


def test_label_topic_with_wrong_encoding(camvid_bag_dirs, calibrated_checkpoint, tmp_path, caplog):
    out = tmp_path / "out"
    assert run_eval(camvid_bag_dirs["sqlite3"], out, calibrated_checkpoint,
                    "--label-topic", "/camera/image_raw") == 2
    assert "topic /camera/image_raw" in caplog.text and "encoding is 'rgb8'" in caplog.text
    assert_no_outputs(out)


def write_label_bag(path: Path, camvid_root: Path, bad_from: int, frames: int = 4) -> Path:
    """Images + labels of the first frames; labels from ``bad_from`` on are half-size."""
    with AtomicBagWriter(path, "mcap") as writer:
        writer.add_topic("/cam/image")
        writer.add_topic("/cam/labels")
        for i, name in enumerate(BAG_FRAMES[:frames]):
            image = read_image(camvid_root / "test" / f"{name}.png")
            label = read_label(camvid_root / "testannot" / f"{name}.png")
            if i >= bad_from:
                label = np.ascontiguousarray(label[::2, ::2])
            writer.write_image("/cam/image", image, "rgb8", FIRST_STAMP + i * SECOND, "cam")
            writer.write_image("/cam/labels", label, "mono8", FIRST_STAMP + i * SECOND, "cam")
    return path


@pytest.mark.parametrize("bad_from", [0, 2])
def test_label_topic_with_wrong_size(camvid_root, calibrated_checkpoint, tmp_path, caplog,
                                     bad_from):
    # bad_from=0 is caught before the model loads; 2 in the middle of the run, after two masks
    # were written: the output bag must still never appear.
    bag = write_label_bag(tmp_path / "labels_bag", camvid_root, bad_from)
    out = tmp_path / "out"
    assert run_eval(bag, out, calibrated_checkpoint, "--label-topic", "/cam/labels",
                    image_topic="/cam/image") == 2
    assert "label topic /cam/labels" in caplog.text
    assert "is 240x180 (width x height) but image topic /cam/image is 480x360" in caplog.text
    assert_no_outputs(out)


def test_truncated_and_empty_bags(camvid_bag_dirs, calibrated_checkpoint, tmp_path, caplog):
    cut = tmp_path / "cut"
    shutil.copytree(camvid_bag_dirs["mcap"], cut)
    data_file = cut / "camvid_seq_mcap.mcap"
    data_file.chmod(0o644)
    data_file.write_bytes(data_file.read_bytes()[:3_000_000])
    assert run_eval(cut, tmp_path / "out1", calibrated_checkpoint) == 2
    assert f"bag {cut} cannot be opened: it is truncated, corrupt" in caplog.text
    assert_no_outputs(tmp_path / "out1")

    from rosbags.rosbag2 import Writer

    from dfanet_ros.bag.io import TYPESTORE

    empty = tmp_path / "empty"
    with Writer(empty, version=8) as writer:
        writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
    assert run_eval(empty, tmp_path / "out2", calibrated_checkpoint) == 2
    assert f"bag {empty} contains no messages" in caplog.text
    assert_no_outputs(tmp_path / "out2")


def test_corruption_found_mid_run_leaves_no_bag(camvid_bag_dirs, calibrated_checkpoint, tmp_path,
                                                caplog):
    # Garbage inside the MCAP data: the file opens, frames are segmented and written, and only
    # the read-back check finds messages missing; the half-made output must be thrown away.
    bag = tmp_path / "garbled"
    shutil.copytree(camvid_bag_dirs["mcap"], bag)
    data_file = bag / "camvid_seq_mcap.mcap"
    data_file.chmod(0o644)
    data = bytearray(data_file.read_bytes())
    data[3_000_000:3_400_000] = bytes(400_000)
    data_file.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert run_eval(bag, out, calibrated_checkpoint, "--label-topic", "/camera/labels") == 2
    assert f"bag {bag}" in caplog.text and "truncated or corrupt" in caplog.text
    assert_no_outputs(out)
