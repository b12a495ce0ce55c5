"""Paired (image, target) transforms for training and evaluation (paper Sec. 4).

Images are RGB uint8 (H, W, 3) numpy arrays and targets uint8 (H, W) train ids until
:class:`Normalize`/:class:`ToTensor`. Geometry is applied to both in the same way; targets are
always resampled with nearest neighbour (no invented classes) and padded with the ignore index.

Every transform is called as ``t(image, target, rng=None)``. ``rng`` is a
``numpy.random.Generator``; with ``None`` a generator is drawn from numpy's global state, which
PyTorch's DataLoader seeds differently in every worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .info import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

Size = tuple[int, int]
# Pixel-centre nearest neighbour: aligned with bilinear image resizing (plain INTER_NEAREST is
# shifted by half a source pixel when downscaling).
_LABEL_INTERP = getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng(np.random.randint(0, 2**63 - 1))


def _pair_size(size: int | Sequence[int], what: str) -> Size:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive (H, W), got {size!r}")
    return int(h), int(w)


class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, target, rng: np.random.Generator | None = None):
        rng = _rng(rng)
        for t in self.transforms:
            image, target = t(image, target, rng=rng)
        return image, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class Resize:
    """Resize to a fixed (H, W): bilinear for the image, nearest for the target."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair_size(size, "Resize size")

    def __call__(self, image, target, rng=None):
        return _resize(image, target, self.size)

    def __repr__(self) -> str:
        return f"Resize{self.size}"


def _resize(image: np.ndarray, target: np.ndarray, size: Size) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    if image.shape[:2] == (h, w):
        return image, target
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    target = cv2.resize(target, (w, h), interpolation=_LABEL_INTERP)
    return image, target


class RandomResize:
    """Scale both sides by one factor drawn uniformly from ``[min_scale, max_scale]``
    (paper: 0.75..1.75)."""

    def __init__(self, min_scale: float = 0.75, max_scale: float = 1.75):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)

    def __call__(self, image, target, rng=None):
        scale = _rng(rng).uniform(self.min_scale, self.max_scale)
        h, w = image.shape[:2]
        return _resize(image, target, (max(1, round(h * scale)), max(1, round(w * scale))))

    def __repr__(self) -> str:
        return f"RandomResize({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Crop a fixed (H, W) window at a random place. Inputs smaller than the crop are first
    padded at the bottom/right: the image with ``fill`` (per channel, uint8) and the target with
    ``ignore_index``, so padding never contributes to the loss."""

    def __init__(
        self,
        size: int | Sequence[int],
        fill: Sequence[int] | int = 0,
        ignore_index: int = IGNORE_INDEX,
    ):
        self.size = _pair_size(size, "RandomCrop size")
        self.fill = [int(fill)] * 3 if isinstance(fill, int) else [int(v) for v in fill]
        self.ignore_index = int(ignore_index)

    def __call__(self, image, target, rng=None):
        ch, cw = self.size
        h, w = image.shape[:2]
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(
                image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.fill
            )
            target = cv2.copyMakeBorder(
                target, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.ignore_index
            )
            h, w = image.shape[:2]
        rng = _rng(rng)
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return image[top : top + ch, left : left + cw], target[top : top + ch, left : left + cw]

    def __repr__(self) -> str:
        return f"RandomCrop{self.size}"


class RandomHorizontalFlip:
    """Mirror image and target left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image, target, rng=None):
        if self.p > 0 and _rng(rng).random() < self.p:
            return image[:, ::-1], target[:, ::-1]
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.p})"


class Normalize:
    """uint8 RGB -> float32 ``(x / 255 - mean) / std`` (mean/std on the 0..1 scale)."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ):
        std_arr = np.asarray(std, np.float32)
        if std_arr.shape != (3,) or (std_arr <= 0).any():
            raise ValueError(f"std must be 3 positive values, got {std!r}")
        self.mean = np.asarray(mean, np.float32)
        self.std = std_arr
        # (x / 255 - m) / s == x * scale + offset
        self._scale = 1.0 / (255.0 * self.std)
        self._offset = -self.mean / self.std

    def __call__(self, image, target, rng=None):
        image = image.astype(np.float32) * self._scale + self._offset
        return image, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class ToTensor:
    """(H, W, 3) image -> float32 tensor (3, H, W); target -> int64 tensor (H, W)."""

    def __call__(self, image, target, rng=None):
        # Copies where the input may be shared (read-only cached arrays, views): the tensors own
        # their memory.
        image = image.transpose(2, 0, 1)
        if image.dtype != np.float32 or not image.flags.writeable:
            image = image.astype(np.float32)
        image_t = torch.from_numpy(np.ascontiguousarray(image))
        target_t = torch.from_numpy(target.astype(np.int64))
        return image_t, target_t

    def __repr__(self) -> str:
        return "ToTensor()"


def mean_fill(mean: Sequence[float]) -> list[int]:
    """The uint8 colour that normalizes to zero: crop padding then looks like 'no signal'."""
    return [int(round(m * 255)) for m in mean]


def train_preset(
    crop_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale_range: Sequence[float] = (0.75, 1.75),
    hflip_prob: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
    base_size: Sequence[int] | None = None,
) -> Compose:
    """Paper augmentation (Sec. 4): random resize 0.75..1.75, random crop to a fixed size (padded
    with the mean colour / ignore), random horizontal flip, mean/std normalization, tensors.
    ``base_size`` first resizes every sample to a fixed (H, W), e.g. for low-resolution runs."""
    steps: list = [Resize(base_size)] if base_size else []
    steps += [
        RandomResize(*scale_range),
        RandomCrop(crop_size, fill=mean_fill(mean), ignore_index=ignore_index),
        RandomHorizontalFlip(hflip_prob),
        Normalize(mean, std),
        ToTensor(),
    ]
    return Compose(steps)


def eval_preset(
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    base_size: Sequence[int] | None = None,
) -> Compose:
    """Deterministic evaluation pipeline: the full image, normalized, as tensors."""
    steps: list = [Resize(base_size)] if base_size else []
    return Compose(steps + [Normalize(mean, std), ToTensor()])
