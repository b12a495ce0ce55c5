"""Train DFANet for semantic segmentation, on one device or many (torchrun).

    python training/train.py --recipe camvid_a_scratch               # GPU: 800 epochs, ~9 min
    python training/train.py --recipe camvid_a_scratch_cpu --max-minutes 120 --resume auto
    python -m torch.distributed.run --nproc_per_node 4 training/train.py --recipe ...

The training set is decoded once into uint8 tensors on the training device
(:class:`~dfanet_core.data.bank.ImageBank`); every batch is drawn and augmented there in a few
batched ops (:mod:`dfanet_core.data.batch_augment`), so the GPU is never starved by host-side
decoding. The schedule is fixed in epochs (:mod:`dfanet_core.train.schedule`); the weights that
ship are the final exponential moving average: nothing is selected on validation or test data
(``--eval-split`` only draws the curve).

Outputs in ``--output-dir``: ``checkpoint.pth`` (the full state: model with auxiliary heads, EMA,
optimizer, iteration, RNG; atomic; ``--resume`` continues it exactly, on another machine too),
``ema.safetensors`` (the EMA weights at the last save), ``final.safetensors`` (+ ``_fp16``) when
the schedule completes, ``train_log.csv/.jsonl``, ``train.log``, ``summary.json``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import dfanet_core
from dfanet_core import CheckpointError, create_model, list_models, load_checkpoint
from dfanet_core import save_checkpoint as save_weights
from dfanet_core.data import DatasetError, build_dataset
from dfanet_core.data.bank import EpochSampler, ImageBank, load_bank
from dfanet_core.data.batch_augment import AugmentConfig, BatchAugment, iteration_generator
from dfanet_core.data.class_weights import METHODS as WEIGHTING_METHODS
from dfanet_core.data.class_weights import class_weights, label_counts
from dfanet_core.metrics import GroupedConfusion
from dfanet_core.models import load_pretrained_backbone
from dfanet_core.models.deep_supervision import DeepSupervision
from dfanet_core.train import budget, distributed, logs
from dfanet_core.train import state as run_state
from dfanet_core.train.ema import ModelEma
from dfanet_core.train.losses import LOSSES, SegmentationLoss, resize_logits
from dfanet_core.train.recipes import RecipeError, jsonable_args, parse_with_recipe
from dfanet_core.train.schedule import Schedule, build_schedule
from dfanet_core.train.state import TrainingError

LOG = logging.getLogger("dfanet.train")
RECIPES = Path(__file__).resolve().parent / "recipes"
STATE_FORMAT = "dfanet-train-v2"
AUX_STRIDE = 4


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="DFANet training. LR = base-lr x global batch / base-batch-size unless "
        "--lr is given. Recipes (training/recipes/*.yaml) fill these defaults.",
        add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    add = p.add_argument
    add("--recipe", help="YAML file, or a name in training/recipes")
    # data
    add("--dataset", default="camvid", choices=["camvid", "cityscapes", "folder"])
    add("--data-root", type=Path, help="dataset root (default: $DFANET_DATA/<dataset>)")
    add("--num-classes", type=int, help="classes of a 'folder' dataset")
    add("--class-names", nargs="+", help="class names of a 'folder' dataset")
    add("--train-split", default="train", help="e.g. train, or train+val")
    add("--train-subset", type=int, help="use only the first N training images")
    add("--base-size", type=int, nargs=2, metavar=("H", "W"), help="resize all images first")
    add("--bank-device", default="auto", help="where the decoded set lives (auto: training "
        "device; cpu: host memory, for sets larger than the GPU)")  # fmt: skip
    # schedule and augmentation
    add("--epochs", type=float, help="one stage of this many epochs (instead of --iters)")
    add("--iters", type=int, default=10000, help="one stage of this many iterations")
    add("--stages", type=yaml.safe_load, help="curriculum: YAML list of {epochs|iterations, "
        "crop_size, batch_size, scale_range}; overrides --epochs/--iters")  # fmt: skip
    add("--crop-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    add("--scale-range", type=float, nargs=2, default=[0.75, 1.75])
    add("--hflip-prob", type=float, default=0.5)
    add("--jitter", type=float, nargs=3, default=[0.0, 0.0, 0.0],
        metavar=("BRIGHTNESS", "CONTRAST", "SATURATION"))  # fmt: skip
    add("--input-size", type=int, nargs=2, metavar=("H", "W"), help="deployment input size "
        "stored in the checkpoint (default: the training images' size)")  # fmt: skip
    # model and loss
    add("--model", default="dfanet_a", choices=list_models())
    add("--pretrained-backbone", type=Path, help="pretrain_backbone.py checkpoint")
    add("--init-checkpoint", type=Path, help="start from these weights (fresh schedule)")
    add("--aux-weight", type=float, default=0.0, help="loss weight of each deep-supervision "
        "head on a backbone tail (0: no heads); the heads never reach the export")  # fmt: skip
    add("--loss", default="ce", choices=LOSSES, help="cross-entropy or OHEM cross-entropy")
    add("--class-weights", default="none", choices=list(WEIGHTING_METHODS))
    # optimisation
    add("--batch-size", type=int, default=8, help="global batch (split over processes)")
    add("--base-lr", type=float, default=0.2, help="LR at --base-batch-size")
    add("--base-batch-size", type=int, default=48)
    add("--lr", type=float, help="absolute LR at --batch-size (disables linear scaling)")
    add("--momentum", type=float, default=0.9)
    add("--weight-decay", type=float, default=1e-5)
    add("--poly-power", type=float, default=0.9)
    add("--warmup-iters", type=int, default=0)
    add("--warmup-factor", type=float, default=0.1)
    add("--ema-decay", type=float, default=0.0, help="EMA of the weights (0: ship the raw ones)")
    add("--amp", action=argparse.BooleanOptionalAction, default=False,
        help="autocast (bfloat16 unless --amp-dtype float16); --no-amp overrides a recipe")
    add("--amp-dtype", default="auto", choices=["auto", "bfloat16", "float16"])
    add("--channels-last", default="auto", choices=["auto", "on", "off"],
        help="auto: on for CUDA only (fp32 channels_last training crashed torch 2.13 on CPU)")
    add("--compile", action="store_true", help="torch.compile the training model")
    add("--seed", type=int, default=0)
    # run control
    add("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    add("--threads", type=int, help="torch CPU threads")
    add("--output-dir", type=Path, default=Path("runs/train"))
    add("--eval-split", help="split evaluated for the curve only (never for selection)")
    add("--eval-every", type=int, default=0, help="iterations between curve evaluations")
    add("--eval-subset", type=int, help="evaluate only the first N images")
    add("--ckpt-every", type=int, default=500, help="iterations between state saves")
    add("--print-freq", type=int, default=10, help="iterations per log row")
    add("--resume", help="state file, or 'auto' for <output-dir>/checkpoint.pth if present")
    add("--max-minutes", type=float, help="budget of this invocation: save the state and stop")
    add("--stretch-iters", type=int, help="stop this invocation after N iterations (saved)")
    add("--fit-schedule", action="store_true",
        help="with --max-minutes: shorten a one-stage schedule to end inside the budget")
    add("--benchmark-steps", type=int, help="time N steps (after 5 warm-up), print it/s, exit")
    add("--export-fp16", action="store_true", help="also write final_fp16.safetensors")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_with_recipe(get_args_parser(), argv, [RECIPES])


# ---------------------------------------------------------------- setup


def make_schedule(args, num_samples: int, mean, std, ignore_index: int) -> Schedule:
    augment = AugmentConfig(
        tuple(args.crop_size), tuple(args.scale_range), args.hflip_prob, *args.jitter,
        ignore_index=ignore_index, mean=tuple(mean), std=tuple(std),
    )  # fmt: skip
    if args.stages:
        specs = args.stages
    elif args.epochs:
        specs = [{"epochs": args.epochs}]
    else:
        specs = [{"iterations": args.iters}]
    return build_schedule(
        specs, num_samples, augment, args.batch_size, args.warmup_iters, args.warmup_factor,
        args.poly_power,
    )  # fmt: skip


def learning_rate(args, batch_size: int) -> float:
    """LR for a global batch: ``--lr`` (given at --batch-size) or the linearly scaled paper LR;
    both scale linearly with the stage's batch."""
    if args.lr is not None:
        return args.lr * batch_size / args.batch_size
    return args.base_lr * batch_size / args.base_batch_size


