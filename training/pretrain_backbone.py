"""ImageNet-style classification pretraining of Xception A/B (paper Sec. 4.1.1).

    python training/pretrain_backbone.py --data-root /data/imagenet --model dfanet_a
    python -m torch.distributed.run --nproc_per_node 8 training/pretrain_backbone.py ... \\
        --batch-size 32

Paper protocol: Nesterov momentum 0.9, LR 0.3 for 30 epochs then 0.03 for 30 more, weight decay
4e-5, batch 256, 224x224 inputs. Here: random-resized crop + horizontal flip for training,
resize 256 + centre crop 224 for validation, LR scaled linearly with the global batch
(``lr * global_batch / 256``; the value used is logged).

The data is an ImageFolder layout: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``
(read with this file's own small loader, no torchvision). The classifier always has the
backbone's FC attention width (1000) outputs, so its ``fc`` loads into the FC attention of every
DFANet backbone; datasets with fewer classes use the first outputs.

Writes ``<output-dir>/backbone.pth`` (``{"model": state_dict, "backbone": name, ...}``, what
``train.py --pretrained-backbone`` loads) and ``checkpoint.pth`` (full state for ``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from dfanet_core.data import IMAGENET_MEAN, IMAGENET_STD, DatasetError, ShardSampler
from dfanet_core.data.classification import (
    ClassifierTransform,
    ImageFolder,
    RandomResizedCrop,
    ResizeCenterCrop,
)
from dfanet_core.models import XceptionClassifier, get_config, list_models
from dfanet_core.train import distributed
from dfanet_core.train import state as run_state
from dfanet_core.train.logs import setup_logging
from dfanet_core.train.recipes import jsonable_args
from dfanet_core.train.state import TrainingError

LOG = logging.getLogger("dfanet.pretrain")
CHECKPOINT_FORMAT = "dfanet-backbone-pretrain-v1"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Pretrain Xception A/B on an ImageFolder dataset (paper Sec. 4.1.1). LR is "
        "scaled linearly: lr x global batch / 256 (logged).",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-root", type=Path, required=True, help="root with train/ and val/")
    p.add_argument(
        "--model", default="dfanet_a", choices=list_models(),
        help="the DFANet variant whose backbone to pretrain",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr-step-epoch", type=int, default=30, help="LR x0.1 from this epoch")
    p.add_argument("--lr", type=float, default=0.3, help="LR at batch 256")
    p.add_argument("--batch-size", type=int, default=256, help="images per process")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=4e-5)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, default=Path("runs/pretrain"))
    p.add_argument("--resume", type=Path, help="checkpoint.pth to continue from")
    return p


# ---------------------------------------------------------------- training


def build_classifier(model_name: str) -> XceptionClassifier:
    """The ImageNet classifier around ``model_name``'s backbone, with ``fc_dim`` outputs."""
    spec = get_config(model_name).backbone
    return XceptionClassifier(spec, num_classes=spec.fc_dim)


def train_one_epoch(
    model, criterion, optimizer, loader, device, scaler, amp: bool, epoch: int, show: bool
) -> float:
    """One pass over the training data; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for images, targets in tqdm(loader, desc=f"epoch {epoch}", disable=not show, leave=False):
        images, targets = images.to(device, non_blocking=True), targets.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = criterion(model(images), targets)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} in epoch {epoch}; pretraining stopped")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total, count = total + loss.item() * len(targets), count + len(targets)
    stats = torch.tensor([total, count], dtype=torch.float64, device=device)
    stats = distributed.all_reduce_sum(stats)
    return (stats[0] / stats[1].clamp(min=1)).item()


@torch.no_grad()
def evaluate(model, loader, device, amp: bool) -> float:
    """Top-1 accuracy over all processes."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            predicted = model(images).argmax(dim=1)
        correct += torch.tensor([(predicted == targets).sum().item(), len(targets)], device=device)
    correct = distributed.all_reduce_sum(correct)
    return (correct[0] / correct[1].clamp(min=1)).item()


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Pretrain as ``args`` say; returns a summary with the path of ``backbone.pth``."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist_info = distributed.init_distributed(device.type)
    try:
        return _pretrain(args, device, dist_info)
    finally:
        distributed.cleanup_distributed()


