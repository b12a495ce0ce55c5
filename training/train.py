"""Train DFANet for semantic segmentation (paper Sec. 4), on one device or many with torchrun.

    python training/train.py --recipe training/recipes/camvid_b.yaml [--flag value ...]
    python -m torch.distributed.run --nproc_per_node 4 training/train.py --recipe ... \\
        --batch-size 12

Paper recipe: SGD momentum 0.9, weight decay 1e-5, base LR 0.2 at batch 48 with the "poly"
policy (power 0.9) stepped every iteration, pixel-wise cross-entropy, augmentation = mean
subtraction, random horizontal flip, random resize 0.75..1.75, random crop. The learning rate is
scaled linearly with the global batch (``base_lr * global_batch / 48``) unless ``--lr`` is given.

Outputs in ``--output-dir``: ``checkpoint.pth`` (full training state, written atomically every
``--ckpt-every`` iterations, loadable with ``weights_only=True``; ``--resume`` continues a run
exactly), ``best.safetensors`` (best validation mIoU, ``dfanet_core.save_checkpoint`` format with
dataset metadata), ``final.safetensors``, ``train_log.csv``/``.jsonl``, ``summary.json``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import train_utils as tu
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import dfanet_core
from dfanet_core import (
    CheckpointError,
    create_model,
    list_models,
    load_checkpoint,
    save_checkpoint,
)
from dfanet_core.data import (
    DatasetError,
    IterationSampler,
    SegmentationDataset,
    ShardSampler,
    build_dataset,
    dataset_info,
)
from dfanet_core.data.class_weights import METHODS as WEIGHTING_METHODS
from dfanet_core.data.class_weights import class_weights, label_statistics
from dfanet_core.data.transforms import eval_preset, train_preset
from dfanet_core.metrics import ConfusionMatrix
from dfanet_core.models import load_pretrained_backbone

LOG = logging.getLogger("dfanet.train")
CHECKPOINT_FORMAT = "dfanet-train-v1"
# Arguments whose change between a checkpoint and its resume changes the run.
RUN_DEFINING_ARGS = (
    "model", "dataset", "crop_size", "batch_size", "seed", "scale_range", "hflip_prob",
    "base_lr", "base_batch_size", "lr", "iters", "momentum", "weight_decay", "poly_power",
    "base_size", "train_split", "train_subset", "world_size", "warmup_iters", "warmup_factor",
    "class_weights", "init_checkpoint",
)  # fmt: skip


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="DFANet training (paper Sec. 4). LR = base-lr x global batch / "
        "base-batch-size (linear scaling; the scaled value is logged) unless --lr is given.",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--recipe", help="YAML file (or name in training/recipes) filling defaults")
    # data
    p.add_argument("--dataset", default="camvid", choices=["camvid", "cityscapes", "folder"])
    p.add_argument(
        "--data-root", type=Path, default=None,
        help="dataset root (default: ../shared/data/<dataset> relative to the repository root)",
    )  # fmt: skip
    p.add_argument("--num-classes", type=int, help="classes of a 'folder' dataset")
    p.add_argument("--class-names", nargs="+", help="class names of a 'folder' dataset")
    p.add_argument("--train-split", default="train", help="e.g. train, or train+val")
    p.add_argument("--val-split", default="val")
    p.add_argument("--train-subset", type=int, help="use only the first N training images")
    p.add_argument("--val-subset", type=int, help="evaluate only the first N images")
    p.add_argument(
        "--base-size", type=int, nargs=2, metavar=("H", "W"),
        help="resize every train and val image to HxW first (low-resolution runs)",
    )  # fmt: skip
    p.add_argument("--crop-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    p.add_argument("--scale-range", type=float, nargs=2, default=[0.75, 1.75])
    p.add_argument("--hflip-prob", type=float, default=0.5)
    p.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"),
        help="deployment input size stored in the checkpoint (default: validation image size)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument(
        "--cache-images", action="store_true",
        help="decode the train and val sets into memory once (about 0.7 MB per 480x360 pair) "
        "so that data loading keeps up with a GPU",
    )  # fmt: skip
    # model
    p.add_argument("--model", default="dfanet_a", choices=list_models())
    p.add_argument(
        "--pretrained-backbone", type=Path,
        help="checkpoint from training/pretrain_backbone.py, loaded into every backbone",
    )  # fmt: skip
    # optimisation
    p.add_argument("--batch-size", type=int, default=8, help="images per process")
    p.add_argument("--iters", type=int, default=10000, help="total training iterations")
    p.add_argument("--base-lr", type=float, default=0.2, help="LR at --base-batch-size")
    p.add_argument("--base-batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, help="absolute LR (disables linear scaling)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--poly-power", type=float, default=0.9)
    p.add_argument(
        "--class-weights", default="none", choices=list(WEIGHTING_METHODS),
        help="cross-entropy class weights from the training labels (none = the paper's loss; "
        "enet = 1/ln(1.02+p); median-freq = SegNet's), scaled to a pixel-weighted mean of 1",
    )  # fmt: skip
    p.add_argument(
        "--init-checkpoint", type=Path,
        help="start from these weights (a .safetensors of the same variant and classes, e.g. "
        "to fine-tune); optimizer and schedule start fresh (unlike --resume)",
    )  # fmt: skip
    p.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    p.add_argument(
        "--amp-dtype", default="auto", choices=["auto", "bfloat16", "float16"],
        help="autocast type; auto = bfloat16 where the device supports it (float16 overflows "
        "in DFANet once its pre-norm weights grow: NaN loss after ~20 iterations at LR 0.2)",
    )  # fmt: skip
    p.add_argument(
        "--warmup-iters", type=int, default=0,
        help="linear LR warm-up over the first N iterations (0: none, as in the paper)",
    )  # fmt: skip
    p.add_argument(
        "--warmup-factor", type=float, default=0.1, help="LR multiplier at iteration 0 of warm-up"
    )
    p.add_argument("--seed", type=int, default=0)
    # run control
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--output-dir", type=Path, default=tu.REPO_ROOT / "runs" / "train")
    p.add_argument("--eval-every", type=int, default=500, help="iterations between val runs")
    p.add_argument("--ckpt-every", type=int, default=500, help="iterations between checkpoints")
    p.add_argument("--keep-checkpoints", action="store_true", help="also keep one per save")
    p.add_argument("--print-freq", type=int, default=10, help="iterations per log row")
    p.add_argument(
        "--resume", help="training checkpoint to continue from, or 'auto' for "
        "<output-dir>/checkpoint.pth when it exists",
    )  # fmt: skip
    p.add_argument(
        "--max-minutes", type=float,
        help="wall-clock budget of this invocation: stop cleanly, evaluate and save when spent",
    )  # fmt: skip
    p.add_argument(
        "--fit-schedule", action="store_true",
        help="with --max-minutes (single process): shorten --iters and the poly schedule to "
        "what fits the budget, measured at iteration 20 and after each evaluation",
    )  # fmt: skip
    p.add_argument("--export-fp16", action="store_true", help="also write best_fp16.safetensors")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line -> arguments, with ``--recipe`` filling the defaults."""
    return tu.parse_with_recipe(get_args_parser(), argv)


