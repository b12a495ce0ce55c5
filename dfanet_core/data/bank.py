"""A decoded training set held as uint8 tensors, and the batches of indices drawn from it.

Decoding PNG/JPEG and augmenting in DataLoader workers starved an H200 (4.7 iterations/s at
batch 48). :class:`ImageBank` decodes a dataset once (CamVid train+val at 480x360: 468 images,
~240 MB) and keeps it on the training device; :class:`EpochSampler` draws the sample indices of
every iteration on that device too, so a training step never waits for the host.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import torch

from .datasets import DatasetError, SegmentationDataset


class ImageBank:
    """Images (N, 3, H, W) and train-id labels (N, H, W), both uint8, on one device.

    All images must share one size (CamVid: 360x480; Cityscapes: 1024x2048); ``size`` resizes
    every pair first (bilinear images, nearest labels), e.g. for low-resolution runs.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: list[str]):
        if images.dtype != torch.uint8 or labels.dtype != torch.uint8:
            raise ValueError("an ImageBank holds uint8 images and labels")
        if images.shape[0] != labels.shape[0] or images.shape[2:] != labels.shape[1:]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} "
                             "differ in count or size")  # fmt: skip
        self.images, self.labels, self.names = images, labels, list(names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        h, w = self.image_size
        return f"ImageBank({len(self)} pairs of {h}x{w} on {self.device})"

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def nbytes(self) -> int:
        return self.images.numel() + self.labels.numel()

    @classmethod
    def from_dataset(
        cls, dataset: SegmentationDataset, size: tuple[int, int] | None = None
    ) -> ImageBank:
        """Decode (and validate) every pair of ``dataset``; errors name the file."""
        if len(dataset) == 0:
            raise DatasetError(f"{dataset!r} is empty")
        images, labels = [], []
        first_size = None
        for index in range(len(dataset)):
            image, label = dataset.load(index)
            if size is not None and image.shape[:2] != tuple(size):
                h, w = size
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
                label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
            if first_size is None:
                first_size = image.shape[:2]
            elif image.shape[:2] != first_size:
                raise DatasetError(
                    f"image {dataset.pairs[index][0]} is {image.shape[1]}x{image.shape[0]}, the "
                    f"first one {first_size[1]}x{first_size[0]}: an ImageBank needs one size "
                    "(pass a base size to resize them all)"
                )
            images.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
            labels.append(torch.from_numpy(np.ascontiguousarray(label)))
        return cls(torch.stack(images), torch.stack(labels), dataset.stems)

    def to(self, device: torch.device | str) -> ImageBank:
        return ImageBank(self.images.to(device), self.labels.to(device), self.names)

    def batch(
        self, indices: torch.Tensor, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels at ``indices``, moved to ``device`` if given."""
        indices = indices.to(self.device)
        images, labels = self.images[indices], self.labels[indices]
        if device is not None and torch.device(device) != self.device:
            if torch.device(device).type == "cuda":
                images, labels = images.pin_memory(), labels.pin_memory()
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
        return images, labels


def load_bank(
    dataset: SegmentationDataset,
    device: torch.device | str = "cpu",
    size: tuple[int, int] | None = None,
    log=None,
) -> ImageBank:
    """Decode ``dataset`` into an :class:`ImageBank` on ``device``, logging what it took."""
    start = time.monotonic()
    bank = ImageBank.from_dataset(dataset, size).to(device)
    if log is not None:
        log.info("decoded %r: %.0f MB in %.1f s", bank, bank.nbytes / 1e6,
                 time.monotonic() - start)  # fmt: skip
    return bank


class EpochSampler:
    """Sample indices of every training iteration: consecutive epochs, each a random
    permutation of ``(seed, epoch)``, cut into global batches; rank ``r`` of ``world_size``
    takes the ``r``-th slice of each global batch. The indices of iteration ``i`` depend only
    on ``(seed, i, batch sizes)``, so a resumed run draws exactly what the uninterrupted one
    would. Permutations are drawn on ``device`` and cached two at a time."""

    def __init__(self, num_samples: int, seed: int = 0, device: torch.device | str = "cpu"):
        if num_samples < 1:
            raise ValueError("EpochSampler needs at least one sample")
        self.num_samples = num_samples
        self.seed = int(seed)
        self.device = torch.device(device)
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 1:
                self._cache.pop(min(self._cache))
            generator = torch.Generator(device=self.device)
            generator.manual_seed(self.seed * 7_919 + epoch)
            self._cache[epoch] = torch.randperm(
                self.num_samples, generator=generator, device=self.device
            )
        return self._cache[epoch]

    def indices(self, position: int, count: int) -> torch.Tensor:
        """The ``count`` indices at stream positions ``position .. position + count - 1``."""
        parts, n = [], self.num_samples
        while count > 0:
            epoch, offset = divmod(position, n)
            take = min(count, n - offset)
            parts.append(self.permutation(epoch)[offset : offset + take])
            position, count = position + take, count - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def batch(self, position: int, global_batch: int, rank: int = 0, world_size: int = 1):
        """Rank ``rank``'s share of the global batch that starts at stream ``position``."""
        per_rank = global_batch // world_size
        return self.indices(position + rank * per_rank, per_rank)
