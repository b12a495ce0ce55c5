"""training/evaluate.py and training/pretrain_backbone.py end to end on small inputs."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING = REPO_ROOT / "training"
if str(TRAINING) not in sys.path:
    sys.path.insert(0, str(TRAINING))

import evaluate as evaluate_script  # noqa: E402
import pretrain_backbone  # noqa: E402
import train  # noqa: E402
from _helpers import make_cityscapes_tree  # noqa: E402

from dfanet_core import CheckpointError, create_model, save_checkpoint  # noqa: E402
from dfanet_core.data import CITYSCAPES, CamVidDataset, DatasetError  # noqa: E402
from dfanet_core.imaging import read_image  # noqa: E402


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread: on a busy 2-core machine OpenMP threads waiting for each other slow
    small tensors ~10x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_evaluate(*argv: str) -> dict:
    return evaluate_script.main(evaluate_script.get_args_parser().parse_args(list(argv)))


def test_evaluate_camvid_writes_reports_plots_and_overlays(
    untrained_checkpoint, camvid_root, tmp_path
):
    log = tmp_path / "train_log.jsonl"
    rows = [
        {"iteration": 10, "loss": 2.0, "lr": 0.03, "val_miou": None, "elapsed_s": 1.0},
        {"iteration": 20, "loss": 1.5, "lr": 0.02, "val_miou": 0.21, "elapsed_s": 2.0},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    report = run_evaluate(
        "--checkpoint", str(untrained_checkpoint), "--data-root", str(camvid_root),
        "--split", "test", "--limit", "2", "--overlays", "1", "--train-log", str(log),
        "--output-dir", str(out),
    )  # fmt: skip
    labels = [CamVidDataset(camvid_root, "test").load(i)[1] for i in range(2)]
    counted = sum(int((label != 255).sum()) for label in labels)
    assert report["num_images"] == 2 and report["num_pixels"] == counted
    assert np.asarray(report["confusion_matrix"]).sum() + sum(report["unassigned_pixels"]) == (
        counted
    )
    saved = json.loads((out / "report.json").read_text())
    assert list(saved["per_class"]) == list(CamVidDataset(camvid_root, "test").info.class_names)
    assert saved["miou"] == pytest.approx(report["miou"]) and 0 <= saved["miou"] <= 1
    for row in saved["per_class"].values():
        assert row["iou"] is None or 0 <= row["iou"] <= 1  # absent classes are null
    assert "| Sky |" in (out / "report.md").read_text()
    for name in ("per_class_iou.png", "confusion_matrix.png", "training_curves.png"):
        assert read_image(out / name).shape[0] > 100, name
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 1 and read_image(overlays[0]).shape == (360, 960, 3)


def test_evaluate_cityscapes_labelids_match_official_evaluator(tmp_path):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    make_cityscapes_tree(tmp_path / "cs", size=(64, 128))
    torch.manual_seed(0)
    model = create_model("backbone_b", num_classes=19)
    ckpt = save_checkpoint(
        tmp_path / "cs19.safetensors", model,
        CITYSCAPES.meta() | {"variant": "backbone_b", "input_size": [64, 128]},
    )  # fmt: skip
    predictions = tmp_path / "pred"
    report = run_evaluate(
        "--checkpoint", str(ckpt), "--data-root", str(tmp_path / "cs"), "--split", "val",
        "--cityscapes-labelids", str(predictions), "--output-dir", str(tmp_path / "eval"),
    )  # fmt: skip
    ground_truth = sorted((tmp_path / "cs" / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    stems = [p.name.replace("_gtFine_labelIds.png", "") for p in ground_truth]
    predicted = [predictions / f"{stem}.png" for stem in stems]
    assert all(p.is_file() for p in predicted)
    assert set(np.unique(cv2.imread(str(predicted[0]), cv2.IMREAD_UNCHANGED))) <= {
        7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
    }  # fmt: skip
    args = copy.copy(ev.args)
    args.evalInstLevelScore, args.evalPixelAccuracy = False, False
    args.JSONOutput, args.quiet, args.colorized = False, True, False
    official = ev.evaluateImgLists(list(map(str, predicted)), list(map(str, ground_truth)), args)
    assert report["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)
    for name, row in report["per_class"].items():
        expected = official["classScores"][name]
        if math.isnan(expected):
            assert row["iou"] is None or math.isnan(row["iou"]), name
        else:
            assert row["iou"] == pytest.approx(expected, abs=1e-12), name


def test_labelid_export_needs_a_cityscapes_model(untrained_checkpoint, camvid_root, tmp_path):
    with pytest.raises(CheckpointError, match="19-class Cityscapes model"):
        run_evaluate(
            "--checkpoint", str(untrained_checkpoint), "--data-root", str(camvid_root),
            "--split", "test", "--limit", "1", "--cityscapes-labelids", str(tmp_path),
            "--output-dir", str(tmp_path / "eval"),
        )  # fmt: skip


def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 30, 220), (30, 200, 30)]
    for split, count in (("train", 4), ("val", 2)):
        for index, colour in enumerate(colours):
            folder = root / split / f"class_{index}"
            folder.mkdir(parents=True)
            for n in range(count):
                noise = rng.normal(0, 20, (40, 48, 3)) + np.array(colour)
                cv2.imwrite(str(folder / f"{n}.png"), np.clip(noise, 0, 255).astype(np.uint8))


def test_pretrain_backbone_checkpoint_loads_into_every_backbone(tmp_path):
    _image_folder(tmp_path / "imagenet")
    argv = [
        "--data-root", str(tmp_path / "imagenet"), "--model", "dfanet_b", "--epochs", "2",
        "--lr-step-epoch", "1", "--batch-size", "6", "--image-size", "32", "--workers", "0",
        "--output-dir", str(tmp_path / "pre"),
    ]  # fmt: skip
    summary = pretrain_backbone.main(pretrain_backbone.get_args_parser().parse_args(argv))
    assert summary["classes"] == ["class_0", "class_1", "class_2"]
    assert 0.0 <= summary["val_top1"] <= 1.0
    saved = torch.load(tmp_path / "pre" / "backbone.pth", weights_only=True)
    state = saved["model"]
    assert saved["backbone"] == "backbone_b" and state["fc.weight"].shape[0] == 1000
    resume = torch.load(tmp_path / "pre" / "checkpoint.pth", weights_only=True)
    assert resume["epoch"] == 2 and resume["scheduler"]["last_epoch"] == 2

    model = create_model("dfanet_b", num_classes=11)
    train.load_backbone_weights(model, tmp_path / "pre" / "backbone.pth")
    assert torch.equal(model.backbones[0].stem[0].weight, state["stem.0.weight"])
    for backbone in model.backbones:
        assert torch.equal(backbone.attention.fc.weight, state["fc.weight"])
        last = backbone.stages[-1][-1]  # last block: same shape in every backbone
        prefix = f"stages.{len(backbone.stages) - 1}.{len(backbone.stages[-1]) - 1}."
        for name, tensor in last.state_dict().items():
            assert torch.equal(tensor, state[prefix + name]), prefix + name


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found"):
        pretrain_backbone.ImageFolder(tmp_path / "missing")
    (tmp_path / "empty" / "class_0").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images in"):
        pretrain_backbone.ImageFolder(tmp_path / "empty")
