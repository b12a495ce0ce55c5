"""Evaluate a checkpoint on a dataset split: mIoU overall and per sequence, per-class IoU, pixel
accuracy, confusion matrix, and whether the weights are safe to run in float16.

    python training/evaluate.py --checkpoint weights/dfanet_a_camvid.safetensors --split test \\
        [--tta flip --tta-scales 0.75 1 1.25] [--train-log runs/x/train_log.jsonl] [--overlays 8]

Batch 1, full images, the checkpoint's own normalization, through the Segmenter's own
preprocessing (:func:`dfanet_core.deploy.preprocess.preprocess_torch`), single pass by default
(paper Sec. 4.1; the node's path). ``--tta`` averages class probabilities over horizontal flips
and ``--tta-scales``; its scores are reported as such, never as the single-pass figure. Writes
``report.json``, ``report.md``, ``per_class_iou.png``, ``confusion_matrix.png``,
``training_curves.png`` (with ``--train-log``) and ``overlays/*.png`` to ``--output-dir``
(default ``runs/eval/<checkpoint>_<split>``). Metrics come from :mod:`dfanet_core.metrics`, the
same module training and bag replay use.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from dfanet_core import CheckpointError, load_checkpoint
from dfanet_core.data import (
    DatasetError,
    SegmentationDataset,
    build_dataset,
    cityscapes_trainid_to_labelid,
)
from dfanet_core.deploy.preprocess import plan_placement, preprocess_torch
from dfanet_core.files import atomic_write_text
from dfanet_core.imaging import colorize, overlay, write_image
from dfanet_core.metrics import GroupedConfusion, to_jsonable
from dfanet_core.models.fusion import fp16_range_report
from dfanet_core.paths import data_root
from dfanet_core.reports import (
    fmt,
    markdown_table,
    plot_confusion,
    plot_per_class_iou,
    pyplot,
    save_figure,
)
from dfanet_core.train.logs import read_train_log, save_json, setup_logging

LOG = logging.getLogger("dfanet.evaluate")
Predictor = Callable[[np.ndarray], np.ndarray]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a DFANet checkpoint on a dataset split.", add_help=add_help
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors checkpoint")
    p.add_argument(
        "--dataset", choices=["camvid", "cityscapes", "folder"],
        help="default: the dataset named in the checkpoint metadata",
    )  # fmt: skip
    p.add_argument(
        "--data-root", type=Path,
        help="dataset root (default: $DFANET_DATA/<dataset>, else ../shared/data/<dataset>)",
    )  # fmt: skip
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"),
        help="resize inputs to HxW for the network and the logits back (default: native size)",
    )  # fmt: skip
    p.add_argument("--output-dir", type=Path, help="default: runs/eval/<checkpoint>_<split>")
    p.add_argument(
        "--tta", choices=["none", "flip"], default="none",
        help="test-time augmentation: average probabilities over horizontal flips (and "
        "--tta-scales); reported separately from the single-pass score",
    )  # fmt: skip
    p.add_argument("--tta-scales", type=float, nargs="+", default=[1.0],
                   help="input scales averaged (multi-scale test; 1.0 alone = single scale)")
    p.add_argument("--fp16-check-images", type=int, default=8,
                   help="images whose activations the float16-range check runs (0: skip it)")
    p.add_argument("--train-log", type=Path, help="train_log.jsonl/.csv to plot curves from")
    p.add_argument("--overlays", type=int, default=0, help="write N prediction overlay PNGs")
    p.add_argument(
        "--cityscapes-labelids", type=Path,
        help="also write predictions as Cityscapes labelId PNGs (official evaluator format)",
    )  # fmt: skip
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p


# ---------------------------------------------------------------- prediction


def make_predictor(
    model: torch.nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    input_size: Sequence[int] | None = None,
    flips: bool = False,
    scales: Sequence[float] = (1.0,),
) -> Predictor:
    """RGB uint8 (H, W, 3) -> class ids uint8 (H, W): the Segmenter's preprocessing on
    ``device`` (bilinear resize to the network size, normalization), the plain torch model,
    logits resized back bilinearly; with ``flips`` / several ``scales`` the class probabilities
    are averaged over them (test-time augmentation)."""
    model = model.to(device).eval()

    @torch.no_grad()
    def predict(image: np.ndarray) -> np.ndarray:
        size = image.shape[:2]
        base = tuple(input_size) if input_size is not None else size
        probabilities = None
        for scale in scales:
            network_hw = (round(base[0] * scale), round(base[1] * scale))
            place = plan_placement(size, network_hw, "stretch")
            x = preprocess_torch([image], [place], network_hw, mean, std, "RGB", device)
            for flip in (False, True) if flips else (False,):
                logits = model(x.flip(-1) if flip else x)
                logits = logits.flip(-1) if flip else logits
                if tuple(logits.shape[-2:]) != tuple(size):
                    logits = torch.nn.functional.interpolate(
                        logits, size=size, mode="bilinear", align_corners=False)  # fmt: skip
                p = logits.float().softmax(dim=1)
                probabilities = p if probabilities is None else probabilities + p
        return probabilities.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()

    return predict


def run_evaluation(
    dataset: SegmentationDataset,
    predict: Predictor,
    num_classes: int,
    ignore_index: int,
    on_prediction: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[GroupedConfusion, float]:
    """Predict every image; returns the confusion matrices per sequence (``.total()`` for the
    overall one) and mean milliseconds per image."""
    matrix = GroupedConfusion(num_classes, ignore_index)
    elapsed = 0.0
    for index in tqdm(range(len(dataset)), desc="evaluate", dynamic_ncols=True, mininterval=2):
        image, label = dataset.load(index)
        start = time.perf_counter()
        mask = predict(image)
        elapsed += time.perf_counter() - start
        matrix.update(dataset.info.sequence_of(dataset.stems[index]), label, mask)
        if on_prediction is not None:
            on_prediction(index, image, label, mask)
    return matrix, 1000 * elapsed / max(len(dataset), 1)


# ---------------------------------------------------------------- reports


def build_report(
    grouped: GroupedConfusion, class_names: Sequence[str], context: dict[str, Any]
) -> dict[str, Any]:
    matrix = grouped.total()
    scores = matrix.compute()
    per_class = {
        name: {"iou": iou, "accuracy": acc, "pixels": int(matrix.counts[i].sum())}
        for i, (name, iou, acc) in enumerate(
            zip(class_names, scores["per_class_iou"], scores["per_class_accuracy"])
        )
    }
    return context | {
        "miou": scores["miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "mean_class_accuracy": scores["mean_class_accuracy"],
        "classes_present": scores["classes_present"],
        "num_pixels": scores["num_pixels"],
        "per_class": per_class,
        "per_sequence": {
            name: {"miou": g["miou"], "pixel_accuracy": g["pixel_accuracy"],
                   "per_class_iou": dict(zip(class_names, g["per_class_iou"]))}
            for name, g in grouped.compute()["groups"].items()
        },  # fmt: skip
        "confusion_matrix": matrix.matrix.tolist(),
        "unassigned_pixels": matrix.counts[:, -1].tolist(),
        "note": "mIoU averages classes present in ground truth or prediction; absent -> null",
    }


def markdown_report(report: dict[str, Any]) -> str:
    def pct(v):
        return fmt(v, 100, 2)

    lines = [
        f"# Evaluation of `{report['checkpoint']}`",
        "",
        f"- dataset: {report['dataset']} / split `{report['split']}` ({report['num_images']} "
        f"images at native resolution, batch 1)",
        f"- model: {report['variant']}, input size {report['input_size'] or 'native'}",
        f"- **mIoU: {pct(report['miou'])}%** (over {report['classes_present']} classes present "
        "in ground truth or prediction)",
        f"- pixel accuracy: {pct(report['pixel_accuracy'])}%, mean class accuracy: "
        f"{pct(report['mean_class_accuracy'])}%",
        f"- test-time augmentation: {report['tta']}",
        f"- inference: {report['ms_per_image']:.1f} ms/image on {report['device']} "
        "(plain PyTorch, includes normalization)",
    ]
    fp16 = report.get("fp16_check")
    if fp16:
        lines.append(
            f"- float16 range after BN folding: max |weight| {fp16['max_abs_weight']:.4g}, "
            f"max |activation| {fp16['max_abs_activation']:.4g} over {fp16['images']} images "
            f"({'within' if fp16['within_fp16'] else 'OUTSIDE'} float16's 65504, no clamping)"
        )
    lines.append("")
    lines += markdown_table(("sequence", "mIoU %", "pixel accuracy %"), [
        (name, pct(row["miou"]), pct(row["pixel_accuracy"]))
        for name, row in report["per_sequence"].items()
    ], "lrr")  # fmt: skip
    lines.append("")
    lines += markdown_table(("class", "IoU %", "accuracy %", "GT pixels"), [
        (name, pct(row["iou"]), pct(row["accuracy"]), row["pixels"])
        for name, row in report["per_class"].items()
    ], "lrrr")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_training_curves(log_path: Path, path: Path) -> Path:
    plt = pyplot()
    rows = read_train_log(log_path)
    if not rows:
        raise ValueError(f"training log {log_path} has no rows")
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    it = [r["iteration"] for r in rows if r.get("loss") is not None]
    ax_loss.plot(it, [r["loss"] for r in rows if r.get("loss") is not None], label="train loss")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("cross-entropy")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(it, [r["lr"] for r in rows if r.get("loss") is not None], color="#999", lw=1)
    ax_lr.set_ylabel("learning rate", color="#777")
    # eval_* columns (train.py's curve evaluations; val_miou in logs of older runs)
    keys = sorted({k for r in rows for k in r if k.startswith("eval_miou") or k == "val_miou"})
    for key in keys:
        evals = [r for r in rows if r.get(key) is not None]
        label = key.removeprefix("eval_").replace("miou_", "") if key != "eval_miou" else "all"
        ax_miou.plot([r["iteration"] for r in evals], [100 * r[key] for r in evals], "o-",
                     label=label, markersize=3)  # fmt: skip
    ax_miou.set_xlabel("iteration")
    ax_miou.set_ylabel("mIoU (%)")
    ax_miou.legend(loc="lower right")
    ax_loss.set_title("Training loss and LR")
    ax_miou.set_title("Evaluation mIoU (curve only, no selection)")
    return save_figure(fig, path, dpi=120)


def overlay_panel(image: np.ndarray, label: np.ndarray, mask: np.ndarray, palette) -> np.ndarray:
    """Input with the prediction blended in, next to the ground truth colours."""
    return np.concatenate([overlay(image, mask, palette), colorize(label, palette)], axis=1)


# ---------------------------------------------------------------- main


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as ``args`` say; returns the report (also written to report.json)."""
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(args.checkpoint, map_location=device)
    dataset = load_dataset(args, meta)
    tta = args.tta != "none" or list(args.tta_scales) != [1.0]
    suffix = "_tta" if tta else ""
    out = args.output_dir or Path("runs") / "eval" / (
        f"{args.checkpoint.stem}_{args.split.replace('+', '_')}{suffix}")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    predict = make_predictor(model, meta["mean"], meta["std"], device, args.input_size,
                             args.tta == "flip", args.tta_scales)  # fmt: skip
    writer = PredictionWriter(args, dataset, meta, out)
    matrix, ms = run_evaluation(
        dataset, predict, int(meta["num_classes"]), int(meta.get("ignore_index", 255)), writer
    )
    context = {
        "checkpoint": str(args.checkpoint),
        "variant": meta["variant"],
        "dataset": dataset.info.name,
        "split": args.split,
        "num_images": len(dataset),
        "input_size": list(args.input_size) if args.input_size else None,
        "device": str(device),
        "ms_per_image": ms,
        "tta": (f"flip={args.tta == 'flip'}, scales={list(args.tta_scales)}" if tta
                else "none (single pass, the node's path)"),
    }
    report = build_report(matrix, meta["class_names"], context)
    if args.fp16_check_images:
        images = [dataset.load(i)[0] for i in range(min(args.fp16_check_images, len(dataset)))]
        report["fp16_check"] = fp16_range_report(model, images, meta["mean"], meta["std"])
    save_json(out / "report.json", report)
    plain = to_jsonable(report)
    atomic_write_text(out / "report.md", markdown_report(plain))
    plot_per_class_iou({name: row["iou"] for name, row in plain["per_class"].items()},
                       out / "per_class_iou.png",
                       f"Per-class IoU, {plain['dataset']} {plain['split']}", plain["miou"])
    plot_confusion(matrix.total().normalized(), meta["class_names"], out / "confusion_matrix.png")
    if args.train_log:
        plot_training_curves(args.train_log, out / "training_curves.png")
    LOG.info(
        "%s %s: mIoU %.2f%% (%s), pixel accuracy %.2f%% over %d images%s -> %s",
        dataset.info.name, args.split, 100 * report["miou"],
        ", ".join(f"{k} {100 * v['miou']:.2f}%" for k, v in report["per_sequence"].items()),
        100 * report["pixel_accuracy"], len(dataset), " with TTA" if tta else "",
        out / "report.md",
    )  # fmt: skip
    return report


