"""Class weights for the cross-entropy from a dataset's label statistics.

The paper trains with plain pixel-wise cross-entropy. On CamVid that leaves the thin and rare
classes (pole, sign, pedestrian, bicyclist: ~2.5 % of the labelled pixels) near 0 IoU after
short training, so two common re-weightings are offered:

- ``enet``: ``1 / ln(1.02 + p_c)`` with ``p_c`` the class's share of all labelled pixels
  (Paszke et al., ENet, 2016): bounded (at most ~50), mild for large classes.
- ``cgnet``: ``1 / ln(1.10 + p_c)`` (Wu et al., CGNet, 2018, the from-scratch CamVid recipe):
  the same shape, bounded at ~10.
- ``median-freq``: ``median(f) / f_c`` with ``f_c`` the class's pixels over the pixels of the
  images that contain it (Eigen & Fergus, 2015; SegNet's CamVid setting).

Weights are scaled so that their pixel-weighted mean is 1: the loss keeps the unweighted loss's
magnitude, and so the learning rate keeps its meaning.
"""

from __future__ import annotations

import numpy as np

from .datasets import SegmentationDataset

METHODS = ("none", "enet", "cgnet", "median-freq")


# 1 / ln(c + p): ENet's c = 1.02 (weights up to ~50), CGNet's c = 1.10 (up to ~10, milder).
ENET_C = {"enet": 1.02, "cgnet": 1.10}


def label_statistics(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, image_pixels)`` per class: labelled pixels of the class over the whole
    dataset, and labelled pixels of the images in which the class appears."""
    n = dataset.info.num_classes
    pixels = np.zeros(n, np.int64)
    image_pixels = np.zeros(n, np.int64)
    for index in range(len(dataset)):
        label = dataset.load_label(index)
        counts = np.bincount(label[label < n].ravel(), minlength=n)[:n]
        pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    return pixels, image_pixels


def label_counts(labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_statistics` of a stack of train-id labels (N, H, W) (numpy or torch, e.g. an
    :class:`~dfanet_core.data.bank.ImageBank`'s), without decoding anything."""
    import torch

    labels = torch.as_tensor(labels).reshape(len(labels), -1).long()
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for label in labels:
        counts = torch.bincount(label[label < num_classes], minlength=num_classes)
        counts = counts[:num_classes].cpu().numpy()
        pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    return pixels, image_pixels


def class_weights(pixels: np.ndarray, image_pixels: np.ndarray, method: str) -> np.ndarray | None:
    """Per-class loss weights (float32) by ``method`` (see the module doc), or None for
    ``none``. Classes without a labelled pixel get weight 0 (they cannot occur in the loss)."""
    if method not in METHODS:
        raise ValueError(f"class weighting must be one of {METHODS}, got {method!r}")
    if method == "none":
        return None
    pixels = np.asarray(pixels, np.float64)
    present = pixels > 0
    if not present.any():
        raise ValueError("no labelled pixels: class weights are undefined")
    share = pixels / pixels.sum()
    weights = np.zeros_like(share)
    if method in ("enet", "cgnet"):
        weights[present] = 1.0 / np.log(ENET_C[method] + share[present])
    else:
        freq = pixels[present] / np.asarray(image_pixels, np.float64)[present]
        weights[present] = np.median(freq) / freq
    weights /= (share * weights).sum()
    return weights.astype(np.float32)