def data_root(args) -> Path:
    from dfanet_core.paths import data_root as default_root

    return args.data_root or default_root(args.dataset)


def build_sets(args) -> tuple[Any, Any | None]:
    extra = {}
    if args.dataset == "folder":
        if not args.num_classes:
            raise DatasetError("--dataset folder needs --num-classes")
        extra = {"num_classes": args.num_classes, "class_names": args.class_names}
    root = data_root(args)
    train_set = build_dataset(args.dataset, root, args.train_split, **extra)
    if args.train_subset:
        train_set = train_set.subset(args.train_subset)
    eval_set = None
    if args.eval_split:
        eval_set = build_dataset(args.dataset, root, args.eval_split, **extra)
        if args.eval_subset:
            eval_set = eval_set.subset(args.eval_subset)
    return train_set, eval_set


def autocast_dtype(args, device: torch.device) -> torch.dtype | None:
    if not args.amp:
        return None
    name = args.amp_dtype
    if name == "auto":
        cuda = device.type == "cuda"
        name = "float16" if cuda and not torch.cuda.is_bf16_supported() else "bfloat16"
    if name == "float16" and device.type != "cuda":
        raise TrainingError("--amp-dtype float16 needs CUDA; use bfloat16 on the CPU")
    return getattr(torch, name)