class PolyLR:
    """``(1 - iteration / max_iters) ** power``, times a linear warm-up from ``warmup_factor``
    to 1 over the first ``warmup_iters`` iterations; a callable object so that LambdaLR's state
    dict stores it (and ``--fit-schedule`` can shorten it)."""

    warmup_iters = 0  # class defaults: checkpoints written before warm-up existed lack them
    warmup_factor = 1.0

    def __init__(
        self, max_iters: int, power: float = 0.9, warmup_iters: int = 0,
        warmup_factor: float = 0.1,
    ):  # fmt: skip
        self.max_iters = int(max_iters)
        self.power = float(power)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, iteration: int) -> float:
        factor = max(0.0, 1.0 - iteration / self.max_iters) ** self.power
        if iteration < self.warmup_iters:
            progress = iteration / self.warmup_iters
            factor *= self.warmup_factor + (1.0 - self.warmup_factor) * progress
        return factor


@dataclass
class RunState:
    iteration: int = 0
    best_miou: float = -1.0
    best_iteration: int = -1
    elapsed_s: float = 0.0  # training time of earlier invocations (resume)
    last_checkpoint: Path | None = None


# ---------------------------------------------------------------- setup


def learning_rate(args: argparse.Namespace, world_size: int) -> float:
    """``--lr`` if given, else the linearly scaled paper LR."""
    if args.lr is not None:
        return args.lr
    return args.base_lr * args.batch_size * world_size / args.base_batch_size


