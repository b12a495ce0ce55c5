"""Plain helpers shared by several test modules (test modules never import each other; shared
fixtures live in conftest.py)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import cv2
import numpy as np

from dfanet_core.paths import REPO_ROOT

# The shared CamVid bag (../shared/data/bags/camvid_seq): CamVid test frames Seq05VD_f00000 ..
# f00270 (every 30th video frame), header stamps and log times FIRST_STAMP + i * SECOND.
SECOND = 10**9
FIRST_STAMP = 10**18
BAG_FRAMES = [f"Seq05VD_f{30 * i:05d}" for i in range(10)]
BAG_STAMPS = [FIRST_STAMP + i * SECOND for i in range(len(BAG_FRAMES))]
# The backend of the bag tests' reference masks and of every run compared with them.
BAG_BACKEND = "onnxruntime"


def png_reference(segmenter, camvid_root: Path) -> dict:
    """training/evaluate.py's code path on the PNG files of the bag's 10 frames: the CamVid
    dataset (void -> ignore), ``run_evaluation`` with ``segmenter`` (a BAG_BACKEND Segmenter) as
    predictor (the swap its ``make_predictor`` docstring names) and dfanet_core.metrics.

    Returns ``masks`` (in frame order), ``miou`` and ``per_class_iou`` (by class name)."""
    from dfanet_core.data import CamVidDataset
    from dfanet_core.metrics import to_jsonable

    training_dir = str(REPO_ROOT / "training")
    if training_dir not in sys.path:
        sys.path.insert(0, training_dir)
    from evaluate import run_evaluation

    test_split = CamVidDataset(camvid_root, "test")
    dataset = copy.copy(test_split)
    dataset.pairs = [pair for pair in test_split.pairs if pair[0].stem in BAG_FRAMES]
    assert [image.stem for image, _ in dataset.pairs] == BAG_FRAMES
    assert segmenter.backend_name == BAG_BACKEND
    masks: list[np.ndarray] = []
    matrix, _ = run_evaluation(dataset, segmenter.predict, dataset.info.num_classes,
                               dataset.info.ignore_index,
                               on_prediction=lambda i, image, label, mask: masks.append(mask))
    scores = to_jsonable(matrix.total().compute())
    return {"masks": masks, "miou": scores["miou"],
            "per_class_iou": dict(zip(dataset.info.class_names, scores["per_class_iou"]))}


def make_cityscapes_tree(
    root: Path, split: str = "val", cities=("aachen", "bochum"), per_city: int = 2, size=(32, 64)
) -> list[np.ndarray]:
    """Official-layout Cityscapes folder with random images and labelIds 0..33; returns labels."""
    rng = np.random.default_rng(7)
    labels = []
    for city in cities:
        for n in range(per_city):
            stem = f"{city}_{n:06d}_000019"
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            label = rng.integers(0, 34, size, dtype=np.uint8)
            image_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(image_dir / f"{stem}_leftImg8bit.png"), image)
            cv2.imwrite(str(label_dir / f"{stem}_gtFine_labelIds.png"), label)
            labels.append(label)
    return labels
