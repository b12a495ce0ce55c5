"""Training logs: rank-filtered ``logging`` through tqdm, the CSV / JSON-lines training log and
atomic JSON summaries."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..imaging import atomic_write_bytes
from ..metrics import to_jsonable


class _RankFilter(logging.Filter):
    """Rank 0 logs everything; other ranks only warnings and errors."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


class _TqdmHandler(logging.StreamHandler):
    """Write log lines through tqdm so they do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 (logging must never raise)
            self.handleError(record)


def setup_logging(rank: int = 0, log_file: Path | None = None) -> None:
    """Configure the ``dfanet`` loggers once per process, rank-filtered."""
    logger = logging.getLogger("dfanet")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    prefix = f"[rank {rank}] " if rank else ""
    formatter = logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if log_file is not None and rank == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_RankFilter(rank))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def save_json(path: Path, data: Any) -> Path:
    """Atomic JSON write; NaN becomes null."""
    return atomic_write_bytes(path, (json.dumps(to_jsonable(data), indent=2) + "\n").encode())


class TrainLog:
    """Rows of (iteration, loss, lr, epoch, elapsed_s, eval_miou) in ``train_log.csv`` and
    ``train_log.jsonl`` (plus TensorBoard scalars when ``tensorboard`` is installed). On resume,
    rows past the resumed iteration (written by the interrupted run) are dropped."""

    FIELDS = ("iteration", "loss", "lr", "epoch", "elapsed_s", "eval_miou")

    def __init__(self, output_dir: Path, resume_iteration: int | None = None):
        self.csv_path = output_dir / "train_log.csv"
        self.jsonl_path = output_dir / "train_log.jsonl"
        rows = self._previous_rows(resume_iteration)
        atomic_write_bytes(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        text = io.StringIO()
        writer = csv.DictWriter(text, self.FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.csv_path, text.getvalue().encode())
        self.tensorboard = _tensorboard_writer(output_dir / "tensorboard")

    def _previous_rows(self, resume_iteration: int | None) -> list[dict[str, Any]]:
        if resume_iteration is None or not self.jsonl_path.is_file():
            return []
        rows = [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line]
        return [r for r in rows if r["iteration"] <= resume_iteration]

    def write(self, row: dict[str, Any]) -> None:
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, self.FIELDS, extrasaction="ignore").writerow(row)
        if self.tensorboard is not None:
            for key in ("loss", "lr", "eval_miou"):
                if row.get(key) is not None:
                    self.tensorboard.add_scalar(key, row[key], row["iteration"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))


def read_train_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``train_log.jsonl`` or ``train_log.csv`` file (for plots)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    with path.open(newline="") as f:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