def build_model(args, num_classes: int) -> nn.Module:
    net = create_model(args.model, num_classes=num_classes)
    if args.pretrained_backbone:
        unused = load_pretrained_backbone(net, run_state.load_state_dict_file(
            args.pretrained_backbone).get("model", {}))  # fmt: skip
        if unused:
            raise TrainingError(f"pretrained backbone {args.pretrained_backbone} does not fit "
                                f"{args.model}: {len(unused)} tensors unused, e.g. {unused[:3]}")
    if args.init_checkpoint:
        source, meta = load_checkpoint(args.init_checkpoint)
        if meta.get("variant") != args.model:
            raise TrainingError(f"--init-checkpoint {args.init_checkpoint} holds "
                                f"{meta.get('variant')!r}, but --model is {args.model!r}")
        net.load_state_dict(source.float().state_dict())
    return DeepSupervision(net) if args.aux_weight > 0 else net


def bare_net(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "net", model)  # DeepSupervision


# ---------------------------------------------------------------- one step, evaluation


def train_step(model, criterion, optimizer, scaler, images, targets, amp, aux_weight: float,
               world_size: int = 1) -> torch.Tensor:  # fmt: skip
    """One SGD step; returns the main output's mean loss over the global batch as a device
    tensor (no host sync).

    Every term is normalised by its pixel count summed over processes / world size, so DDP's
    gradient averaging equals one process holding the whole batch."""
    with torch.autocast(images.device.type, dtype=amp or torch.bfloat16, enabled=bool(amp)):
        outputs = model(images)
    logits, aux = outputs if isinstance(outputs, tuple) else (outputs, [])
    terms = [criterion(logits, targets)]
    if aux:
        # Deep supervision at 1/4 resolution: labels sampled at the pixel centres of 4x4 cells.
        small = targets[:, AUX_STRIDE // 2 :: AUX_STRIDE, AUX_STRIDE // 2 :: AUX_STRIDE]
        terms += [criterion(resize_logits(a, small.shape[-2:]), small) for a in aux]
    sums = [s for s, _ in terms]
    norms = distributed.all_reduce_sum(torch.stack([n for _, n in terms]).detach())
    norms = (norms / world_size).clamp(min=1.0)
    weights = [1.0] + [aux_weight] * len(aux)
    loss = sum(w * s / n for w, s, n in zip(weights, sums, norms))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if world_size == 1:
        return (sums[0] / norms[0]).detach()
    return distributed.all_reduce_sum(sums[0].detach().clone()) / (norms[0] * world_size)


@torch.no_grad()
def evaluate(model: nn.Module, bank: ImageBank, info, device, amp=None, batch_size: int = 8,
             rank: int = 0, world_size: int = 1) -> GroupedConfusion:  # fmt: skip
    """Confusion matrices per sequence of ``model`` on every image of ``bank`` at full size."""
    from dfanet_core.data.batch_augment import normalize

    was_training = model.training
    model.eval()
    matrices = GroupedConfusion(info.num_classes, info.ignore_index)
    mine = list(range(rank, len(bank), world_size))
    for start in range(0, len(mine), batch_size):
        indices = torch.tensor(mine[start : start + batch_size])
        images, labels = bank.batch(indices, device)
        images = normalize(images.float(), info.mean, info.std)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=bool(amp)):
            predictions = model(images).argmax(dim=1)
        for i, index in enumerate(indices.tolist()):
            matrices.update(info.sequence_of(bank.names[index]), labels[i], predictions[i])
    model.train(was_training)
    return matrices.all_reduce()