def load_dataset(args: argparse.Namespace, meta: dict[str, Any]) -> SegmentationDataset:
    """The split to evaluate, checked against the checkpoint's classes."""
    name = args.dataset or meta.get("dataset")
    if name not in ("camvid", "cityscapes", "folder"):
        raise DatasetError(
            f"checkpoint {args.checkpoint} names dataset {name!r}; pass --dataset "
            "camvid|cityscapes|folder"
        )
    extra = {}
    if name == "folder":
        extra = {"num_classes": int(meta["num_classes"]), "class_names": meta["class_names"]}
    root = args.data_root or data_root(name)
    dataset = build_dataset(name, root, args.split, None, **extra)
    if dataset.info.num_classes != int(meta["num_classes"]):
        raise CheckpointError(
            f"checkpoint {args.checkpoint} predicts {meta['num_classes']} classes but "
            f"{name} has {dataset.info.num_classes}"
        )
    return dataset.subset(args.limit) if args.limit else dataset


class PredictionWriter:
    """Per-image side outputs: overlay panels and Cityscapes labelId PNGs."""

    def __init__(self, args, dataset: SegmentationDataset, meta: dict[str, Any], out: Path):
        self.dataset, self.palette = dataset, meta["palette"]
        self.overlays = args.overlays
        self.overlay_dir = out / "overlays"
        self.labelid_dir = args.cityscapes_labelids
        if self.labelid_dir is not None and int(meta["num_classes"]) != 19:
            raise CheckpointError(
                f"--cityscapes-labelids needs a 19-class Cityscapes model; {args.checkpoint} "
                f"has {meta['num_classes']} classes"
            )
        self.to_labelid = cityscapes_trainid_to_labelid()

    def __call__(self, index: int, image, label, mask) -> None:
        stem = self.dataset.stems[index]
        if index < self.overlays:
            panel = overlay_panel(image, label, mask, self.palette)
            if panel.shape[1] > 2048:
                panel = cv2.resize(panel, (2048, round(panel.shape[0] * 2048 / panel.shape[1])))
            write_image(self.overlay_dir / f"{stem}.png", panel)
        if self.labelid_dir is not None:
            write_image(self.labelid_dir / f"{stem}.png", self.to_labelid[mask])


def cli(argv: list[str] | None = None) -> int:
    try:
        main(get_args_parser().parse_args(argv))
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
