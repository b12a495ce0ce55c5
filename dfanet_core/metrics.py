"""The one segmentation metrics implementation (training, evaluate.py and bag replay use it).

:class:`ConfusionMatrix` accumulates ground truth x prediction counts with ``bincount``. Pixels
whose ground truth is ``ignore_index`` (or any value outside ``0..num_classes-1``) are not
counted. A prediction outside ``0..num_classes-1`` (e.g. 255 = "no prediction" on the mask
topic) counts as a miss for its ground-truth class and as a false positive for no class.

Definitions (the same as the official Cityscapes evaluator, cross-checked in the tests):

- IoU_c = TP_c / (TP_c + FP_c + FN_c), over non-ignored pixels.
- A class with TP + FP + FN = 0 (in neither ground truth nor prediction) has IoU NaN in
  ``compute()`` (``None`` in :func:`to_jsonable` output) and is left out of the mean:
  **mIoU = mean IoU over classes present in ground truth or prediction**.
- pixel_accuracy = correct / counted pixels; class accuracy_c = TP_c / ground-truth pixels of c
  (NaN when c is absent from the ground truth); mean_class_accuracy = mean over present classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


class ConfusionMatrix:
    """Counts of (ground-truth class, predicted class); mergeable across batches and processes.

    ``counts`` has shape ``(num_classes, num_classes + 1)``: the last column holds pixels whose
    prediction was not a class. :attr:`matrix` is the square part.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.counts = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """(num_classes, num_classes) int64: rows ground truth, columns prediction."""
        return self.counts[:, : self.num_classes]

    def reset(self) -> None:
        self.counts[:] = 0

    def update(self, target: ArrayLike, prediction: ArrayLike) -> ConfusionMatrix:
        """Add a batch: ``target`` and ``prediction`` are class-id arrays of the same shape
        (numpy or torch, any device; torch inputs are counted on their device)."""
        if tuple(target.shape) != tuple(prediction.shape):
            raise ValueError(
                f"target shape {tuple(target.shape)} != prediction shape {tuple(prediction.shape)}"
            )
        n = self.num_classes
        if isinstance(target, torch.Tensor) or isinstance(prediction, torch.Tensor):
            t = torch.as_tensor(target).reshape(-1).long()
            p = torch.as_tensor(prediction, device=t.device).reshape(-1).long()
            keep = (t >= 0) & (t < n)
            t, p = t[keep], p[keep]
            p = torch.where((p >= 0) & (p < n), p, n)
            counts = torch.bincount(t * (n + 1) + p, minlength=n * (n + 1)).cpu().numpy()
        else:
            t = np.asarray(target).reshape(-1).astype(np.int64)
            p = np.asarray(prediction).reshape(-1).astype(np.int64)
            keep = (t >= 0) & (t < n)
            t, p = t[keep], p[keep]
            p = np.where((p >= 0) & (p < n), p, n)
            counts = np.bincount(t * (n + 1) + p, minlength=n * (n + 1))
        self.counts += counts.reshape(n, n + 1)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts in place (same classes)."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge {other.num_classes}-class counts into {self.num_classes} classes"
            )
        self.counts += other.counts
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        result = ConfusionMatrix(self.num_classes, self.ignore_index)
        return result.merge(self).merge(other)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all processes of an initialised ``torch.distributed`` group."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            tensor = torch.from_numpy(self.counts).to(device)
            dist.all_reduce(tensor)
            self.counts = tensor.cpu().numpy()
        return self

    def compute(self) -> dict[str, Any]:
        """Scores as Python floats; NaN marks classes absent from ground truth and prediction
        (IoU) or from ground truth (accuracy). See the module docstring for definitions."""
        counts = self.counts.astype(np.float64)
        tp = np.diag(counts[:, : self.num_classes])
        gt = counts.sum(axis=1)  # TP + FN (misses include non-class predictions)
        pred = counts[:, : self.num_classes].sum(axis=0)  # TP + FP
        union = gt + pred - tp
        total = counts.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            class_acc = np.where(gt > 0, tp / gt, np.nan)
        return {
            "miou": _nanmean(iou),
            "per_class_iou": iou.tolist(),
            "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
            "mean_class_accuracy": _nanmean(class_acc),
            "per_class_accuracy": class_acc.tolist(),
            "num_pixels": int(total),
            "classes_present": int((union > 0).sum()),
        }

    def normalized(self) -> np.ndarray:
        """Row-normalized matrix (each ground-truth class sums to 1; absent rows are 0)."""
        rows = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.matrix, rows, out=np.zeros(self.matrix.shape), where=rows > 0)


class GroupedConfusion:
    """One :class:`ConfusionMatrix` per group (a CamVid test sequence, a Cityscapes city): the
    per-group scores and the overall one (:meth:`total`, the sum of the groups) from one pass."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.groups: dict[str, ConfusionMatrix] = {}

    def update(self, group: str, target: ArrayLike, prediction: ArrayLike) -> GroupedConfusion:
        if group not in self.groups:
            self.groups[group] = ConfusionMatrix(self.num_classes, self.ignore_index)
        self.groups[group].update(target, prediction)
        return self

    def total(self) -> ConfusionMatrix:
        result = ConfusionMatrix(self.num_classes, self.ignore_index)
        for matrix in self.groups.values():
            result.merge(matrix)
        return result

    def all_reduce(self) -> GroupedConfusion:
        """Sum over processes; every process must know every group name, so the names are
        gathered first."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            names: list[list[str]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(names, sorted(self.groups))
            for name in sorted({n for part in names for n in part}):
                self.groups.setdefault(name, ConfusionMatrix(self.num_classes, self.ignore_index))
            self.groups = {name: self.groups[name].all_reduce() for name in sorted(self.groups)}
        return self

    def compute(self) -> dict[str, Any]:
        """``{"overall": scores, "groups": {name: scores}}`` (scores as in
        :meth:`ConfusionMatrix.compute`)."""
        return {
            "overall": self.total().compute(),
            "groups": {name: m.compute() for name, m in sorted(self.groups.items())},
        }


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


def to_jsonable(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), numpy scalars/arrays -> Python, recursively."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
