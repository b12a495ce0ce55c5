"""Training augmentation of a whole batch in a few tensor ops, on whatever device holds it.

The GPU training path keeps the decoded training set on the device as uint8 tensors
(:class:`dfanet_core.data.bank.ImageBank`) and augments each batch here instead of in
DataLoader workers: one affine grid per sample (random scale, translation and horizontal flip,
fixed output crop), one ``grid_sample`` for the images (bilinear) and one for the labels
(nearest), then brightness / contrast / saturation jitter and normalization. The CPU path runs
the same code on CPU tensors, which is what the tests check.

Geometry. Sample ``n`` is the input scaled by ``s_n`` (``scale_range``) and cropped at offset
``(oy_n, ox_n)`` in the scaled frame: output pixel ``(i, j)`` shows input point
``((oy + i + 0.5) / s, (ox + j + 0.5) / s)`` in pixel-edge coordinates. When the scaled image
is larger than the crop the offset is uniform inside it; when smaller, the image lands at a
uniform position inside the crop. Out-of-frame pixels get the mean colour (0 after
normalization) in the image and ``ignore_index`` in the label. Labels are resampled with nearest
neighbour, so no class is invented at boundaries.

Randomness comes from a ``torch.Generator`` the caller seeds per iteration
(:func:`iteration_generator`), so a batch depends only on ``(seed, iteration)``: a resumed run
repeats the uninterrupted one exactly, and sampling on the device never waits for the host.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .info import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

# ITU-R BT.601 luma weights, for the saturation and contrast jitter.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """What one training stage does to a batch."""

    crop_size: tuple[int, int] = (360, 360)
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip_prob: float = 0.5
    # Photometric jitter: each factor drawn uniformly from [1 - x, 1 + x]; 0 disables it.
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    ignore_index: int = IGNORE_INDEX
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        h, w = self.crop_size
        if h < 1 or w < 1:
            raise ValueError(f"crop_size must be positive (H, W), got {self.crop_size}")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {self.hflip_prob}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} jitter must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample random draws (each a tensor of shape (N,) on the batch's device)."""

    scale: torch.Tensor
    offset_y: torch.Tensor  # crop offset in the scaled frame, pixels (may be negative: padding)
    offset_x: torch.Tensor
    flip: torch.Tensor  # bool
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor


