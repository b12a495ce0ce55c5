"""Image classification data for backbone pretraining (paper Sec. 4.1.1): an ImageFolder
reader and the standard Inception-style training crop / centre-crop evaluation, without
torchvision (which does not install beside the pinned torch build)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import IMAGE_SUFFIXES
from ..imaging import read_image
from .datasets import DatasetError
from .transforms import Normalize


class ImageFolder(Dataset):
    """``root/<class>/<image>`` -> (image, class index); classes sorted by folder name."""

    def __init__(self, root: str | os.PathLike, transform=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder not found: {self.root} (expected root/<class>/*)")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.samples = [
            (path, index)
            for index, name in enumerate(self.classes)
            for path in sorted((self.root / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise DatasetError(
                f"no images in {self.root} (expected root/<class>/*{{{','.join(IMAGE_SUFFIXES)}}})"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = read_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, target


class RandomResizedCrop:
    """Inception-style crop: 8-100% of the area, aspect 3/4..4/3, resized to ``size``, then a
    random horizontal flip."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5):
        self.size, self.scale, self.log_ratio, self.hflip = size, scale, np.log(ratio), hflip

    def window(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        for _ in range(10):
            area = h * w * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        side = min(h, w)  # fallback: centre square
        return (h - side) // 2, (w - side) // 2, side, side

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(np.random.randint(0, 2**63 - 1))
        top, left, ch, cw = self.window(*image.shape[:2], rng)
        crop = image[top : top + ch, left : left + cw]
        crop = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return crop[:, ::-1] if rng.random() < self.hflip else crop


class ResizeCenterCrop:
    """Shorter side to ``size / 0.875``, then the central ``size`` square (standard eval)."""

    def __init__(self, size: int):
        self.size, self.resize = size, round(size / 0.875)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        scale = self.resize / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        return image[top : top + self.size, left : left + self.size]


class ClassifierTransform:
    """Geometry, then normalization to a float32 (3, H, W) tensor."""

    def __init__(self, geometry, mean: Sequence[float], std: Sequence[float]):
        self.geometry, self.normalize = geometry, Normalize(mean, std)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        image, _ = self.normalize(self.geometry(image), None)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