# ---------------------------------------------------------------- state files


@dataclass
class Run:
    """What the loop carries besides the modules."""

    schedule: Schedule
    iteration: int = 0
    elapsed_s: float = 0.0
    lr: float = math.nan
    losses: list = field(default_factory=list)
    last_saved: Path | None = None
    last_eval: dict | None = None


def save_state(path: Path, run: Run, model, ema, optimizer, scaler, args) -> Path:
    payload = {
        "format": STATE_FORMAT,
        "recipe": args.recipe_name,
        "variant": args.model,
        "model": getattr(model, "module", model).state_dict(),
        "ema": ema.state_dict() if ema else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": run.iteration,
        "total_iterations": run.schedule.total_iterations,
        "elapsed_s": run.elapsed_s,
        "args": jsonable_args(args),
        "rng": run_state.get_rng_state(),
    }
    return run_state.save_state_dict_file(payload, path)


def restore_state(
    path: Path, model, ema, optimizer, scaler, args, device, schedule: Schedule
) -> tuple[int, float]:
    """Load a state file into the live objects; returns (iteration, elapsed seconds)."""
    ckpt = run_state.load_state_dict_file(path, map_location=device)
    if ckpt.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a train.py state file (format "
                            f"{ckpt.get('format')!r}, expected {STATE_FORMAT!r})")  # fmt: skip
    for what, saved, now in (("recipe", ckpt["recipe"], args.recipe_name),
                             ("variant", ckpt["variant"], args.model)):  # fmt: skip
        if saved != now:
            raise TrainingError(f"{path} belongs to {what} {saved!r}, but this run is {what} "
                                f"{now!r}: refusing to mix them (start a new --output-dir)")
    if ckpt["total_iterations"] != schedule.total_iterations and not args.fit_schedule:
        raise TrainingError(f"{path} follows a schedule of {ckpt['total_iterations']} "
                            f"iterations, this run one of {schedule.total_iterations}: the "
                            "recipe or the data changed; refusing to mix them")
    getattr(model, "module", model).load_state_dict(ckpt["model"])
    if ema is not None:
        if ckpt["ema"] is None:
            raise TrainingError(f"{path} was trained without an EMA; this run has --ema-decay")
        ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    run_state.set_rng_state(ckpt["rng"])
    LOG.info("resumed %s at iteration %d (%.1f h trained so far)", path, ckpt["iteration"],
             ckpt["elapsed_s"] / 3600)  # fmt: skip
    return ckpt["iteration"], ckpt["elapsed_s"]