def iteration_generator(seed: int, iteration: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` whose draws depend only on ``(seed, iteration)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed((int(seed) * 1_000_003 + int(iteration)) % (2**63 - 1))
    return generator


def sample_params(
    batch: int,
    image_size: tuple[int, int],
    config: AugmentConfig,
    generator: torch.Generator,
) -> AugmentParams:
    """Draw scale, crop offset, flip and jitter for ``batch`` samples of ``image_size``."""
    device = generator.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    scale = uniform(*config.scale_range)
    (height, width), (crop_h, crop_w) = image_size, config.crop_size
    # Room between scaled image and crop: positive -> crop inside the image, negative -> pad.
    offset_y = (height * scale - crop_h) * torch.rand(batch, generator=generator, device=device)
    offset_x = (width * scale - crop_w) * torch.rand(batch, generator=generator, device=device)
    flip = torch.rand(batch, generator=generator, device=device) < config.hflip_prob
    return AugmentParams(
        scale,
        offset_y.floor(),
        offset_x.floor(),
        flip,
        uniform(1 - config.brightness, 1 + config.brightness),
        uniform(1 - config.contrast, 1 + config.contrast),
        uniform(1 - config.saturation, 1 + config.saturation),
    )


def affine_theta(
    params: AugmentParams, image_size: tuple[int, int], crop_size: tuple[int, int]
) -> torch.Tensor:
    """(N, 2, 3) ``affine_grid`` matrices (``align_corners=False``) for the draws."""
    (height, width), (crop_h, crop_w) = image_size, crop_size
    s = params.scale
    # Normalized input coordinate = a * normalized output coordinate + b, per axis.
    a_x = crop_w / (s * width)
    b_x = (2 * params.offset_x + crop_w) / (s * width) - 1
    a_y = crop_h / (s * height)
    b_y = (2 * params.offset_y + crop_h) / (s * height) - 1
    a_x = torch.where(params.flip, -a_x, a_x)
    zero = torch.zeros_like(s)
    return torch.stack(
        [torch.stack([a_x, zero, b_x], dim=1), torch.stack([zero, a_y, b_y], dim=1)], dim=1
    )


def warp(
    images: torch.Tensor,
    labels: torch.Tensor,
    theta: torch.Tensor,
    crop_size: tuple[int, int],
    fill: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample uint8 images (N, 3, H, W) and labels (N, H, W) through ``theta``.

    Returns float32 images (0-255 scale; ``fill`` (3,) outside the frame) and int64 labels
    (``ignore_index`` outside the frame)."""
    n = images.shape[0]
    grid = F.affine_grid(theta, [n, 1, *crop_size], align_corners=False)
    fill = fill.view(1, 3, 1, 1)
    # Shift by the fill colour so that grid_sample's zero padding becomes the fill colour.
    warped = F.grid_sample(
        images.float() - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    # Labels + 1 so that zero padding marks out-of-frame pixels (every label value stays exact
    # in float32 and nearest sampling picks one source pixel).
    shifted = labels.unsqueeze(1).float() + 1
    sampled = F.grid_sample(
        shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    sampled = sampled.squeeze(1).long() - 1
    sampled = torch.where(sampled < 0, torch.full_like(sampled, ignore_index), sampled)
    return warped + fill, sampled


def photometric(
    images: torch.Tensor, params: AugmentParams, luma_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of float RGB images (0-255), clamped.
    ``luma_weights`` (1, 3, 1, 1) may be passed pre-made on the device (no host copy per call)."""
    if luma_weights is None:
        luma_weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    images = images * params.brightness.view(-1, 1, 1, 1)
    gray = (images * luma_weights).sum(dim=1, keepdim=True)
    mean_gray = gray.mean(dim=(2, 3), keepdim=True)
    contrast = params.contrast.view(-1, 1, 1, 1)
    images = mean_gray + contrast * (images - mean_gray)
    gray = contrast * (gray - mean_gray) + mean_gray
    saturation = params.saturation.view(-1, 1, 1, 1)
    images = gray + saturation * (images - gray)
    return images.clamp(0.0, 255.0)


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...] | torch.Tensor,
    std: tuple[float, ...] | torch.Tensor,
) -> torch.Tensor:
    """Float RGB 0-255 -> ``(x / 255 - mean) / std`` per channel (``mean``/``std`` on the 0-1
    scale, as tuples or as tensors already on the images' device)."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t * 255.0) / (std_t * 255.0)


class BatchAugment:
    """Callable ``(uint8 images, uint8 labels, generator) -> (normalized float, int64 labels)``
    for one :class:`AugmentConfig`."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        self._jitter = bool(config.brightness or config.contrast or config.saturation)
        # Constants per device, made once: building a tensor from a Python list on a GPU is a
        # host-to-device copy that synchronises, which a training step must not do.
        self._constants: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(fill colour 0-255 (3,), mean (3,), std (3,), luma weights (1, 3, 1, 1)) on device."""
        if device not in self._constants:
            cfg = self.config
            mean = torch.tensor(cfg.mean, dtype=torch.float32, device=device)
            std = torch.tensor(cfg.std, dtype=torch.float32, device=device)
            luma = torch.tensor(_LUMA, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self._constants[device] = (mean * 255.0, mean, std, luma)
        return self._constants[device]

    def __repr__(self) -> str:
        return f"BatchAugment({self.config})"

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
        slice_of: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch. ``slice_of=(start, global_batch)``: these samples are
        ``start..start+N-1`` of a global batch split over processes; the draws are made for the
        whole global batch, so every process augments its share exactly as one process holding
        the global batch would."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")  # fmt: skip
        if tuple(labels.shape) != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}"
            )
        cfg = self.config
        image_size = (images.shape[2], images.shape[3])
        start, total = slice_of or (0, images.shape[0])
        params = sample_params(total, image_size, cfg, generator)
        if total != images.shape[0]:
            end = start + images.shape[0]
            params = AugmentParams(*(getattr(params, f.name)[start:end] for f in fields(params)))
        theta = affine_theta(params, image_size, cfg.crop_size)
        fill, mean, std, luma = self.constants(images.device)
        warped, targets = warp(images, labels, theta, cfg.crop_size, fill, cfg.ignore_index)
        if self._jitter:
            warped = photometric(warped, params, luma)
        return normalize(warped, mean, std), targets
