"""Reports: latency summaries, markdown tables, plots and the machine a figure was measured on.

One implementation of each, used by training/evaluate.py, the rosbag tools, the node's
statistics and the benchmarks in ``bench/``. Plots are drawn with matplotlib's file-only Agg
backend (imported on first use: it is slow to import) and written atomically as PNG.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_bytes, resolve_checkpoint

#: Bar colour of the per-class IoU plot (tests look for it).
IOU_BAR_COLOUR = "#4878a8"
LATENCY_COLOUR = "tab:blue"


# -- latency ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencySummary:
    """Summary of latency samples, in milliseconds."""

    count: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencySummary | None:
        """The summary of ``values``; None when there are none."""
        data = np.fromiter(values, dtype=np.float64)
        if data.size == 0:
            return None
        p50, p90, p99 = np.percentile(data, [50, 90, 99])
        return cls(int(data.size), float(data.mean()), float(data.min()), float(p50),
                   float(p90), float(p99), float(data.max()))


LATENCY_FIELDS = tuple(LatencySummary.__dataclass_fields__)


def summarize_ms(values: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, min, p50, p90, p99, max of milliseconds as a JSON-ready dict (count 0 and
    None values when empty)."""
    summary = LatencySummary.of(values)
    if summary is None:
        return {name: (0 if name == "count" else None) for name in LATENCY_FIELDS}
    return asdict(summary)


# -- text ---------------------------------------------------------------------------------------
def fmt(value: Any, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """``scale * value`` with ``digits`` decimals and ``unit``; 'n/a' for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{scale * value:.{digits}f}{unit}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]],
                   align: str | None = None) -> list[str]:
    """The lines of a markdown table; ``align`` has one letter per column, 'l' (default) or 'r'
    (right-aligned, for numbers)."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} does not have one letter per column of {header}")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


# -- plots --------------------------------------------------------------------------------------
def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_per_class_iou(per_class: Mapping[str, float | None], path: str | os.PathLike,
                       title: str, miou: float | None = None) -> Path:
    """Horizontal bars, one per class in order from the top, labelled with the IoU in percent
    ('n/a' for a class in neither labels nor predictions); a dashed line at the mIoU."""
    plt = pyplot()
    names = list(per_class)
    values = [100.0 * v if v is not None else 0.0 for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    bars = ax.barh(names, values, color=IOU_BAR_COLOUR)
    for bar, value in zip(bars, per_class.values()):
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2,
                fmt(value, 100, 1), va="center", fontsize=8)
    if miou is not None:
        ax.axvline(100 * miou, color="#c44e52", linestyle="--", label=f"mIoU {100 * miou:.1f}%")
        ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_latency(values: Sequence[float], path: str | os.PathLike, label: str) -> Path | None:
    """Per-frame latency (ms) with its p50 and p99 lines; None (no file) without samples."""
    stats = LatencySummary.of(values)
    if stats is None:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(range(len(values)), values, marker=".", linewidth=1, label=label,
            color=LATENCY_COLOUR)
    ax.axhline(stats.p50, color="tab:green", linestyle="--", label=f"p50 {stats.p50:.1f} ms")
    ax.axhline(stats.p99, color="tab:red", linestyle=":", label=f"p99 {stats.p99:.1f} ms")
    ax.set_xlabel("frame")
    ax.set_ylabel("ms")
    ax.set_title(f"Per-frame {label.lower()}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(normalized: np.ndarray, class_names: Sequence[str],
                   path: str | os.PathLike) -> Path:
    """A row-normalized confusion matrix (ground truth rows, prediction columns) as a heat map,
    with the values written in when there are at most 20 classes."""
    plt = pyplot()
    size = 0.45 * len(class_names) + 2
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (rows normalized)")
    if len(class_names) <= 20:
        for (i, j), v in np.ndenumerate(normalized):
            if v >= 0.01:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


# -- the machine --------------------------------------------------------------------------------
def machine_description() -> dict[str, Any]:
    """CPU model, core count, GPU and library versions: recorded with every measured figure."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    from .deploy.tensorrt.api import load_tensorrt, tensorrt_available

    info["tensorrt"] = load_tensorrt().version_string if tensorrt_available() else None
    return info


def machine_summary(info: Mapping[str, Any] | None = None) -> str:
    """'<cpu>, torch <version>, <n> threads' (of :func:`machine_description`)."""
    info = info or machine_description()
    return f"{info['cpu']}, torch {info['torch']}, {info['torch_threads']} threads"


# -- benchmark scripts (bench/) -----------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024): an argparse ``type`` (ArgumentTypeError on anything else)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x1024, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def start_benchmark(script: str, argv: Sequence[str] | None, threads: int | None = None,
                    checkpoint: str | os.PathLike[str] | None = None,
                    ) -> tuple[Path, dict[str, Any]]:
    """The common start of a ``bench/`` script: timestamped INFO logging, torch's thread count
    (``threads``, when given), the checkpoint (``checkpoint`` or the shipped weights;
    FileNotFoundError naming it otherwise) and the head of the script's JSON report: the
    command that reproduces it, the machine, the checkpoint and when it ran."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if threads:
        torch.set_num_threads(threads)
    path = resolve_checkpoint(checkpoint)
    arguments = list(sys.argv[1:] if argv is None else argv)
    return path, {"command": " ".join(["python", script, *arguments]),
                  "machine": machine_description(), "checkpoint": str(path),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
