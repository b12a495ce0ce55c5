"""dfanet_core.metrics: hand-computed cases and agreement with the official Cityscapes scorer."""

from __future__ import annotations

import copy
import math

import cv2
import numpy as np
import pytest
import torch

from dfanet_core.data import CITYSCAPES, CITYSCAPES_LABELID_TO_TRAINID
from dfanet_core.data.info import cityscapes_trainid_to_labelid
from dfanet_core.metrics import ConfusionMatrix, to_jsonable

TARGET = np.array([0, 0, 1, 1, 2, 255])
PREDICTION = np.array([0, 1, 1, 1, 0, 2])


def test_hand_computed_matrix_and_scores():
    cm = ConfusionMatrix(3, ignore_index=255).update(TARGET, PREDICTION)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    scores = cm.compute()
    # IoU_0 = 1 / (2 + 2 - 1), IoU_1 = 2 / (2 + 3 - 2), IoU_2 = 0 / (1 + 0 - 0)
    assert scores["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert scores["miou"] == pytest.approx(1 / 3)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)  # the ignored pixel is not counted
    assert scores["per_class_accuracy"] == pytest.approx([0.5, 1.0, 0.0])
    assert scores["mean_class_accuracy"] == pytest.approx(0.5)
    assert scores["num_pixels"] == 5 and scores["classes_present"] == 3


def test_absent_class_is_nan_and_left_out_of_the_mean():
    scores = ConfusionMatrix(4).update(TARGET, PREDICTION).compute()
    assert math.isnan(scores["per_class_iou"][3]) and math.isnan(scores["per_class_accuracy"][3])
    assert scores["miou"] == pytest.approx(1 / 3)
    assert to_jsonable(scores)["per_class_iou"][3] is None
    # Predicted but absent from the ground truth: IoU 0 (a false positive), accuracy undefined.
    scores = ConfusionMatrix(4).update(np.array([0, 0]), np.array([0, 3])).compute()
    assert scores["per_class_iou"][3] == 0.0 and math.isnan(scores["per_class_accuracy"][3])
    assert scores["miou"] == pytest.approx(0.25)


def test_non_class_prediction_counts_as_a_miss_only():
    cm = ConfusionMatrix(2).update(np.array([0, 0, 1]), np.array([0, 255, 1]))
    scores = cm.compute()
    assert scores["per_class_iou"] == pytest.approx([0.5, 1.0])
    assert scores["pixel_accuracy"] == pytest.approx(2 / 3)
    assert cm.counts[:, -1].tolist() == [1, 0]


def test_torch_and_numpy_inputs_agree_and_merge():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, (2, 17, 23))
    target[:, :3] = 255
    prediction = rng.integers(0, 5, (2, 17, 23))
    from_numpy = ConfusionMatrix(5).update(target, prediction)
    from_torch = ConfusionMatrix(5).update(torch.from_numpy(target), torch.from_numpy(prediction))
    np.testing.assert_array_equal(from_numpy.counts, from_torch.counts)
    halves = ConfusionMatrix(5).update(target[0], prediction[0]) + ConfusionMatrix(5).update(
        target[1], prediction[1]
    )
    np.testing.assert_array_equal(halves.counts, from_numpy.counts)
    assert from_numpy.all_reduce() is from_numpy  # no process group: unchanged
    np.testing.assert_allclose(from_numpy.normalized().sum(axis=1), 1.0)


def test_errors_and_empty():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(3).update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
    assert math.isnan(ConfusionMatrix(3).compute()["miou"])


def _official_evaluator(tmp_path):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    args = copy.copy(ev.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.exportFile = str(tmp_path / "official.json")
    return ev, args


def test_matches_official_cityscapes_evaluator(tmp_path):
    """Same predictions, written as labelId PNGs, through cityscapesscripts' evaluateImgLists."""
    rng = np.random.default_rng(42)
    to_train = np.array(CITYSCAPES_LABELID_TO_TRAINID + (255,) * (256 - 34), np.uint8)
    to_label = cityscapes_trainid_to_labelid()
    ours = ConfusionMatrix(19, 255)
    predictions, ground_truths = [], []
    for i in range(3):
        gt = rng.integers(0, 34, (48, 96)).astype(np.uint8)
        gt[gt == 31] = 7  # 'train' absent from the ground truth ...
        train_gt = to_train[gt]
        pred = np.where(rng.random(gt.shape) < 0.6, train_gt, rng.integers(0, 19, gt.shape))
        pred = np.where(pred == 255, rng.integers(0, 19, gt.shape), pred).astype(np.uint8)
        pred[pred == 16] = 13  # ... and never predicted -> NaN in both evaluators
        ours.update(train_gt, pred)
        stem = f"frankfurt_{i:06d}_000019"
        gt_path = tmp_path / f"{stem}_gtFine_labelIds.png"
        pred_path = tmp_path / f"{stem}_pred.png"
        cv2.imwrite(str(gt_path), gt)
        cv2.imwrite(str(pred_path), to_label[pred])
        ground_truths.append(str(gt_path))
        predictions.append(str(pred_path))
    ev, args = _official_evaluator(tmp_path)
    official = ev.evaluateImgLists(predictions, ground_truths, args)
    scores = ours.compute()
    for train_id, name in enumerate(CITYSCAPES.class_names):
        expected = official["classScores"][name]
        if math.isnan(expected):
            assert math.isnan(scores["per_class_iou"][train_id]), name
        else:
            assert scores["per_class_iou"][train_id] == pytest.approx(expected, abs=1e-12), name
    assert math.isnan(scores["per_class_iou"][16])
    assert scores["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)