def build_datasets(args) -> tuple[SegmentationDataset, SegmentationDataset]:
    extra = {}
    if args.dataset == "folder":
        if not args.num_classes:
            raise DatasetError("--dataset folder needs --num-classes")
        extra = {"num_classes": args.num_classes, "class_names": args.class_names}
    info = dataset_info(args.dataset, **extra)
    root = args.data_root or tu.REPO_ROOT.parent / "shared" / "data" / args.dataset
    train_tf = train_preset(
        args.crop_size, info.mean, info.std, args.scale_range, args.hflip_prob,
        info.ignore_index, args.base_size,
    )  # fmt: skip
    train_set = build_dataset(args.dataset, root, args.train_split, train_tf, **extra)
    val_tf = eval_preset(info.mean, info.std, args.base_size)
    val_set = build_dataset(args.dataset, root, args.val_split, val_tf, **extra)
    if args.train_subset:
        train_set = train_set.subset(args.train_subset)
    if args.val_subset:
        val_set = val_set.subset(args.val_subset)
    if args.cache_images:
        start = time.monotonic()
        train_set.cache_in_memory()
        val_set.cache_in_memory()
        LOG.info(
            "cached %d train + %d val pairs in memory (%.1f s)",
            len(train_set), len(val_set), time.monotonic() - start,
        )  # fmt: skip
    return train_set, val_set


def autocast_dtype(args, device: torch.device) -> torch.dtype | None:
    """The ``--amp`` autocast type on ``device``, or None for float32 training."""
    if not args.amp:
        return None
    name = args.amp_dtype
    if name == "auto":
        cuda = device.type == "cuda"
        name = "float16" if cuda and not torch.cuda.is_bf16_supported() else "bfloat16"
    if name == "float16" and device.type != "cuda":
        LOG.warning("--amp-dtype float16 needs CUDA; training in float32 on %s", device)
        return None
    LOG.info("mixed precision: autocast to %s", name)
    return getattr(torch, name)


def resolve_device(args) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Copy a pretrain_backbone.py checkpoint into every backbone; a misfit is an error."""
    ckpt = tu.load_state_dict_file(path)
    state = ckpt.get("model", ckpt)
    unused = load_pretrained_backbone(model, state)
    if unused:
        raise tu.TrainingError(
            f"pretrained backbone {path} does not fit {_model_name(model)}: "
            f"{len(unused)} of {len(state)} tensors unused (e.g. {unused[:3]}); was it "
            f"pretrained for another backbone ({ckpt.get('backbone', 'unknown')})?"
        )
    LOG.info("loaded pretrained backbone %s into %d backbones", path, len(model.backbones))


def load_initial_weights(model: nn.Module, path: Path, variant: str) -> None:
    """Copy a dfanet_core checkpoint's weights into ``model``; another variant or class count
    is an error naming both."""
    source, meta = load_checkpoint(path)
    if meta.get("variant") != variant:
        raise tu.TrainingError(
            f"--init-checkpoint {path} holds {meta.get('variant')!r}, but --model is {variant!r}"
        )
    try:
        model.load_state_dict(source.float().state_dict())
    except RuntimeError as exc:
        raise tu.TrainingError(f"--init-checkpoint {path} does not fit the model: {exc}") from None
    LOG.info("initialised from %s (val mIoU %s)", path, meta.get("training", {}).get("val_miou"))


def loss_weights(args, dataset, device: torch.device) -> torch.Tensor | None:
    """``--class-weights`` from the training labels (None for the paper's plain loss)."""
    if args.class_weights == "none":
        return None
    pixels, image_pixels = label_statistics(dataset)
    weights = class_weights(pixels, image_pixels, args.class_weights)
    LOG.info(
        "class weights (%s): %s", args.class_weights,
        ", ".join(f"{n} {w:.2f}" for n, w in zip(dataset.info.class_names, weights)),
    )  # fmt: skip
    return torch.from_numpy(weights).to(device)


def _model_name(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "name", type(model).__name__)


def make_train_loader(dataset, args, dist_info: tu.DistInfo, start_iteration: int) -> DataLoader:
    sampler = IterationSampler(
        len(dataset), args.batch_size, args.seed, dist_info.rank, dist_info.world_size,
        start_iteration,
    )  # fmt: skip
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=False,
        # Own generator: creating the iterator must not draw from the global torch RNG.
        generator=torch.Generator().manual_seed(args.seed),
    )


