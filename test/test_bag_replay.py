"""Live replay (python -m dfanet_ros.bag_replay, dfanet_ros.bag.replay): the shared bag played
onto real ROS topics (rclpy and Fast DDS from the PyPI wheels) through the segmentation node in
its own process. Every wait ends on a message (a mask, the node's diagnostics, a log line), with
generous deadlines as safety nets; --lockstep makes "no frame dropped" hold on any machine."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _helpers import BAG_BACKEND, BAG_STAMPS, REPO_ROOT

from dfanet_ros.bag.io import open_bag

TIMEOUT_S = 240


@pytest.fixture
def reference(bag_reference) -> dict:
    """PNG-file reference masks and mIoU of the calibrated checkpoint (``bag_reference``)."""
    return bag_reference


def replay(bag: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m dfanet_ros.bag_replay`` in its own process (it sets up its ROS env)."""
    command = [sys.executable, "-m", "dfanet_ros.bag_replay", str(bag), "--no-progress",
               "--domain-id", env["ROS_DOMAIN_ID"], *args]
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def masks_by_stamp(out: Path) -> dict[int, np.ndarray]:
    with open_bag(out / "segmentation_bag") as bag:
        return {m.stamp_ns: m.array for m in bag.labels("/segmentation/mask")}


def test_live_replay_receives_every_frame(camvid_bag_dirs, calibrated_checkpoint, reference,
                                          ros_domain_env, tmp_path):
    out = tmp_path / "live"
    result = replay(camvid_bag_dirs["sqlite3"], ros_domain_env, "--image-topic",
                    "/camera/image_raw", "--label-topic", "/camera/labels", "--checkpoint",
                    str(calibrated_checkpoint), "--backend", BAG_BACKEND, "--lockstep",
                    "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "live" and report["lockstep"] is True
    assert report["frames_sent"] == report["frames"] == report["frames_with_labels"] == 10
    assert report["dropped_frames"] == 0 and report["unexpected_masks"] == 0
    assert report["backend"] == BAG_BACKEND and report["node_exit_code"] == 0
    # Same masks as the Segmenter on the PNG files, hence the same mIoU as offline.
    assert report["miou"] == reference["miou"]
    assert report["per_class_iou"] == reference["per_class_iou"]
    latency = report["latency_ms"]
    assert latency["count"] == 10 and 0 < latency["p50"] <= latency["p99"]
    assert report["output_rate_hz"] > 0 and report["input_rate_hz"] > 0
    masks = masks_by_stamp(out)
    assert sorted(masks) == BAG_STAMPS
    for stamp, expected in zip(BAG_STAMPS, reference["masks"]):
        np.testing.assert_array_equal(masks[stamp], expected)
    with open_bag(out / "segmentation_bag") as bag:  # aligned with the input's log times
        assert [m.log_time_ns for m in bag.labels("/segmentation/mask")] == BAG_STAMPS
    for name in ("report.md", "latency.png", "per_class_iou.png", "overlay_strip.png",
                 "node.log"):
        assert (out / name).stat().st_size > 0, name
    assert "dropped 0" in (out / "report.md").read_text()


def test_replay_faster_than_inference_reports_drops(camvid_bag_dirs, calibrated_checkpoint,
                                                    reference, ros_domain_env, tmp_path):
    # x1000: the ten frames go out within ~10 ms; the node keeps only the newest frame while it
    # is busy, so most frames get no mask, and the report must say so. The replay stops
    # waiting when the node's diagnostics say it holds no frame (--drain-timeout: safety net).
    out = tmp_path / "fast"
    result = replay(camvid_bag_dirs["mcap"], ros_domain_env, "--image-topic",
                    "/camera/image_raw", "--label-topic", "/camera/labels", "--checkpoint",
                    str(calibrated_checkpoint), "--backend", BAG_BACKEND, "--rate", "1000",
                    "--drain-timeout", "120", "--no-video", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["frames_sent"] == 10
    assert 1 <= report["frames"] < 10
    assert report["dropped_frames"] == 10 - report["frames"]
    assert report["drop_ratio"] == pytest.approx(report["dropped_frames"] / 10)
    assert report["latency_ms"]["count"] == report["frames"] == report["frames_with_labels"]
    masks = masks_by_stamp(out)
    assert len(masks) == report["frames"]
    for stamp, mask in masks.items():  # what did come back is right, frame by frame
        np.testing.assert_array_equal(mask, reference["masks"][BAG_STAMPS.index(stamp)])
    assert f"dropped {report['dropped_frames']}" in (out / "report.md").read_text()


def lines_of(process: subprocess.Popen, log_path: Path) -> queue.Queue:
    """The process's output lines, as they come, on a queue (and in ``log_path``)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        with open(log_path, "w") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                lines.put(line)
        lines.put(None)  # the process closed its output

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue, text: str, log_path: Path) -> None:
    while True:
        try:
            line = lines.get(timeout=TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"no '{text}' within {TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
        if line is None:
            pytest.fail(f"the process ended before '{text}':\n{log_path.read_text()[-3000:]}")
        if text in line:
            return


def test_no_play_collects_while_another_process_plays(camvid_bag_dirs, calibrated_checkpoint,
                                                      reference_segmenter, ros_domain_env,
                                                      tmp_path):
    # What a full install does with 'ros2 bag play': here the player is a separate process
    # ('--play-only', publishing the recorded bytes, in lockstep with the node's masks); the
    # collector starts the node.
    bag = camvid_bag_dirs["mcap"]
    out = tmp_path / "noplay"
    topic = "/camera/image_raw/compressed"
    command = [sys.executable, "-m", "dfanet_ros.bag_replay", str(bag), "--no-progress",
               "--domain-id", ros_domain_env["ROS_DOMAIN_ID"], "--image-topic", topic,
               "--label-topic", "/camera/labels", "--checkpoint", str(calibrated_checkpoint),
               "--backend", BAG_BACKEND, "--no-play", "--idle-timeout", "5", "--no-video",
               "--out", str(out)]
    log_path = tmp_path / "collector.log"
    collector = subprocess.Popen(command, env=ros_domain_env, cwd=REPO_ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_line(lines_of(collector, log_path), "collector ready", log_path)
        # two subscriptions: the node's and the collector's observer (frames sent before the
        # observer matched would count as never sent)
        player = replay(bag, ros_domain_env, "--image-topic", topic, "--play-only",
                        "--lockstep", "--wait-subscribers", "2")
        assert player.returncode == 0, player.stderr[-3000:]
        assert "published 10 frames" in player.stdout
        assert collector.wait(timeout=TIMEOUT_S) == 0, log_path.read_text()[-3000:]
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait()
    report = json.loads((out / "report.json").read_text())
    assert report["played_by"] == "external (--no-play)"
    assert report["image_type"] == "sensor_msgs/msg/CompressedImage"
    assert report["frames_sent"] == report["frames"] == report["frames_with_labels"] == 10
    assert report["dropped_frames"] == 0
    # Expected masks: the Segmenter on the bag's JPEGs.
    masks = masks_by_stamp(out)
    assert reference_segmenter.backend_name == BAG_BACKEND
    with open_bag(bag) as source:
        for frame in source.images(topic):
            np.testing.assert_array_equal(masks[frame.stamp_ns],
                                          reference_segmenter.predict(frame.array))


# -- bad input -----------------------------------------------------------------------------------
def test_missing_topic_and_bad_bag_fail_before_the_node_starts(camvid_bag_dirs, ros_domain_env,
                                                               calibrated_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = replay(camvid_bag_dirs["mcap"], ros_domain_env, "--image-topic", "/front/image",
                    "--checkpoint", str(calibrated_checkpoint), "--out", str(out))
    assert result.returncode == 2
    assert "image topic '/front/image' is not in bag" in result.stderr
    assert "/camera/image_raw/compressed [sensor_msgs/msg/CompressedImage] x10" in result.stderr
    assert not (out / "node.log").exists() and not (out / "segmentation_bag").exists()

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    result = replay(empty, ros_domain_env, "--image-topic", "/camera/image_raw",
                    "--checkpoint", str(calibrated_checkpoint), "--out", str(out))
    assert result.returncode == 2 and f"bag {empty} is a directory without metadata.yaml" \
        in result.stderr
    assert not (out / "segmentation_bag").exists()


def test_environment_defaults(tmp_path):
    from dfanet_ros.graph import ros_environment

    env = ros_environment(None, tmp_path, base={"PATH": os.environ["PATH"]})
    assert 100 <= int(env["ROS_DOMAIN_ID"]) <= 199
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("config/fastdds_profile.xml")
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).is_file()
    assert env["ROS_LOG_DIR"] == str(tmp_path)
    kept = ros_environment(None, tmp_path, base={"ROS_DOMAIN_ID": "7", "HOME": "/root"},
                           own_graph=True)
    assert kept["ROS_DOMAIN_ID"] == "7" and "ROS_LOG_DIR" not in kept
    assert ros_environment(42, tmp_path, base={"ROS_DOMAIN_ID": "7"})["ROS_DOMAIN_ID"] == "42"
    external = ros_environment(None, tmp_path, base={}, own_graph=False)
    assert "ROS_DOMAIN_ID" not in external  # 'ros2 bag play' elsewhere uses the default domain
    with pytest.raises(ValueError, match="0..232"):
        ros_environment(300, tmp_path, base={})
    # the caller's discovery range is kept unless one is asked for
    caller = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT", "HOME": "/root"}
    assert ros_environment(5, base=caller)["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SYSTEM_DEFAULT"
    local = ros_environment(5, base=caller, discovery_range="LOCALHOST")
    assert local["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    with pytest.raises(ValueError, match="unknown discovery range 'LAN'"):
        ros_environment(5, base={}, discovery_range="LAN")


def test_play_only_refuses_to_wait_for_no_subscriber(camvid_bag_dirs, tmp_path, caplog):
    from dfanet_ros.bag.cli import replay_main

    code = replay_main([str(camvid_bag_dirs["mcap"]), "--image-topic",
                        "/camera/image_raw/compressed", "--play-only", "--wait-subscribers", "0",
                        "--no-progress"])
    assert code == 2
    assert "--wait-subscribers must be >= 1, got 0" in caplog.text
