"""Helpers shared by the training scripts: distributed setup, logging, recipes, RNG state,
atomic checkpoint files, CPU sync batch norm and the CSV/JSON-lines training log.

Importing this module also puts the repository root on ``sys.path`` so that the scripts run as
``python training/<script>.py`` (or under torchrun) from any directory without installation.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LOG = logging.getLogger("dfanet.training")


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, unusable resume file, bad recipe, ...)."""


# ---------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun process group (``env://``) when launched by torchrun, else a single
    process. NCCL on CUDA, gloo on CPU."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    )
    if info.world_size == 1:
        return info
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (no-op in a single process); returns the tensor."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of a sum over ranks is the sum of the
    ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm with statistics over the whole global batch for gloo/CPU runs, where
    ``torch.nn.SyncBatchNorm`` refuses CPU tensors. Two autograd-aware all-reduces (mean, then
    variance), so forward and backward equal one process holding the global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = (0, 2, 3)
        count = all_reduce(x.new_tensor([x.numel() / x.shape[1]]))
        mean = all_reduce(x.sum(dims)) / count
        centered = x - mean[None, :, None, None]
        var = all_reduce((centered * centered).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(
                    self.num_batches_tracked
                )
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = centered * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """SyncBatchNorm for data-parallel runs: torch's on CUDA, :class:`CPUSyncBatchNorm` on CPU."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CPUSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device_type)
    return model


# ---------------------------------------------------------------- logging


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


# ---------------------------------------------------------------- recipes


def parse_with_recipe(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    """Parse ``argv``; a ``--recipe FILE.yaml`` first fills the parser's defaults (keys are the
    option names with ``_``), so explicit command-line flags still win."""
    known, _ = parser.parse_known_args(argv)
    recipe = getattr(known, "recipe", None)
    if recipe:
        parser.set_defaults(**load_recipe(recipe, parser))
    return parser.parse_args(argv)


def load_recipe(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a recipe and check every key is an option of ``parser``."""
    path = Path(path)
    if not path.is_file():
        recipes = REPO_ROOT / "training" / "recipes"
        candidates = [recipes / path.name, recipes / f"{path.name}.yaml"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise TrainingError(
                f"recipe not found: {path} (nor {recipes}/{path.name}[.yaml]); available: "
                f"{', '.join(sorted(p.stem for p in recipes.glob('*.yaml')))}"
            )
        path = found[0]
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise TrainingError(f"recipe {path} must be a mapping of option: value")
    valid = {a.dest for a in parser._actions} - {"help", "recipe"}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise TrainingError(
            f"recipe {path} has unknown keys {unknown}; valid keys: {', '.join(sorted(valid))}"
        )
    return data


def jsonable_args(args: argparse.Namespace) -> dict[str, Any]:
    """Arguments as plain JSON/YAML/weights_only-safe values (paths become strings)."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


# ---------------------------------------------------------------- RNG and checkpoints


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as lists/tensors, loadable with
    ``torch.load(weights_only=True)``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state_dict_file(obj: dict[str, Any], path: Path) -> Path:
    """``torch.save`` to memory, then an atomic write: a crash never leaves half a file."""
    from dfanet_core.imaging import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_state_dict_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises many types for bad files)
        raise TrainingError(f"cannot read training checkpoint {path}: {exc}") from None


def save_json(path: Path, data: Any) -> Path:
    """Atomic JSON write; NaN becomes null."""
    from dfanet_core.imaging import atomic_write_bytes
    from dfanet_core.metrics import to_jsonable

    return atomic_write_bytes(path, (json.dumps(to_jsonable(data), indent=2) + "\n").encode())


# ---------------------------------------------------------------- training log


class TrainLog:
    """Rows of (iteration, loss, lr, val_miou, elapsed_s) in ``train_log.csv`` and
    ``train_log.jsonl`` (plus TensorBoard scalars when ``tensorboard`` is installed). On resume,
    rows past the resumed iteration (written by the interrupted run) are dropped."""

    FIELDS = ("iteration", "loss", "lr", "val_miou", "elapsed_s")

    def __init__(self, output_dir: Path, resume_iteration: int | None = None):
        self.csv_path = output_dir / "train_log.csv"
        self.jsonl_path = output_dir / "train_log.jsonl"
        from dfanet_core.imaging import atomic_write_bytes

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
            for key in ("loss", "lr", "val_miou"):
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
