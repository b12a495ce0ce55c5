"""Image -> network input and network mask -> image-sized mask, on the CPU (numpy/OpenCV) or on a
torch device. Both paths place images the same way and map pixels back with the same integer
nearest-neighbour rule, so masks from a CPU and a GPU backend differ only where the logits do.

Resize modes:
    ``stretch``    resize each image to the network input, ignoring its aspect ratio;
    ``letterbox``  keep the aspect ratio, scale to fit, centre it and pad the rest with the
                   normalization mean (0 after normalization); masks are cropped back before
                   resizing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .options import RESIZE_MODES

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Placement:
    """Where one source image sits inside the network input (rows ``top:top+height``, columns
    ``left:left+width``), and the source size to map the mask back to."""

    source_height: int
    source_width: int
    top: int
    left: int
    height: int
    width: int


def validate_images(images: object) -> list[np.ndarray]:
    """Return the input as a non-empty list of HxWx3 uint8 arrays, or raise ValueError saying what
    was expected. Accepts one array or a list/tuple of arrays (sizes may differ)."""
    if isinstance(images, np.ndarray):
        batch = [images]
    elif isinstance(images, (list, tuple)):
        batch = list(images)
    else:
        raise ValueError(
            f"expected an HxWx3 uint8 numpy image or a list of them, got {type(images).__name__}"
        )
    if not batch:
        raise ValueError("expected at least one image, got an empty list")
    for index, image in enumerate(batch):
        _validate_one(image, index)
    return batch


def _validate_one(image: object, index: int) -> None:
    where = f"image {index}"
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{where}: expected an HxWx3 uint8 numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: expected dtype uint8 (0..255 pixels), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{where}: expected shape (H, W, 3) with 3 colour channels, got {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where}: expected a non-empty image, got shape {image.shape}")


def check_channel_order(channel_order: str) -> str:
    """Return ``channel_order`` upper-cased if it is RGB or BGR, else raise ValueError."""
    order = str(channel_order).upper()
    if order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    return order


def check_resize_mode(resize_mode: str) -> str:
    """Return ``resize_mode`` if valid, else raise ValueError naming the valid modes."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    return resize_mode


def plan_placement(
    source_hw: tuple[int, int], network_hw: tuple[int, int], resize_mode: str
) -> Placement:
    """Where an image of ``source_hw`` goes in a ``network_hw`` input for ``resize_mode``."""
    src_h, src_w = source_hw
    net_h, net_w = network_hw
    if resize_mode == "stretch":
        return Placement(src_h, src_w, 0, 0, net_h, net_w)
    check_resize_mode(resize_mode)
    scale = min(net_h / src_h, net_w / src_w)
    height = min(net_h, max(1, round(src_h * scale)))
    width = min(net_w, max(1, round(src_w * scale)))
    return Placement(src_h, src_w, (net_h - height) // 2, (net_w - width) // 2, height, width)


def _channel_index(channel_order: str) -> list[int]:
    """Source channel for each RGB network channel."""
    return [0, 1, 2] if channel_order == "RGB" else [2, 1, 0]


def normalization(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, bias): ``pixel_uint8 * scale + bias`` = ``(pixel/255 - mean)/std``."""
    mean_arr = np.asarray(mean, np.float32).reshape(3)
    std_arr = np.asarray(std, np.float32).reshape(3)
    return 1.0 / (255.0 * std_arr), -mean_arr / std_arr


def preprocess_numpy(
    images: Sequence[np.ndarray],
    placements: Sequence[Placement],
    network_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    channel_order: str = "RGB",
) -> np.ndarray:
    """Resize (bilinear), normalize and place images into an N x 3 x H x W float32 array."""
    scale, bias = normalization(mean, std)
    channels = _channel_index(channel_order)
    batch = np.zeros((len(images), 3, *network_hw), np.float32)
    for index, (image, place) in enumerate(zip(images, placements)):
        if image.shape[:2] != (place.height, place.width):
            image = cv2.resize(image, (place.width, place.height), interpolation=cv2.INTER_LINEAR)
        region = batch[
            index, :, place.top : place.top + place.height, place.left : place.left + place.width
        ]
        for out_c, src_c in enumerate(channels):
            np.multiply(image[:, :, src_c], scale[out_c], out=region[out_c], casting="unsafe")
            region[out_c] += bias[out_c]
    return batch


def preprocess_torch(
    images: Sequence[np.ndarray],
    placements: Sequence[Placement],
    network_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    channel_order: str,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The same as :func:`preprocess_numpy`, computed on ``device``: uint8 pixels are uploaded and
    resized/normalized there (less host work and a 4x smaller transfer than float32)."""
    scale_np, bias_np = normalization(mean, std)
    scale = torch.as_tensor(scale_np, device=device).view(3, 1, 1)
    bias = torch.as_tensor(bias_np, device=device).view(3, 1, 1)
    channels = _channel_index(channel_order)
    batch = torch.zeros((len(images), 3, *network_hw), dtype=torch.float32, device=device)
    for index, (image, place) in enumerate(zip(images, placements)):
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
        chw = pixels.permute(2, 0, 1)[channels].float()
        if image.shape[:2] != (place.height, place.width):
            chw = F.interpolate(
                chw[None], size=(place.height, place.width), mode="bilinear", align_corners=False
            )[0]
        batch[
            index, :, place.top : place.top + place.height, place.left : place.left + place.width
        ] = chw * scale + bias
    return batch.to(dtype)


def nearest_indices(source_len: int, target_len: int) -> np.ndarray:
    """Source index for each of ``target_len`` outputs: pixel centres mapped with integer maths
    (``floor((i + 0.5) * source / target)``), identical on every backend."""
    target = np.arange(target_len, dtype=np.int64)
    return ((2 * target + 1) * source_len) // (2 * target_len)


def restore_numpy(network_map: np.ndarray, place: Placement) -> np.ndarray:
    """Crop a network-sized HxW map (mask or confidence) to the image region and resize it back to
    the source size with nearest neighbour."""
    region = network_map[
        place.top : place.top + place.height, place.left : place.left + place.width
    ]
    rows = nearest_indices(place.height, place.source_height)
    cols = nearest_indices(place.width, place.source_width)
    # Two 1-D gathers: same result as region[rows[:, None], cols[None, :]], ~5x faster at 2 MP.
    return np.ascontiguousarray(region[rows][:, cols])


def restore_torch(network_map: torch.Tensor, place: Placement) -> torch.Tensor:
    """:func:`restore_numpy` on a torch tensor, on its device."""
    region = network_map[
        place.top : place.top + place.height, place.left : place.left + place.width
    ]
    device = network_map.device
    rows = torch.from_numpy(nearest_indices(place.height, place.source_height)).to(device)
    cols = torch.from_numpy(nearest_indices(place.width, place.source_width)).to(device)
    return region.index_select(0, rows).index_select(1, cols)