def weights_meta(info, args, input_size, run: Run, schedule: Schedule) -> dict[str, Any]:
    return info.meta() | {
        "variant": args.model,
        "input_size": list(input_size),
        "trained": True,
        "version": dfanet_core.__version__,
        "training": {
            "recipe": args.recipe_name,
            "iteration": run.iteration,
            "total_iterations": schedule.total_iterations,
            "weights": "ema" if args.ema_decay else "raw",
            "train_split": args.train_split,
            "selection": "none (final weights)",
        },
    }


# ---------------------------------------------------------------- main


def main(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist_info = distributed.init_distributed(device.type)
    try:
        if dist_info.distributed and device.type == "cuda":
            device = torch.device("cuda", dist_info.local_rank)
        return train(args, device, dist_info)
    finally:
        distributed.cleanup_distributed()


def train(args, device: torch.device, dist_info) -> dict[str, Any]:
    out = Path(args.output_dir)
    logs.setup_logging(dist_info.rank, None if args.benchmark_steps else out / "train.log")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run_state.seed_everything(args.seed)
    amp = autocast_dtype(args, device)
    channels_last = args.channels_last == "on" or (
        args.channels_last == "auto" and device.type == "cuda")  # fmt: skip

    train_set, eval_set = build_sets(args)
    info = train_set.info
    bank_device = device if args.bank_device == "auto" else torch.device(args.bank_device)
    size = tuple(args.base_size) if args.base_size else None
    bank = load_bank(train_set, bank_device, size, LOG)
    eval_bank = load_bank(eval_set, bank_device, size, LOG) if eval_set is not None else None
    schedule = make_schedule(args, len(bank), info.mean, info.std, info.ignore_index)
    augmenters = [BatchAugment(stage.augment) for stage in schedule.stages]
    sampler = EpochSampler(len(bank), args.seed, bank_device)
    input_size = args.input_size or args.base_size or list(bank.image_size)

    model = build_model(args, info.num_classes)
    if dist_info.distributed:
        model = distributed.convert_sync_batchnorm(model, device.type)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEma(bare_net(model), args.ema_decay) if args.ema_decay else None
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate(args, args.batch_size),
                                momentum=args.momentum, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    weights = None
    if args.class_weights != "none":
        weights = torch.from_numpy(class_weights(*label_counts(bank.labels, info.num_classes),
                                                 args.class_weights)).to(device)  # fmt: skip
        LOG.info("class weights (%s): %s", args.class_weights, ", ".join(
            f"{n} {w:.2f}" for n, w in zip(info.class_names, weights.tolist())))  # fmt: skip
    criterion = SegmentationLoss(args.loss, weights, info.ignore_index).to(device)

    run = Run(schedule)
    resume = out / "checkpoint.pth" if args.resume == "auto" else args.resume
    if args.resume and (args.resume != "auto" or Path(resume).is_file()):
        run.iteration, run.elapsed_s = restore_state(
            Path(resume), model, ema, optimizer, scaler, args, device, schedule)
        run.last_saved = Path(resume)
    step_model = model
    if dist_info.distributed:
        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)  # fmt: skip
    if args.compile:
        step_model = torch.compile(step_model)

    LOG.info("%s on %s: %d train images (%s), %d stage(s), %d iterations, %s on %s%s",
             args.model, info.name, len(bank), args.train_split, len(schedule.stages),
             schedule.total_iterations, f"autocast {amp}" if amp else "float32", device,
             f", {dist_info.world_size} processes" if dist_info.distributed else "")
    for number, stage in enumerate(schedule.stages, 1):
        LOG.info("stage %d: %d iterations (%s epochs) of batch %d, crop %s, scale %s, LR %.4g",
                 number, stage.iterations, stage.epochs, stage.batch_size,
                 stage.augment.crop_size, stage.augment.scale_range,
                 learning_rate(args, stage.batch_size))  # fmt: skip

    def step(iteration: int) -> torch.Tensor:
        plan = run.schedule  # --fit-schedule may shorten it
        index = plan.stage_index(iteration)
        stage = plan.stages[index]
        run.lr = learning_rate(args, stage.batch_size) * plan.lr_factor(iteration)
        for group in optimizer.param_groups:
            group["lr"] = run.lr
        indices = sampler.batch(plan.position(iteration), stage.batch_size,
                                dist_info.rank, dist_info.world_size)  # fmt: skip
        images_u8, labels_u8 = bank.batch(indices, device)
        share = stage.batch_size // dist_info.world_size
        images, targets = augmenters[index](
            images_u8, labels_u8, iteration_generator(args.seed, iteration, device),
            slice_of=(dist_info.rank * share, stage.batch_size))  # fmt: skip
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = train_step(step_model, criterion, optimizer, scaler, images, targets, amp,
                          args.aux_weight, dist_info.world_size)  # fmt: skip
        if ema is not None:
            ema.update(bare_net(model))
        return loss

    if args.benchmark_steps:
        return benchmark(step, run.iteration, args.benchmark_steps, schedule, device)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.yaml").write_text(yaml.safe_dump(jsonable_args(args)))
    log = logs.TrainLog(out, run.iteration if run.last_saved else None) \
        if dist_info.is_main else None  # fmt: skip
    eval_model = ema.module if ema is not None else bare_net(model)

    def save() -> None:
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            last = run.last_saved or "none written yet"
            raise TrainingError(f"weights are not finite after iteration {run.iteration}; "
                                f"training stopped (last good state: {last}; resume it with "
                                "a lower LR)")
        if dist_info.is_main:
            run.last_saved = save_state(out / "checkpoint.pth", run, model, ema, optimizer,
                                        scaler, args)  # fmt: skip
            save_weights(out / "ema.safetensors", eval_model,
                         weights_meta(info, args, input_size, run, run.schedule))

    def curve_point() -> None:
        matrices = evaluate(eval_model, eval_bank, info, device, amp, rank=dist_info.rank,
                            world_size=dist_info.world_size)  # fmt: skip
        run.last_eval = {"miou": matrices.total().compute()["miou"]} | {
            f"miou_{name}": m.compute()["miou"] for name, m in matrices.groups.items()}
        LOG.info("iteration %d: %s %s (curve only, never used for selection)",
                 run.iteration, args.eval_split, ", ".join(
                     f"{k} {v:.4f}" for k, v in run.last_eval.items()))  # fmt: skip

    stop_reason = loop(args, run, step, save, curve_point if eval_bank else None, log,
                       len(bank))  # fmt: skip
    schedule = run.schedule
    if log is not None:
        log.close()
    summary = {"stop_reason": stop_reason, "iterations": run.iteration,
               "total_iterations": schedule.total_iterations,
               "epochs": schedule.epochs_done(run.iteration, len(bank)),
               "elapsed_s": round(run.elapsed_s, 1), "last_eval": run.last_eval,
               "output_dir": str(out)}  # fmt: skip
    if dist_info.is_main:
        if stop_reason == "completed":
            meta = weights_meta(info, args, input_size, run, schedule)
            save_weights(out / "final.safetensors", eval_model, meta)
            if args.export_fp16:
                save_weights(out / "final_fp16.safetensors", eval_model, meta,
                             dtype=torch.float16)  # fmt: skip
        logs.save_json(out / "summary.json", summary)
    LOG.info("%s after %d of %d iterations (%.1f epochs, %.2f h in all) -> %s", stop_reason,
             run.iteration, schedule.total_iterations, summary["epochs"],
             run.elapsed_s / 3600, out)  # fmt: skip
    return summary


