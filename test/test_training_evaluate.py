"""training/evaluate.py and training/pretrain_backbone.py end to end on small inputs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _helpers import make_cityscapes_tree

from dfanet_core import CheckpointError, create_model, load_checkpoint, save_checkpoint
from dfanet_core.data import CITYSCAPES, CamVidDataset, DatasetError
from dfanet_core.data.classification import ImageFolder
from dfanet_core.imaging import read_image
from dfanet_core.metrics import ConfusionMatrix
from training import evaluate as evaluate_script
from training import pretrain_backbone, train

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def run_evaluate(*argv: str) -> dict:
    return evaluate_script.main(evaluate_script.get_args_parser().parse_args(list(argv)))


def test_evaluate_camvid_writes_reports_plots_and_overlays(
    untrained_checkpoint, camvid_root, tmp_path
):
    log = tmp_path / "train_log.jsonl"
    rows = [
        {"iteration": 10, "loss": 2.0, "lr": 0.03, "epoch": 1.0, "elapsed_s": 1.0},
        {"iteration": 20, "eval_miou": 0.21, "eval_miou_0001TP": 0.2},
        {"iteration": 20, "loss": 1.5, "lr": 0.02, "epoch": 2.0, "elapsed_s": 2.0},
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
    # Both test images are from sequence 0001TP: its row equals the overall score.
    assert list(saved["per_sequence"]) == ["0001TP"]
    assert saved["per_sequence"]["0001TP"]["miou"] == pytest.approx(saved["miou"])
    assert saved["tta"].startswith("none") and saved["fp16_check"]["images"] == 2
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

    args = train.parse_args(["--model", "dfanet_b", "--pretrained-backbone",
                             str(tmp_path / "pre" / "backbone.pth")])  # fmt: skip
    model = train.build_model(args, num_classes=11)
    assert torch.equal(model.backbones[0].stem[0].weight, state["stem.0.weight"])
    for backbone in model.backbones:
        assert torch.equal(backbone.attention.fc.weight, state["fc.weight"])
        last = backbone.stages[-1][-1]  # last block: same shape in every backbone
        prefix = f"stages.{len(backbone.stages) - 1}.{len(backbone.stages[-1]) - 1}."
        for name, tensor in last.state_dict().items():
            assert torch.equal(tensor, state[prefix + name]), prefix + name


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty" / "class_0").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images in"):
        ImageFolder(tmp_path / "empty")


def test_pretrained_backbone_for_another_variant_is_rejected(tmp_path):
    from dfanet_core.models import XceptionClassifier, get_config

    path = tmp_path / "backbone_b.pth"
    spec = get_config("dfanet_b").backbone
    torch.save({"model": XceptionClassifier(spec).state_dict(), "backbone": spec.name}, path)
    args = train.parse_args(["--model", "dfanet_a", "--pretrained-backbone", str(path)])
    with pytest.raises(train.TrainingError, match=r"does not fit dfanet_a: \d+ tensors unused"):
        train.build_model(args, num_classes=11)


def test_evaluate_reports_each_sequence_and_tta_separately(camvid_root, tmp_path):
    """One image of each test sequence with the shipped weights (masks that vary, unlike an
    untrained model's): each sequence's matrix is its image's own, they sum to the overall one,
    and flip TTA changes the prediction and is labelled as TTA."""
    from dfanet_core.checkpoint import default_checkpoint

    dataset = CamVidDataset(camvid_root, "test")
    two = copy.copy(dataset)
    two.pairs = [dataset.pairs[0], dataset.pairs[-1]]  # 0001TP_..., Seq05VD_...
    model, meta = load_checkpoint(default_checkpoint())
    cpu = torch.device("cpu")
    predict = evaluate_script.make_predictor(model, meta["mean"], meta["std"], cpu)
    grouped, _ = evaluate_script.run_evaluation(two, predict, 11, 255)
    assert sorted(grouped.groups) == ["0001TP", "Seq05VD"]
    for index, name in ((0, "0001TP"), (1, "Seq05VD")):
        image, label = two.load(index)
        alone = ConfusionMatrix(11, 255).update(label, predict(image))
        assert np.array_equal(grouped.groups[name].counts, alone.counts)
    assert grouped.total().compute()["miou"] > 0.15  # trained weights, not one class everywhere
    flipped = evaluate_script.make_predictor(model, meta["mean"], meta["std"], cpu, flips=True)
    image = two.load(0)[0]
    assert (predict(image) != flipped(image)).any()
    out = tmp_path / "tta"
    report = run_evaluate(
        "--checkpoint", str(default_checkpoint()), "--data-root", str(camvid_root), "--split",
        "test", "--limit", "1", "--tta", "flip", "--output-dir", str(out),
        "--fp16-check-images", "0",
    )  # fmt: skip
    assert report["tta"].startswith("flip=True") and "fp16_check" not in report
    assert "test-time augmentation: flip=True" in (out / "report.md").read_text()
