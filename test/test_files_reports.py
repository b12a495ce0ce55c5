"""dfanet_core.files (atomic writes, image listing, where the weights are) and dfanet_core.reports
(latency summaries, markdown tables, plots checked by their pixels, the machine)."""

from __future__ import annotations

import os
import stat

import cv2
import numpy as np
import pytest

from dfanet_core import files, reports
from dfanet_core.imaging import read_image
from dfanet_core.paths import REPO_ROOT


# -- files ---------------------------------------------------------------------------------------
def test_atomic_writes_leave_whole_files_with_plain_permissions(tmp_path):
    target = files.atomic_write_json(tmp_path / "a" / "report.json", {"b": 1, "a": [2]})
    assert target.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with files.atomic_path(tmp_path / "video.mp4", suffix=".partial.mp4") as tmp:
        assert tmp.name.startswith(".video.mp4.") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"frames")
    assert (tmp_path / "video.mp4").read_bytes() == b"frames"
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(tmp_path / "video.mp4") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert (tmp_path / "video.mp4").read_bytes() == b"frames"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "video.mp4"]


def test_image_listing(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.txt", "d.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "e.png").mkdir()  # a folder is not an image
    assert [p.name for p in files.list_images(tmp_path)] == ["a.jpg", "b.PNG", "d.tiff"]
    assert [p.name for p in files.list_images(tmp_path, limit=1)] == ["a.jpg"]
    assert [p.name for p in files.list_images(tmp_path, (".png",))] == ["b.PNG"]
    with pytest.raises(ValueError, match=r"holds no images \(\.bmp\)"):
        files.list_images(tmp_path, (".bmp",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        files.list_images(tmp_path / "missing")


def test_weights_are_found_in_the_source_tree_and_resolved(tmp_path):
    shipped = REPO_ROOT / "weights" / "dfanet_a_camvid.safetensors"
    assert files.weights_dirs()[-1] == REPO_ROOT / "weights"
    assert files.default_checkpoint() == shipped
    assert files.resolve_checkpoint(None) == shipped
    given = tmp_path / "m.safetensors"
    given.write_bytes(b"x")
    assert files.resolve_checkpoint(str(given)) == given
    with pytest.raises(FileNotFoundError, match="file not found"):
        files.resolve_checkpoint(tmp_path / "nothing.safetensors")


# -- text ----------------------------------------------------------------------------------------
def test_latency_summary_and_formatting():
    values = [float(v) for v in range(1, 101)]
    summary = reports.LatencySummary.of(values)
    assert (summary.count, summary.min, summary.max, summary.mean) == (100, 1.0, 100.0, 50.5)
    assert (summary.p50, summary.p90, summary.p99) == pytest.approx((50.5, 90.1, 99.01))
    assert reports.summarize_ms(values)["p90"] == pytest.approx(90.1)
    assert reports.LatencySummary.of([]) is None
    assert reports.summarize_ms([]) == {"count": 0, "mean": None, "min": None, "p50": None,
                                        "p90": None, "p99": None, "max": None}
    assert reports.fmt(None) == reports.fmt(float("nan")) == "n/a"
    assert reports.fmt(0.12345, 100, 2, "%") == "12.35%"


def test_markdown_table():
    lines = reports.markdown_table(("class", "IoU %"), [("Sky", "91.20"), ("Road", 88)], "lr")
    assert lines == ["| class | IoU % |", "|---|---:|", "| Sky | 91.20 |", "| Road | 88 |"]
    with pytest.raises(ValueError, match="one letter per column"):
        reports.markdown_table(("a", "b"), [], "l")


# -- plots, read back as pixels ------------------------------------------------------------------
def bar_boxes(image: np.ndarray, colour: str) -> list[tuple[int, int, int]]:
    """(top, left, width) of each solid region of ``colour`` ('#rrggbb'), top to bottom."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    mask = (np.abs(image.astype(int) - rgb).sum(axis=2) < 10).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    return sorted((stats[i, cv2.CC_STAT_TOP], stats[i, cv2.CC_STAT_LEFT],
                   stats[i, cv2.CC_STAT_WIDTH]) for i in range(1, count)
                  if stats[i, cv2.CC_STAT_AREA] > 20)


def test_per_class_iou_plot_draws_each_class_to_scale(tmp_path):
    per_class = {"Sky": 0.9, "Building": 0.45, "Pole": None, "Road": 0.1, "Car": 0.6}
    path = reports.plot_per_class_iou(per_class, tmp_path / "iou.png", "Per-class IoU", 0.51)
    image = read_image(path)
    assert image.shape == (round(100 * (0.35 * 5 + 1.2)), 700, 3)
    boxes = bar_boxes(image, reports.IOU_BAR_COLOUR)
    assert len(boxes) == 4  # Pole (null) has no bar
    lefts = {left for _, left, _ in boxes}
    assert len(lefts) == 1  # all bars start at the IoU axis' 0
    widths = [width for _, _, width in boxes]  # top to bottom: Sky, Building, Road, Car
    scale = widths[0] / 0.9
    for width, value in zip(widths, (0.9, 0.45, 0.1, 0.6)):
        assert abs(width - scale * value) <= 3, (widths, value)  # edges are anti-aliased


def test_latency_and_confusion_plots(tmp_path):
    values = [10.0, 12.0, 11.0, 30.0, 10.5]
    image = read_image(reports.plot_latency(values, tmp_path / "latency.png", "latency"))
    assert image.shape == (350, 800, 3)
    blue = np.array([0x1F, 0x77, 0xB4])  # matplotlib's tab:blue, the per-frame line
    assert (np.abs(image.astype(int) - blue).sum(axis=2) < 30).sum() > 200
    assert reports.plot_latency([], tmp_path / "none.png", "latency") is None
    assert not (tmp_path / "none.png").exists()
    matrix = np.array([[1.0, 0.0], [0.25, 0.75]])
    image = read_image(reports.plot_confusion(matrix, ["a", "b"], tmp_path / "cm.png"))
    assert image.shape == (348, 348, 3)


def test_machine_description():
    info = reports.machine_description()
    assert info["logical_cpus"] == os.cpu_count() and info["gpu"] is None  # this machine
    assert reports.machine_summary(info) == (
        f"{info['cpu']}, torch {info['torch']}, {info['torch_threads']} threads")


def test_benchmark_sizes_parse_or_fail_naming_the_text():
    import argparse

    assert reports.parse_size("512x1024") == (512, 1024)
    assert reports.parse_size("360X480") == (360, 480)
    for bad in ("512", "512x", "ax1024", "0x64", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            reports.parse_size(bad)


def test_benchmark_start_names_a_missing_checkpoint_and_heads_the_report(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        reports.start_benchmark("bench/x.py", ["--rounds", "3"], None, missing)
    given = tmp_path / "given.safetensors"
    given.write_bytes(b"weights")
    path, head = reports.start_benchmark("bench/x.py", ["--rounds", "3"], None, given)
    assert path == given and head["checkpoint"] == str(given)
    assert head["command"] == "python bench/x.py --rounds 3"
    assert {"machine", "created"} <= set(head) and head["machine"]["logical_cpus"] >= 1
