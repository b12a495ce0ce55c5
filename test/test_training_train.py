"""training/train.py end to end: overfitting a few CamVid images, bit-exact resume of a campaign
(model, EMA, optimizer, RNG), torchrun DDP equivalence, the GPU script on the CPU, and clear
errors for bad input. Small crops and backbone_b keep it CPU-friendly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dfanet_core import load_checkpoint
from dfanet_core.data import DatasetError
from dfanet_core.train.recipes import RecipeError
from training import train

TRAINING = Path(train.__file__).resolve().parent

# Tiny, deterministic runs: 6 CamVid images downscaled to 120x160, 64x96 crops.
SMALL = [
    "--model", "backbone_b", "--train-subset", "6", "--base-size", "120", "160",
    "--crop-size", "64", "96", "--threads", "1",
]  # fmt: skip
# What the from-scratch recipes add: deep supervision, EMA, class weights, jitter, warm-up.
SCRATCH = ["--aux-weight", "0.4", "--ema-decay", "0.9", "--class-weights", "cgnet",
           "--jitter", "0.2", "0.2", "0.2", "--warmup-iters", "2", "--weight-decay", "5e-4",
           "--scale-range", "0.5", "2.0"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def run_main(camvid_root: Path, out: Path, *extra: str) -> dict:
    args = train.parse_args(["--data-root", str(camvid_root), "--output-dir", str(out), *extra])
    return train.main(args)


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(TRAINING / "train.py"), *args]


def test_overfits_four_images_and_ships_the_ema(camvid_root, tmp_path):
    out = tmp_path / "overfit"
    summary = run_main(
        camvid_root, out, "--model", "backbone_b", "--train-subset", "4", "--base-size", "96",
        "128", "--crop-size", "96", "128", "--scale-range", "1", "1", "--hflip-prob", "0",
        "--batch-size", "4", "--iters", "60", "--lr", "0.05", "--ema-decay", "0.8",
        "--eval-split", "train", "--eval-subset", "4", "--eval-every", "30", "--print-freq",
        "10", "--export-fp16", "--threads", "1",
    )  # fmt: skip
    rows = [r for r in log_rows(out) if "loss" in r]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"], rows
    # Chance level for 11 classes is ~0.09 mIoU; memorised training images score far above.
    assert summary["last_eval"]["miou"] > 0.3, summary
    assert summary["stop_reason"] == "completed" and summary["iterations"] == 60
    model, meta = load_checkpoint(out / "final.safetensors")
    assert meta["variant"] == "backbone_b" and meta["dataset"] == "camvid"
    assert meta["input_size"] == [96, 128] and meta["ignore_index"] == 255
    assert meta["training"]["weights"] == "ema"
    assert meta["training"]["selection"].startswith("none")
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["ema"]["module"][name]), name  # the EMA ships
    with safe_open(str(out / "final_fp16.safetensors"), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    params = {name for name, _ in model.named_parameters()}
    assert {dtypes[k] for k in params} == {torch.float16}
    assert {dtypes[k] for k in dtypes if k.endswith("running_var")} == {torch.float32}
    header = (out / "train_log.csv").read_text().splitlines()[0]
    assert header == "iteration,loss,lr,epoch,elapsed_s,eval_miou"
    assert json.loads((out / "summary.json").read_text())["iterations"] == 60


def test_campaign_stretches_resume_bit_exactly(camvid_root, tmp_path):
    """A campaign cut into stretches (here: 3 + 5 + the rest, with a two-stage curriculum, deep
    supervision and an EMA) ends exactly where one uninterrupted run does."""
    stages = "[{iterations: 6, crop_size: [64, 96]}, {iterations: 4, crop_size: [48, 64]}]"
    common = [*SMALL, *SCRATCH, "--batch-size", "2", "--stages", stages, "--ckpt-every", "100",
              "--print-freq", "1", "--lr", "0.02"]  # fmt: skip
    reference = tmp_path / "reference"
    run_main(camvid_root, reference, *common)
    stretched = tmp_path / "stretched"
    first = run_main(camvid_root, stretched, *common, "--stretch-iters", "3")
    assert first["stop_reason"] == "stretch ended" and first["iterations"] == 3
    assert not (stretched / "final.safetensors").exists()
    run_main(camvid_root, stretched, *common, "--stretch-iters", "5", "--resume", "auto")
    last = run_main(camvid_root, stretched, *common, "--resume", "auto")
    assert last["stop_reason"] == "completed"
    a = torch.load(reference / "checkpoint.pth", weights_only=True)
    b = torch.load(stretched / "checkpoint.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 10
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert any(key.startswith("aux_heads.") for key in a["model"])
    for key, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][key]), key
    assert a["ema"]["updates"] == b["ema"]["updates"] == 10
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]
                           ["momentum_buffer"])  # fmt: skip
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    losses = [[r["loss"] for r in log_rows(out) if "loss" in r] for out in (reference, stretched)]
    assert losses[0] == losses[1] and len(losses[0]) == 10


def test_state_of_another_recipe_or_variant_is_refused(camvid_root, tmp_path):
    out = tmp_path / "run"
    common = [*SMALL, "--batch-size", "2", "--iters", "4", "--stretch-iters", "1"]
    run_main(camvid_root, out, *common)
    with pytest.raises(train.TrainingError, match=r"variant 'backbone_b', but this run is "
                       r"variant 'backbone_a'"):  # fmt: skip
        run_main(camvid_root, out, *common, "--model", "backbone_a", "--resume", "auto")
    with pytest.raises(train.TrainingError, match=r"belongs to recipe None, but this run is "
                       r"recipe 'camvid_b_scratch'"):  # fmt: skip
        run_main(camvid_root, out, "--recipe", "camvid_b_scratch", *common, "--resume", "auto",
                 "--eval-split", "")  # fmt: skip
    with pytest.raises(train.TrainingError, match="schedule of 4 iterations, this run one of 9"):
        run_main(camvid_root, out, *common[:-4], "--batch-size", "2", "--iters", "9",
                 "--resume", "auto")  # fmt: skip


def test_torchrun_two_processes_match_one_process(camvid_root, tmp_path):
    common = [*SMALL[:-2], "--data-root", str(camvid_root), "--iters", "3", "--ckpt-every",
              "1", "--print-freq", "1", "--lr", "0.01", "--batch-size", "4",
              "--stretch-iters", "1"]  # fmt: skip
    single = tmp_path / "single"
    train.main(train.parse_args([*common, "--output-dir", str(single), "--threads", "1"]))
    ddp = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(TRAINING / "train.py"), *common, "--output-dir",
               str(ddp), "--threads", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    # Same global batch, same augmentation draws, synced batch norm, loss normalized by the
    # global valid-pixel count: the first loss and the momentum buffers (the weight-decayed
    # gradients after one step) agree to float32 noise.
    assert log_rows(ddp)[0]["loss"] == pytest.approx(log_rows(single)[0]["loss"], rel=1e-5)
    a = torch.load(single / "checkpoint.pth", weights_only=True)
    b = torch.load(ddp / "checkpoint.pth", weights_only=True)
    num = den = 0.0
    for index, state in a["optimizer"]["state"].items():
        grad_a = state["momentum_buffer"]
        grad_b = b["optimizer"]["state"][index]["momentum_buffer"]
        num += float(((grad_a - grad_b) ** 2).sum())
        den += float((grad_a**2).sum())
    assert math.sqrt(num / den) < 0.03
    for key, tensor in a["model"].items():
        if "running" in key:
            torch.testing.assert_close(b["model"][key], tensor, atol=1e-4, rtol=1e-3)


def test_nan_loss_stops_naming_iteration_and_the_last_good_state(camvid_root, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(train.TrainingError) as info:
        run_main(camvid_root, out, *SMALL, "--batch-size", "2", "--iters", "8",
                 "--ckpt-every", "1", "--print-freq", "4", "--lr", "1e30")  # fmt: skip
    message = str(info.value)
    assert "at iteration" in message and ("nan" in message or "inf" in message), message
    assert f"last good state: {out / 'checkpoint.pth'}" in message
    good = torch.load(out / "checkpoint.pth", weights_only=True)
    assert all(torch.isfinite(t).all() for t in good["model"].values() if t.is_floating_point())
    bad_iteration = int(message.split("at iteration ")[1].split(";")[0])
    assert good["iteration"] == bad_iteration - 1  # saved after the last finite step


def test_recipes_fill_defaults_and_flags_override(tmp_path):
    args = train.parse_args(["--recipe", str(TRAINING / "recipes" / "camvid_b.yaml")])
    assert args.model == "dfanet_b" and args.batch_size == 48 and args.crop_size == [360, 480]
    assert args.base_lr == 0.2 and args.weight_decay == 1e-5 and args.iters == 10000
    args = train.parse_args(["--recipe", "cityscapes_a", "--batch-size", "8", "--iters", "5"])
    assert args.dataset == "cityscapes" and args.batch_size == 8 and args.iters == 5
    assert train.learning_rate(args, 16) == pytest.approx(0.2 * 16 / 48)
    scratch = train.parse_args(["--recipe", "camvid_a_scratch"])
    assert scratch.train_split == "train+val" and scratch.epochs == 800
    assert scratch.weight_decay == 5e-4 and scratch.ema_decay > 0 and scratch.aux_weight > 0
    assert scratch.recipe_name == "camvid_a_scratch"
    schedule = train.make_schedule(scratch, 468, (0.5,) * 3, (0.2,) * 3, 255)
    assert schedule.total_iterations == 7800  # 800 epochs of 468 images at batch 48
    cpu = train.parse_args(["--recipe", "camvid_a_scratch_cpu"])
    schedule = train.make_schedule(cpu, 468, (0.5,) * 3, (0.2,) * 3, 255)
    assert [s.augment.crop_size for s in schedule.stages] == [(224, 224), (360, 480)]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dfanet_a\nbatchsize: 4\n")
    with pytest.raises(RecipeError, match=r"unknown keys \['batchsize'\]"):
        train.parse_args(["--recipe", str(bad)])
    with pytest.raises(RecipeError, match="available: .*camvid_a_scratch"):
        train.parse_args(["--recipe", "no_such_recipe"])


def test_missing_data_and_bad_settings_are_named(camvid_root, tmp_path):
    missing = tmp_path / "no_camvid"
    with pytest.raises(DatasetError, match=f"CamVid root folder not found: {missing}"):
        run_main(missing, tmp_path / "o")
    with pytest.raises(train.TrainingError, match="float16 needs CUDA"):
        train.autocast_dtype(train.parse_args(["--amp", "--amp-dtype", "float16"]),
                             torch.device("cpu"))  # fmt: skip
    assert train.autocast_dtype(train.parse_args(["--amp"]), torch.device("cpu")) is (
        torch.bfloat16)
    assert train.autocast_dtype(train.parse_args([]), torch.device("cpu")) is None


def test_label_outside_the_class_range_names_file_and_value(tmp_path):
    import cv2
    import numpy as np

    for folder in ("train", "trainannot"):
        (tmp_path / folder).mkdir()
    cv2.imwrite(str(tmp_path / "train" / "a.png"), np.zeros((24, 32, 3), np.uint8))
    label = np.zeros((24, 32), np.uint8)
    label[3, 4] = 42
    cv2.imwrite(str(tmp_path / "trainannot" / "a.png"), label)
    with pytest.raises(DatasetError, match=r"trainannot/a\.png has values \[42\]"):
        run_main(tmp_path, tmp_path / "o", "--iters", "1")
    (tmp_path / "trainannot" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"no label file.*a\.png"):
        run_main(tmp_path, tmp_path / "o", "--iters", "1")


def test_cli_reports_errors_without_traceback(camvid_root, tmp_path):
    not_a_state = tmp_path / "junk.pth"
    not_a_state.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        train_command(*SMALL, "--iters", "1", "--output-dir", str(tmp_path / "o"),
                      "--data-root", str(camvid_root), "--resume", str(not_a_state)),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"train.py: error: cannot read training checkpoint {not_a_state}" in result.stderr
    assert "Traceback" not in result.stderr


def test_benchmark_mode_prints_rates_and_writes_nothing(camvid_root, tmp_path):
    out = tmp_path / "bench"
    result = run_main(camvid_root, out, *SMALL, "--batch-size", "2", "--iters", "50",
                      "--benchmark-steps", "2")  # fmt: skip
    assert result["iterations_per_s"] > 0 and result["images_per_s"] == pytest.approx(
        2 * result["iterations_per_s"])
    assert not (out / "checkpoint.pth").exists()


def test_init_checkpoint_starts_from_its_weights_and_rejects_another_variant(
    camvid_root, tmp_path, untrained_checkpoint
):
    small = [*SMALL[2:], "--batch-size", "2", "--iters", "1", "--lr", "0"]
    out = tmp_path / "init"
    run_main(camvid_root, out, "--model", "dfanet_b", *small,
             "--init-checkpoint", str(untrained_checkpoint))  # fmt: skip
    source, _ = load_checkpoint(untrained_checkpoint)
    trained, _ = load_checkpoint(out / "final.safetensors")
    for (name, a), (_, b) in zip(source.named_parameters(), trained.named_parameters()):
        assert torch.equal(a, b), name  # LR 0: the weights are the checkpoint's
    with pytest.raises(train.TrainingError, match="holds 'dfanet_b', but --model is"):
        run_main(camvid_root, tmp_path / "bad", "--model", "backbone_b", *small,
                 "--init-checkpoint", str(untrained_checkpoint))  # fmt: skip


def test_gpu_train_script_packs_camvid_and_trains_side_by_side(camvid_root, tmp_path):
    """training/gpu_train.sh as a lent GPU machine runs it, here on the CPU with tiny settings:
    `pack` re-encodes CamVid train+val as JPEG for the 64 MiB a device call carries, `run` trains
    two recipes at once and packs each run (fp16 weights, logs; no resumable state)."""
    import tarfile

    script = TRAINING / "gpu_train.sh"
    payload = tmp_path / "payload"
    shared = str(camvid_root.parents[1])
    env = {**os.environ, "PYTHON": sys.executable, "DFANET_SHARED_DIR": shared}
    subprocess.run(["bash", str(script), "pack", str(payload), "90"], env=env, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    for split, count in (("train", 367), ("val", 101)):
        assert len(list((payload / split).glob("*.jpg"))) == count
        assert len(list((payload / f"{split}annot").glob("*.png"))) == count
    size = sum(f.stat().st_size for f in payload.rglob("*") if f.is_file())
    assert size < 60 * 2**20, size
    out = tmp_path / "out"
    tiny = ("--device cpu --batch-size 2 --train-subset 4 --crop-size 64 96 --base-size 120 160 "
            "--threads 1 --epochs 1 --amp-dtype bfloat16")  # fmt: skip
    result = subprocess.run(
        ["bash", str(script), "run", str(payload), "1", str(out), "a=camvid_a_scratch",
         "b_ohem=camvid_b_scratch --loss ohem"],
        env={**env, "GPU_TRAIN_ARGS": tiny, "GPU_TRAIN_RUNS": str(tmp_path / "runs")},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for label in ("a", "b_ohem"):
        with tarfile.open(out / f"train_{label}.tgz") as tar:
            names = {Path(n).name for n in tar.getnames()}
        assert {"final_fp16.safetensors", "train_log.csv", "summary.json"} <= names, names
        assert not names & {"checkpoint.pth", "final.safetensors", "ema.safetensors"}
    args = (tmp_path / "runs" / "gpu_b_ohem" / "args.yaml").read_text()
    assert "loss: ohem" in args and "model: dfanet_b" in args
    bench = subprocess.run(
        ["bash", str(script), "bench", str(payload), str(out), "camvid_b_scratch"],
        env={**env, "GPU_TRAIN_ARGS": tiny, "GPU_BENCH_STEPS": "2"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "iterations/s" in (out / "benchmark.txt").read_text()
