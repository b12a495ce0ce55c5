"""training/train.py: overfitting a few CamVid images, exact resume after a kill, torchrun DDP
equivalence, clear errors. Small crops and backbone_b keep it CPU-friendly."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING = REPO_ROOT / "training"
if str(TRAINING) not in sys.path:
    sys.path.insert(0, str(TRAINING))

import train  # noqa: E402
import train_utils  # noqa: E402

from dfanet_core import load_checkpoint  # noqa: E402
from dfanet_core.data import DatasetError  # noqa: E402

# Tiny, deterministic runs: 6 CamVid images downscaled to 120x160, 64x96 crops.
SMALL = [
    "--model", "backbone_b", "--train-subset", "6", "--val-subset", "1",
    "--base-size", "120", "160", "--crop-size", "64", "96", "--workers", "0", "--eval-every", "0",
]  # fmt: skip


ONE_THREAD = ["--threads", "1"]


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread: runs compared bit for bit need the same thread count, and on a busy
    2-core machine OpenMP threads waiting for each other slow tiny tensors ~10x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_main(camvid_root: Path, out: Path, *extra: str) -> dict:
    args = train.parse_args(["--data-root", str(camvid_root), "--output-dir", str(out), *extra])
    return train.main(args)


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(TRAINING / "train.py"), *args]


def test_overfits_four_images(camvid_root, tmp_path):
    out = tmp_path / "overfit"
    summary = run_main(
        camvid_root, out, "--model", "backbone_b", "--train-subset", "4",
        "--val-split", "train", "--val-subset", "4", "--base-size", "96", "128",
        "--crop-size", "96", "128", "--scale-range", "1", "1", "--hflip-prob", "0",
        "--batch-size", "4", "--iters", "60", "--lr", "0.05", "--eval-every", "30",
        "--print-freq", "10", "--workers", "0", "--export-fp16",
    )  # fmt: skip
    rows = log_rows(out)
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"], rows
    # Chance level for 11 classes is ~0.09 mIoU; memorised training images score far above.
    assert summary["final_miou"] > 0.3, summary
    assert summary["best_miou"] >= summary["final_miou"] and summary["iterations"] == 60
    model, meta = load_checkpoint(out / "best.safetensors")
    assert meta["variant"] == "backbone_b" and meta["dataset"] == "camvid"
    assert meta["input_size"] == [96, 128] and meta["ignore_index"] == 255
    assert meta["class_names"][0] == "Sky" and meta["palette"][3] == [128, 64, 128]
    assert meta["training"]["val_miou"] == pytest.approx(summary["best_miou"])
    with safe_open(str(out / "best_fp16.safetensors"), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    # Parameters ship in fp16; BN running statistics stay fp32 (they exceed fp16's range).
    params = {name for name, _ in model.named_parameters()}
    assert {dtypes[k] for k in params} == {torch.float16}
    assert {dtypes[k] for k in dtypes if k.endswith(("running_mean", "running_var"))} == {
        torch.float32}
    half, _ = load_checkpoint(out / "best_fp16.safetensors")
    for (name, a), (_, b) in zip(half.state_dict().items(), model.state_dict().items()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)
    header = (out / "train_log.csv").read_text().splitlines()[0]
    assert header == "iteration,loss,lr,val_miou,elapsed_s"
    assert json.loads((out / "summary.json").read_text())["iterations"] == 60


def test_resume_after_kill_matches_uninterrupted_run(camvid_root, tmp_path):
    common = [*SMALL, "--data-root", str(camvid_root), "--batch-size", "2", "--iters", "24",
              "--ckpt-every", "2", "--print-freq", "1", "--lr", "0.02", *ONE_THREAD]  # fmt: skip
    reference = tmp_path / "reference"
    train.main(train.parse_args([*common, "--output-dir", str(reference)]))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_command(*common, "--output-dir", str(killed)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoint.pth").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    saved = torch.load(killed / "checkpoint.pth", weights_only=True)
    assert 2 <= saved["iteration"] < 24, "the run should have been killed part-way"

    train.main(train.parse_args([*common, "--output-dir", str(killed), "--resume", "auto"]))
    a = torch.load(reference / "checkpoint.pth", weights_only=True)
    b = torch.load(killed / "checkpoint.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 24
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        other = b["optimizer"]["state"][index]
        assert torch.equal(state["momentum_buffer"], other["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["rng"]["python"] == b["rng"]["python"]
    assert [r["loss"] for r in log_rows(reference)] == [r["loss"] for r in log_rows(killed)]


def test_torchrun_two_processes_match_one_process(camvid_root, tmp_path):
    common = [*SMALL, "--data-root", str(camvid_root), "--iters", "3", "--ckpt-every", "1",
              "--keep-checkpoints", "--print-freq", "1", "--lr", "0.01"]  # fmt: skip
    single = tmp_path / "single"
    train.main(train.parse_args([*common, "--batch-size", "4", "--output-dir", str(single),
                                 *ONE_THREAD]))  # fmt: skip
    ddp = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(TRAINING / "train.py"),
               *common, "--batch-size", "2", "--output-dir", str(ddp)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) x batch 2" in result.stderr

    single_loss = [r["loss"] for r in log_rows(single)]
    ddp_loss = [r["loss"] for r in log_rows(ddp)]
    # Same global batch, synced batch norm, loss normalized by the global valid-pixel count.
    assert ddp_loss[0] == pytest.approx(single_loss[0], rel=1e-5)
    assert ddp_loss == pytest.approx(single_loss, rel=2e-2)

    # After one step the momentum buffers hold the (weight-decayed) gradients: they agree to
    # float32 noise. (Later weights are not compared tightly: at initialisation the network's
    # float32 gradients already differ ~2% from float64 ones, and that noise grows.)
    a = torch.load(single / "checkpoint_0000001.pth", weights_only=True)
    b = torch.load(ddp / "checkpoint_0000001.pth", weights_only=True)
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


def test_nan_loss_stops_naming_iteration_and_checkpoint(camvid_root, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(train_utils.TrainingError) as info:
        run_main(camvid_root, out, *SMALL, "--batch-size", "2", "--iters", "6",
                 "--ckpt-every", "1", "--lr", "1e30")  # fmt: skip
    message = str(info.value)
    assert "at iteration" in message and ("nan" in message or "inf" in message), message
    assert f"last good checkpoint: {out / 'checkpoint.pth'}" in message
    good = torch.load(out / "checkpoint.pth", weights_only=True)
    assert all(torch.isfinite(t).all() for t in good["model"].values() if t.is_floating_point())


def test_recipe_fills_defaults_and_flags_override(tmp_path):
    args = train.parse_args(["--recipe", str(TRAINING / "recipes" / "camvid_b.yaml")])
    assert args.model == "dfanet_b" and args.batch_size == 48 and args.crop_size == [360, 480]
    assert args.base_lr == 0.2 and args.weight_decay == 1e-5 and args.iters == 10000
    args = train.parse_args(["--recipe", "cityscapes_a", "--batch-size", "8", "--iters", "5"])
    assert args.dataset == "cityscapes" and args.model == "dfanet_a"
    assert args.batch_size == 8 and args.iters == 5 and args.crop_size == [1024, 1024]
    assert train.learning_rate(args, world_size=2) == pytest.approx(0.2 * 16 / 48)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dfanet_a\nbatchsize: 4\n")
    with pytest.raises(train_utils.TrainingError, match=r"unknown keys \['batchsize'\]"):
        train.parse_args(["--recipe", str(bad)])


def test_missing_data_root_is_named(tmp_path):
    missing = tmp_path / "no_camvid"
    with pytest.raises(DatasetError, match=f"CamVid root folder not found: {missing}"):
        train.main(train.parse_args(["--data-root", str(missing), "--output-dir", str(tmp_path)]))


def test_cli_reports_errors_without_traceback(camvid_root, tmp_path):
    not_a_checkpoint = tmp_path / "junk.pth"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        train_command(*SMALL, "--iters", "1", "--output-dir", str(tmp_path / "o"),
                      "--data-root", str(camvid_root), "--resume", str(not_a_checkpoint),
                      *ONE_THREAD),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"train.py: error: cannot read training checkpoint {not_a_checkpoint}" in result.stderr
    assert "Traceback" not in result.stderr


def test_pretrained_backbone_for_another_variant_is_rejected(tmp_path):
    from dfanet_core import create_model
    from dfanet_core.models import XceptionClassifier, get_config

    path = tmp_path / "backbone_b.pth"
    spec = get_config("dfanet_b").backbone
    torch.save({"model": XceptionClassifier(spec).state_dict(), "backbone": spec.name}, path)
    with pytest.raises(train_utils.TrainingError, match=r"does not fit dfanet_a.*backbone_b"):
        train.load_backbone_weights(create_model("dfanet_a", num_classes=11), path)


def _fit_loop(iteration: int, seconds_left: float, last_eval_s: float, iters: int = 10_000):
    """A TrainingLoop at ``iteration`` after 1 s per iteration, ``seconds_left`` before its
    deadline (the schedule-fitting state only)."""
    from types import SimpleNamespace

    loop = object.__new__(train.TrainingLoop)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    loop.args = SimpleNamespace(iters=iters, max_minutes=10.0)
    loop.dist = train_utils.DistInfo()
    loop.state = train.RunState(iteration=iteration)
    loop.total_iters = iters
    loop.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, train.PolyLR(iters))
    loop.progress = SimpleNamespace(total=iters)
    now = time.monotonic()
    loop.start_iteration, loop.loop_start = 0, now - iteration - 50.0  # a slow first iteration
    loop.rate_start = (now - iteration + 1, 1)
    loop.deadline, loop.last_eval_s = now + seconds_left, last_eval_s
    return loop


def test_fit_schedule_shortens_the_poly_schedule_to_the_budget():
    loop = _fit_loop(iteration=40, seconds_left=112.0, last_eval_s=4.0)
    loop._maybe_fit_schedule(just_evaluated=True)
    # 112 s left minus a reserve of max(1.5 x 4 s, 2 % of 600 s) = 12 s, at 1 s per iteration.
    assert 139 <= loop.total_iters <= 140  # (a few ms pass between set-up and the fit)
    assert loop.scheduler.lr_lambdas[0].max_iters == loop.total_iters


def test_fit_schedule_ends_on_an_evaluation_when_nothing_more_fits():
    """Near the deadline the run ends at the evaluation just made instead of re-fitting to one
    more iteration (and evaluating again) on every iteration until the deadline."""
    loop = _fit_loop(iteration=40, seconds_left=5.0, last_eval_s=4.0)
    loop._maybe_fit_schedule(just_evaluated=True)
    assert loop.total_iters == 40
    # Between evaluations (the first fit at 20 iterations) at least one more iteration runs.
    loop = _fit_loop(iteration=20, seconds_left=1.0, last_eval_s=0.0)
    loop._maybe_fit_schedule(just_evaluated=False)
    assert loop.total_iters == 21
    # A completed schedule is never reopened, however much time is left.
    loop = _fit_loop(iteration=40, seconds_left=500.0, last_eval_s=1.0, iters=40)
    loop._maybe_fit_schedule(just_evaluated=True)
    assert loop.total_iters == 40


def test_cache_images_trains_like_reading_files(camvid_root, tmp_path):
    common = [*SMALL, "--batch-size", "2", "--iters", "3", "--lr", "0.02", *ONE_THREAD]
    run_main(camvid_root, tmp_path / "files", *common)
    run_main(camvid_root, tmp_path / "cached", *common, "--cache-images")
    a, _ = load_checkpoint(tmp_path / "files" / "final.safetensors")
    b, _ = load_checkpoint(tmp_path / "cached" / "final.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_poly_schedule_and_linear_scaling():
    poly = train.PolyLR(100, 0.9)
    assert poly(0) == 1.0 and poly(100) == 0.0
    assert poly(50) == pytest.approx(0.5**0.9)
    args = train.parse_args(["--batch-size", "12"])
    assert train.learning_rate(args, world_size=1) == pytest.approx(0.05)
    args = train.parse_args(["--batch-size", "12", "--lr", "0.3"])
    assert train.learning_rate(args, world_size=4) == 0.3
    assert "linear scaling" in train.get_args_parser().format_help()


def test_warmup_ramps_linearly_into_the_poly_schedule():
    poly = train.PolyLR(100, 0.9, warmup_iters=10, warmup_factor=0.1)
    assert poly(0) == pytest.approx(0.1)
    assert poly(5) == pytest.approx(0.55 * (1 - 5 / 100) ** 0.9)
    assert poly(10) == pytest.approx((1 - 10 / 100) ** 0.9)
    # A scheduler state written before warm-up existed still loads and means "no warm-up".
    old = train.PolyLR(100, 0.9)
    del old.__dict__["warmup_iters"], old.__dict__["warmup_factor"]
    restored = train.PolyLR(1)
    restored.__dict__.update(old.__dict__)
    assert restored(0) == 1.0


def test_bfloat16_autocast_trains_on_cpu(camvid_root, tmp_path):
    """--amp: bfloat16 autocast (float32's range: no loss scaling, no overflow); on a CPU
    float16 is refused and training stays float32."""
    out = tmp_path / "bf16"
    summary = run_main(
        camvid_root, out, *SMALL, "--batch-size", "2", "--iters", "6", "--lr", "0.02", "--amp",
        "--warmup-iters", "3", *ONE_THREAD,
    )  # fmt: skip
    rows = log_rows(out)
    assert summary["iterations"] == 6 and all(math.isfinite(r["loss"]) for r in rows)
    assert "autocast to bfloat16" in (out / "train.log").read_text()
    args = train.parse_args(["--amp", "--amp-dtype", "float16"])
    assert train.autocast_dtype(args, torch.device("cpu")) is None
    assert train.autocast_dtype(train.parse_args([]), torch.device("cpu")) is None


def test_init_checkpoint_starts_from_its_weights_and_rejects_another_variant(
    camvid_root, tmp_path, untrained_checkpoint
):
    small = [*SMALL[2:], "--batch-size", "2", "--iters", "1", "--lr", "0", *ONE_THREAD]
    out = tmp_path / "init"
    run_main(
        camvid_root, out, "--model", "dfanet_b", *small,
        "--init-checkpoint", str(untrained_checkpoint), "--class-weights", "enet",
    )  # fmt: skip
    source, _ = load_checkpoint(untrained_checkpoint)
    trained, _ = load_checkpoint(out / "final.safetensors")
    for (name, a), (_, b) in zip(source.named_parameters(), trained.named_parameters()):
        assert torch.equal(a, b), name  # LR 0: the weights are the checkpoint's
    assert "class weights (enet): Sky" in (out / "train.log").read_text()
    with pytest.raises(train_utils.TrainingError, match="holds 'dfanet_b', but --model is"):
        run_main(camvid_root, tmp_path / "bad", "--model", "backbone_b", *small,
                 "--init-checkpoint", str(untrained_checkpoint))  # fmt: skip


def test_gpu_train_script_packs_camvid_and_trains_side_by_side(camvid_root, tmp_path):
    """training/gpu_train.sh as a lent GPU machine runs it, here on the CPU with tiny settings:
    `pack` re-encodes CamVid train+val as JPEG for the 64 MiB a device call carries, `run` trains
    two variants at once and packs each run (weights, logs; no resumable checkpoint)."""
    import os
    import tarfile

    script = TRAINING / "gpu_train.sh"
    payload = tmp_path / "payload"
    shared = camvid_root.parent.parent
    env = {**os.environ, "PYTHON": sys.executable, "DFANET_SHARED_DIR": str(shared)}
    subprocess.run(["bash", str(script), "pack", str(payload), "90"], env=env, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    for split, count in (("train", 367), ("val", 101)):
        assert len(list((payload / split).glob("*.jpg"))) == count
        assert len(list((payload / f"{split}annot").glob("*.png"))) == count
    size = sum(f.stat().st_size for f in payload.rglob("*") if f.is_file())
    assert size < 60 * 2**20, size
    out = tmp_path / "out"
    tiny = ("--device cpu --batch-size 2 --train-subset 4 --val-subset 2 --crop-size 64 96 "
            "--base-size 120 160 --eval-every 0 --threads 1 --workers 0")  # fmt: skip
    result = subprocess.run(
        ["bash", str(script), "run", str(payload), "0.05", str(out), "dfanet_a", "dfanet_b"],
        env={**env, "GPU_TRAIN_ARGS": tiny, "GPU_TRAIN_RUNS": str(tmp_path / "runs")},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for variant in ("dfanet_a", "dfanet_b"):
        with tarfile.open(out / f"train_{variant}.tgz") as tar:
            names = {Path(n).name for n in tar.getnames()}
        assert {"best_fp16.safetensors", "train_log.csv", "summary.json"} <= names, names
        assert "checkpoint.pth" not in names and "final.safetensors" not in names