def loop(args, run: Run, step, save, curve_point, log, num_samples: int) -> str:
    """Iterate to the end of the schedule or of the time budget; log, evaluate, save."""
    started = clock = time.monotonic()
    rate = budget.RateMeter()
    budget_s = args.max_minutes * 60 if args.max_minutes else math.inf
    first = run.iteration
    while run.iteration < run.schedule.total_iterations:
        run.losses.append(step(run.iteration))
        run.iteration += 1
        it, now = run.iteration, time.monotonic()
        run.elapsed_s, clock = run.elapsed_s + now - clock, now
        rate.observe(now, it)
        per_iteration = rate.seconds_per_iteration(now, it)
        if args.fit_schedule and per_iteration and it - first in (20, 100, 500, 2000):
            fitted = budget.fitted_total(it, run.schedule.total_iterations, per_iteration,
                                         budget_s - (now - started), 0.03 * budget_s)
            if fitted != run.schedule.total_iterations:
                LOG.info("time budget: schedule set to %d iterations (%.3f s/iteration)",
                         fitted, per_iteration)  # fmt: skip
                run.schedule = run.schedule.with_total(fitted)
        done = it >= run.schedule.total_iterations
        out_of_time = not done and (
            budget.stretch_should_stop(now - started, budget_s, per_iteration,
                                       0.02 * min(budget_s, 3600))
            or bool(args.stretch_iters and it - first >= args.stretch_iters))  # fmt: skip
        if it % args.print_freq == 0 or done or out_of_time:
            loss = check_losses(run)
            if log is not None:
                log.write({"iteration": it, "loss": loss, "lr": run.lr,
                           "epoch": round(run.schedule.epochs_done(it, num_samples), 3),
                           "elapsed_s": round(run.elapsed_s, 1)})  # fmt: skip
            run.losses = []
        if curve_point and (done or args.eval_every and it % args.eval_every == 0):
            curve_point()
            if log is not None:
                log.write({"iteration": it} | {f"eval_{k}": v for k, v in run.last_eval.items()})
        if done or out_of_time or (args.ckpt_every and it % args.ckpt_every == 0):
            check_losses(run)
            save()
        if out_of_time:
            return "stretch ended"
    return "completed"