def make_val_loader(dataset, args, dist_info: tu.DistInfo) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=1,
        sampler=ShardSampler(len(dataset), dist_info.rank, dist_info.world_size),
        num_workers=min(args.workers, 2),
        pin_memory=torch.cuda.is_available(),
    )


# ---------------------------------------------------------------- steps


def train_one_iteration(
    model: nn.Module,
    criterion: nn.CrossEntropyLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    targets: torch.Tensor,
    amp: torch.dtype | None = None,
    world_size: int = 1,
) -> float:
    """One SGD step; returns the mean pixel loss over the global batch.

    The loss is the cross-entropy summed over valid pixels divided by the global valid-pixel
    count / world size, so DDP's gradient averaging equals one process with the whole batch.
    A non-finite loss raises ``FloatingPointError`` on every rank before the step.
    """
    valid = (targets != criterion.ignore_index).sum().float()
    global_valid = tu.all_reduce_sum(valid.clone())
    with _autocast(images, amp):
        logits = model(images)
        loss_sum = criterion(logits, targets)
    loss = loss_sum / (global_valid / world_size).clamp(min=1.0)
    mean_loss = (tu.all_reduce_sum(loss_sum.detach().float()) / global_valid.clamp(min=1.0)).item()
    if not math.isfinite(mean_loss):
        raise FloatingPointError(mean_loss)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return mean_loss


def _autocast(images: torch.Tensor, amp: torch.dtype | None) -> torch.autocast:
    """Autocast to ``amp`` on the images' device, or a disabled context for float32."""
    return torch.autocast(images.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None)