def _pretrain(args, device: torch.device, dist_info: distributed.DistInfo) -> dict[str, Any]:
    if dist_info.distributed and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    setup_logging(dist_info.rank, Path(args.output_dir) / "pretrain.log")
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = bool(args.amp and device.type == "cuda")
    run_state.seed_everything(args.seed)
    train_set = ImageFolder(
        args.data_root / "train",
        ClassifierTransform(RandomResizedCrop(args.image_size), IMAGENET_MEAN, IMAGENET_STD),
    )
    val_set = ImageFolder(
        args.data_root / "val",
        ClassifierTransform(ResizeCenterCrop(args.image_size), IMAGENET_MEAN, IMAGENET_STD),
    )
    model = build_classifier(args.model)
    if len(train_set.classes) > model.fc.out_features:
        raise DatasetError(
            f"{len(train_set.classes)} classes in {args.data_root / 'train'}, but the FC "
            f"attention layer has {model.fc.out_features} outputs"
        )
    model.to(device)
    bare = model
    if dist_info.distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    global_batch = args.batch_size * dist_info.world_size
    lr = args.lr * global_batch / 256
    LOG.info(
        "pretraining %s backbone on %d images / %d classes; LR %.4g = %.3g x global batch %d / "
        "256 (linear scaling), x0.1 from epoch %d",
        args.model, len(train_set), len(train_set.classes), lr, args.lr, global_batch,
        args.lr_step_epoch,
    )  # fmt: skip
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
        nesterov=True,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [args.lr_step_epoch], 0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_epoch = 0
    if args.resume:
        ckpt = run_state.load_state_dict_file(args.resume, map_location=device)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{args.resume} is not a pretrain_backbone.py checkpoint")
        bare.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        run_state.set_rng_state(ckpt["rng"])
        start_epoch = ckpt["epoch"]
    train_sampler = DistributedSampler(
        train_set, dist_info.world_size, dist_info.rank, shuffle=True, seed=args.seed
    )
    train_loader = DataLoader(
        train_set, args.batch_size, sampler=train_sampler, num_workers=args.workers,
        pin_memory=device.type == "cuda", drop_last=len(train_set) >= global_batch,
    )  # fmt: skip
    val_loader = DataLoader(
        val_set, args.batch_size,
        sampler=ShardSampler(len(val_set), dist_info.rank, dist_info.world_size),
        num_workers=args.workers,
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss()
    top1 = math.nan
    start = time.monotonic()
    for epoch in range(start_epoch, args.epochs):
        train_sampler.set_epoch(epoch)
        loss = train_one_epoch(
            model, criterion, optimizer, train_loader, device, scaler, amp, epoch,
            dist_info.is_main,
        )  # fmt: skip
        scheduler.step()
        top1 = evaluate(bare, val_loader, device, amp)
        LOG.info("epoch %d: loss %.4f, val top-1 %.2f%%", epoch + 1, loss, 100 * top1)
        if dist_info.is_main:
            run_state.save_state_dict_file(
                {
                    "format": CHECKPOINT_FORMAT,
                    "model": bare.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "args": jsonable_args(args),
                    "rng": run_state.get_rng_state(),
                },
                Path(args.output_dir) / "checkpoint.pth",
            )
    summary = {
        "backbone": bare.spec.name,
        "variant": args.model,
        "classes": train_set.classes,
        "val_top1": top1,
        "epochs": args.epochs,
        "elapsed_s": round(time.monotonic() - start, 1),
    }
    if dist_info.is_main:
        path = Path(args.output_dir) / "backbone.pth"
        weights = {"format": CHECKPOINT_FORMAT, "model": bare.state_dict()}
        run_state.save_state_dict_file(summary | weights, path)
        summary["path"] = str(path)
        LOG.info("pretrained backbone written to %s (val top-1 %.2f%%)", path, 100 * top1)
    return summary


def cli(argv: list[str] | None = None) -> int:
    try:
        main(get_args_parser().parse_args(argv))
    except (TrainingError, DatasetError, FileNotFoundError) as exc:
        print(f"pretrain_backbone.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