def check_losses(run: Run) -> float:
    """Mean of the losses since the last log row; a non-finite one stops training, naming its
    iteration and the last good state file."""
    if not run.losses:
        return math.nan
    values = torch.stack(run.losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        iteration = run.iteration - len(values) + 1 + int(bad[0, 0])
        last = run.last_saved or "none written yet"
        raise TrainingError(f"loss is {values[bad[0, 0]].item()} at iteration {iteration}; "
                            f"training stopped (last good state: {last}; resume it with a "
                            "lower LR)")
    return values.mean().item()


def benchmark(step, start: int, steps: int, schedule: Schedule, device) -> dict[str, Any]:
    """Time ``steps`` training steps after 5 warm-up steps; print iterations/s and images/s."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(5):
        step(start + i)
    sync()
    if device.type == "cuda":  # report every host synchronisation inside a step
        torch.cuda.set_sync_debug_mode("warn")
    began = time.perf_counter()
    for i in range(steps):
        step(start + 5 + i)
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("default")
    sync()
    seconds = time.perf_counter() - began
    batch = schedule.stage(start).batch_size
    result = {"iterations_per_s": steps / seconds, "images_per_s": steps * batch / seconds,
              "batch_size": batch, "crop_size": list(schedule.stage(start).augment.crop_size),
              "device": str(device), "steps": steps}  # fmt: skip
    print(f"benchmark: {result['iterations_per_s']:.2f} iterations/s, "
          f"{result['images_per_s']:.1f} images/s (batch {batch}, crop "
          f"{result['crop_size'][0]}x{result['crop_size'][1]}, {device})", flush=True)
    return result


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry: one-line errors instead of tracebacks for expected failures."""
    try:
        main(parse_args(argv))
    except (TrainingError, RecipeError, DatasetError, CheckpointError, FileNotFoundError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