def predict(
    model: nn.Module, images: torch.Tensor, amp: torch.dtype | None = None
) -> torch.Tensor:
    """Class-id prediction (N, H, W) of a normalized batch at its own resolution."""
    with _autocast(images, amp):
        return model(images).argmax(dim=1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    ignore_index: int = 255,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` on ``loader``, summed over all processes."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index)
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        matrix.update(targets.to(device, non_blocking=True), predict(model, images, amp))
    model.train(was_training)
    return matrix.all_reduce()


# ---------------------------------------------------------------- checkpoints


def save_training_checkpoint(
    output_dir: Path, state: RunState, model, optimizer, scheduler, scaler, args, world_size: int
) -> Path:
    """Everything a resume needs, as a plain dict loadable with ``weights_only=True``."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": state.iteration,
        "best_miou": state.best_miou,
        "best_iteration": state.best_iteration,
        "elapsed_s": state.elapsed_s,
        "args": tu.jsonable_args(args) | {"world_size": world_size},
        "rng": tu.get_rng_state(),
    }
    path = tu.save_state_dict_file(payload, output_dir / "checkpoint.pth")
    if args.keep_checkpoints:
        tu.save_state_dict_file(payload, output_dir / f"checkpoint_{state.iteration:07d}.pth")
    return path


def resume_path(args) -> Path | None:
    if args.resume == "auto":
        candidate = args.output_dir / "checkpoint.pth"
        return candidate if candidate.is_file() else None
    return Path(args.resume) if args.resume else None


def restore_training_checkpoint(
    path: Path, model, optimizer, scheduler, scaler, args, device, world_size: int
) -> RunState:
    """Load a ``checkpoint.pth`` into the live objects and return the run state."""
    ckpt = tu.load_state_dict_file(path, map_location=device)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise tu.TrainingError(
            f"{path} is not a train.py checkpoint (format {ckpt.get('format')!r})"
        )
    saved = ckpt["args"]
    if saved["model"] != args.model:
        raise tu.TrainingError(f"{path} trained {saved['model']!r}, but --model is {args.model!r}")
    current = tu.jsonable_args(args) | {"world_size": world_size}
    changed = [k for k in RUN_DEFINING_ARGS if saved.get(k) != current.get(k)]
    if changed:
        LOG.warning(
            "resuming with changed settings (the run will not repeat the original): %s",
            ", ".join(f"{k} {saved.get(k)!r}->{current.get(k)!r}" for k in changed),
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scheduler.lr_lambdas[0].max_iters = args.iters
    scaler.load_state_dict(ckpt["scaler"])
    tu.set_rng_state(ckpt["rng"])
    LOG.info("resumed from %s at iteration %d", path, ckpt["iteration"])
    return RunState(
        ckpt["iteration"], ckpt["best_miou"], ckpt["best_iteration"], ckpt["elapsed_s"], path
    )


def model_meta(info, args, input_size, miou: float, iteration: int) -> dict[str, Any]:
    """Checkpoint metadata: dataset facts + variant + input size + provenance."""
    return info.meta() | {
        "variant": args.model,
        "input_size": list(input_size),
        "trained": True,
        "version": dfanet_core.__version__,
        "training": {
            "iteration": iteration,
            "val_miou": None if math.isnan(miou) else miou,
            "val_split": args.val_split,
            "recipe": str(args.recipe) if args.recipe else None,
        },
    }


# ---------------------------------------------------------------- main loop


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``args`` say; returns the run summary (also written to summary.json)."""
    device = resolve_device(args)
    dist_info = tu.init_distributed(device.type)
    try:
        return _train(args, device, dist_info)
    finally:
        tu.cleanup_distributed()


def _train(args, device: torch.device, dist_info: tu.DistInfo) -> dict[str, Any]:
    if dist_info.distributed and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    args.output_dir = Path(args.output_dir)
    tu.setup_logging(dist_info.rank, args.output_dir / "train.log")
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = autocast_dtype(args, device)
    channels_last = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tu.seed_everything(args.seed)

    train_set, val_set = build_datasets(args)
    info = train_set.info
    input_size = args.input_size or args.base_size or list(val_set.load(0)[0].shape[:2])
    model = create_model(args.model, num_classes=info.num_classes)
    if args.pretrained_backbone:
        load_backbone_weights(model, args.pretrained_backbone)
    if args.init_checkpoint:
        load_initial_weights(model, args.init_checkpoint, args.model)
    if dist_info.distributed:
        model = tu.convert_sync_batchnorm(model, device.type)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model_without_ddp = model

    lr = learning_rate(args, dist_info.world_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, PolyLR(args.iters, args.poly_power, args.warmup_iters, args.warmup_factor)
    )
    # Loss scaling only for float16 (bfloat16 has float32's range).
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    state = RunState()
    checkpoint = resume_path(args)
    if checkpoint is not None:
        state = restore_training_checkpoint(
            checkpoint, model, optimizer, scheduler, scaler, args, device, dist_info.world_size
        )
    if dist_info.distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    global_batch = args.batch_size * dist_info.world_size
    how = (
        "set by --lr"
        if args.lr is not None
        else f"= {args.base_lr} x global batch {global_batch} / {args.base_batch_size}, "
        "linear scaling rule"
    )
    LOG.info(
        "%s on %s (%s train / %s val images, %d classes), %d process(es) x batch %d on %s; "
        "learning rate %.5g (%s)",
        args.model, info.name, len(train_set), len(val_set), info.num_classes,
        dist_info.world_size, args.batch_size, device, lr, how,
    )  # fmt: skip
    if dist_info.is_main:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "args.yaml").write_text(yaml.safe_dump(tu.jsonable_args(args)))
    log = (
        TrainLogProxy(tu.TrainLog(args.output_dir, state.iteration if checkpoint else None))
        if dist_info.is_main
        else TrainLogProxy(None)
    )

    loop = TrainingLoop(
        args, device, dist_info, model, model_without_ddp, optimizer, scheduler, scaler,
        state, log, info, input_size, amp, channels_last,
        make_train_loader(train_set, args, dist_info, state.iteration),
        make_val_loader(val_set, args, dist_info),
    )  # fmt: skip
    try:
        summary = loop.run()
    finally:
        log.close()
    return summary


class TrainLogProxy:
    """The rank-0 training log, or nothing on the other ranks."""

    def __init__(self, log: tu.TrainLog | None):
        self.log = log

    def write(self, row: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(row)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class TrainingLoop:
    """The iteration loop and its periodic actions (log, evaluate, checkpoint, time budget).

    A class only to keep the many pieces of run state together; the work is done by the free
    functions above.
    """

    def __init__(
        self, args, device, dist_info, model, model_without_ddp, optimizer, scheduler, scaler,
        state, log, info, input_size, amp, channels_last, train_loader, val_loader,
    ):  # fmt: skip
        self.args, self.device, self.dist = args, device, dist_info
        self.model, self.bare = model, model_without_ddp
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.state, self.log, self.info = state, log, info
        self.input_size, self.amp, self.channels_last = input_size, amp, channels_last
        self.train_loader, self.val_loader = train_loader, val_loader
        self.criterion = nn.CrossEntropyLoss(
            weight=loss_weights(args, train_loader.dataset, device),
            ignore_index=info.ignore_index, reduction="sum",
        )  # fmt: skip
        self.total_iters = args.iters
        self.start_iteration = state.iteration
        self.loop_start = self.clock_start = time.monotonic()
        self.deadline = self.loop_start + args.max_minutes * 60 if args.max_minutes else None
        # (time, iteration) after the first iteration: the speed estimate leaves out the first
        # one, which carries cuDNN autotuning and loader start-up (51 s on an H200 vs 0.13 s).
        self.rate_start: tuple[float, int] | None = None
        self.last_eval_s = 0.0
        self.last_lr = math.nan
        self.last_miou = math.nan

    @property
    def elapsed_s(self) -> float:
        return self.state.elapsed_s + time.monotonic() - self.clock_start

    def run(self) -> dict[str, Any]:
        self.model.train()
        progress = tqdm(
            total=self.total_iters, initial=self.state.iteration, disable=not self.dist.is_main,
            desc="train", dynamic_ncols=True, mininterval=2.0,
        )  # fmt: skip
        self.progress = progress
        try:
            stop_reason = self._loop(progress)
        finally:
            progress.close()
        return self._finish(stop_reason)

    def _loop(self, progress: tqdm) -> str:
        args, state = self.args, self.state
        batches = iter(self.train_loader)
        window: list[float] = []
        stop_reason = "completed"
        evaluated_at = -1
        while state.iteration < self.total_iters:
            images, targets = next(batches)
            window.append(self._step(images, targets))
            state.iteration += 1
            if self.rate_start is None:
                self.rate_start = (time.monotonic(), state.iteration)
            progress.update(1)
            it = state.iteration
            stop = self._out_of_time()
            if stop:
                stop_reason = "time budget"
            last = stop or it >= self.total_iters
            if args.eval_every and it % args.eval_every == 0 or last:
                self._evaluate_and_keep_best()
                evaluated_at = it
            if it % args.print_freq == 0 or evaluated_at == it:
                progress.set_postfix(
                    loss=f"{window[-1]:.4f}", lr=f"{self.last_lr:.3g}", refresh=False
                )
                self._log_row(it, sum(window) / len(window), evaluated_at == it)
                window = []
            if args.fit_schedule and self.deadline:
                self._maybe_fit_schedule(evaluated_at == it)
            if args.ckpt_every and it % args.ckpt_every == 0 or last or it >= self.total_iters:
                self._checkpoint()
            if stop:
                break
        return stop_reason

    def _step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            loss = train_one_iteration(
                self.model, self.criterion, self.optimizer, self.scaler, images, targets,
                self.amp, self.dist.world_size,
            )  # fmt: skip
        except FloatingPointError as exc:
            last = self.state.last_checkpoint
            where = (
                f"last good checkpoint: {last} (resume with --resume {last} and a lower LR)"
                if last
                else "no checkpoint was written yet"
            )
            raise tu.TrainingError(
                f"loss is {exc.args[0]} at iteration {self.state.iteration + 1}; training "
                f"stopped ({where})"
            ) from None
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return loss

    def _out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        flag = torch.tensor([float(time.monotonic() >= self.deadline)], device=self.device)
        return bool(tu.all_reduce_sum(flag).item() > 0)

    def _evaluate_and_keep_best(self) -> None:
        start = time.monotonic()
        matrix = evaluate(
            self.bare, self.val_loader, self.device, self.info.num_classes,
            self.info.ignore_index, self.amp, self.channels_last, self.dist.is_main,
        )  # fmt: skip
        self.last_eval_s = time.monotonic() - start
        scores = matrix.compute()
        self.last_miou = scores["miou"]
        it = self.state.iteration
        LOG.info(
            "iteration %d: val mIoU %.4f, pixel accuracy %.4f (%.1f s)",
            it, scores["miou"], scores["pixel_accuracy"], self.last_eval_s,
        )  # fmt: skip
        if scores["miou"] > self.state.best_miou:
            self.state.best_miou, self.state.best_iteration = scores["miou"], it
            if self.dist.is_main:
                meta = model_meta(self.info, self.args, self.input_size, scores["miou"], it)
                save_checkpoint(self.args.output_dir / "best.safetensors", self.bare, meta)

    def _log_row(self, it: int, loss: float, with_eval: bool) -> None:
        self.log.write(
            {
                "iteration": it,
                "loss": loss,
                "lr": self.last_lr,
                "val_miou": self.last_miou if with_eval else None,
                "elapsed_s": round(self.elapsed_s, 2),
            }
        )

    def _checkpoint(self) -> None:
        self.state.elapsed_s, self.clock_start = self.elapsed_s, time.monotonic()
        if self.dist.is_main:
            save_training_checkpoint(
                self.args.output_dir, self.state, self.bare, self.optimizer, self.scheduler,
                self.scaler, self.args, self.dist.world_size,
            )  # fmt: skip
        self.state.last_checkpoint = self.args.output_dir / "checkpoint.pth"

    def _maybe_fit_schedule(self, just_evaluated: bool) -> None:
        """Shorten the schedule so the poly LR reaches zero within the time budget. Decided on
        rank 0 at 20 and 100 iterations and after each evaluation (single-process runs; under
        torchrun every rank would need the same decision, so it is not used there)."""
        done = self.state.iteration - self.start_iteration
        if self.dist.distributed or not (done in (20, 100) or (just_evaluated and done > 20)):
            return
        if self.state.iteration >= self.total_iters:
            return  # the schedule is complete: never reopen it (the LR already reached zero)
        now = time.monotonic()
        rate_time, rate_iteration = self.rate_start  # set after the first iteration
        per_iter = (now - rate_time) / max(1, self.state.iteration - rate_iteration)
        # Room for the final evaluation and saves: 1.5 evaluations, at least 2 % of the budget.
        reserve = max(self.last_eval_s * 1.5, 0.02 * self.args.max_minutes * 60)
        fitted = self.state.iteration + int((self.deadline - now - reserve) / per_iter)
        fitted = min(self.args.iters, fitted)
        it = self.state.iteration
        if not just_evaluated:
            fitted = max(it + 1, fitted)
        elif fitted <= it + 1:
            # Nothing useful fits any more: end on the evaluation just made, instead of
            # re-fitting to one more iteration (and evaluating again) until the deadline.
            fitted = it
        if fitted == self.total_iters:
            return
        if fitted == it:
            LOG.info("time budget: ending at iteration %d (just evaluated)", fitted)
        else:
            LOG.info(
                "time budget: schedule set to %d iterations (%.2f s/iteration)", fitted, per_iter
            )
        self.total_iters = fitted
        self.scheduler.lr_lambdas[0].max_iters = fitted
        self.progress.total = fitted

    def _finish(self, stop_reason: str) -> dict[str, Any]:
        args, state = self.args, self.state
        summary = {
            "stop_reason": stop_reason,
            "iterations": state.iteration,
            "scheduled_iterations": self.total_iters,
            "best_miou": state.best_miou,
            "best_iteration": state.best_iteration,
            "final_miou": self.last_miou,
            "elapsed_s": round(self.elapsed_s, 1),
            "output_dir": str(args.output_dir),
        }
        if self.dist.is_main:
            meta = model_meta(self.info, args, self.input_size, self.last_miou, state.iteration)
            save_checkpoint(args.output_dir / "final.safetensors", self.bare, meta)
            if not (args.output_dir / "best.safetensors").is_file():
                LOG.warning("validation mIoU was never defined; best.safetensors = final weights")
                save_checkpoint(args.output_dir / "best.safetensors", self.bare, meta)
            if args.export_fp16:
                best, best_meta = load_checkpoint(args.output_dir / "best.safetensors")
                save_checkpoint(
                    args.output_dir / "best_fp16.safetensors", best, best_meta,
                    dtype=torch.float16,
                )  # fmt: skip
            tu.save_json(args.output_dir / "summary.json", summary)
        LOG.info(
            "done (%s) after %d iterations: best val mIoU %.4f at iteration %d -> %s",
            stop_reason, state.iteration, state.best_miou, state.best_iteration,
            args.output_dir / "best.safetensors",
        )  # fmt: skip
        return summary


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry: clear one-line errors instead of tracebacks for expected failures."""
    try:
        main(parse_args(argv))
    except (tu.TrainingError, DatasetError, CheckpointError, FileNotFoundError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
