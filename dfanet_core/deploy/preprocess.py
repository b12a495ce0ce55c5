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
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Resize (bilinear), normalize and place images into an N x 3 x H x W float32 array:
    ``out`` when it has that shape (a buffer reused across calls: no page faults on a fresh 6 MB
    array per frame), else a new one."""
    scale, bias = normalization(mean, std)
    channels = _channel_index(channel_order)
    shape = (len(images), 3, *network_hw)
    if out is None or out.shape != shape or out.dtype != np.float32:
        batch = np.zeros(shape, np.float32)
    else:
        batch = out
        if any((p.height, p.width) != tuple(network_hw) for p in placements):
            batch.fill(0.0)  # letterbox padding = the mean, 0 after normalization
    for index, (image, place) in enumerate(zip(images, placements)):
        if image.shape[:2] != (place.height, place.width):
            image = cv2.resize(image, (place.width, place.height), interpolation=cv2.INTER_LINEAR)
        region = batch[
            index, :, place.top : place.top + place.height, place.left : place.left + place.width
        ]
        planes = cv2.split(image)  # contiguous planes: the arithmetic below streams
        for out_c, src_c in enumerate(channels):
            region[out_c] = planes[src_c]
            region[out_c] *= scale[out_c]
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


def map_indices(
    map_len: int, network_len: int, offset: int, extent: int, target_len: int
) -> np.ndarray:
    """Index into a head output of ``map_len`` cells (covering ``network_len`` network pixels)
    for each of ``target_len`` source pixels placed at ``offset .. offset + extent`` of the
    network input: the source pixel centre ``offset + (i + 0.5) * extent / target`` in network
    pixels, scaled to the map and floored, in integer maths. One nearest-neighbour resize from
    any head resolution to the source size; with ``map_len == network_len`` it is the letterbox
    crop followed by :func:`nearest_indices`."""
    target = np.arange(target_len, dtype=np.int64)
    numerator = (2 * offset * target_len + (2 * target + 1) * extent) * map_len
    return numerator // (2 * target_len * network_len)


def _restore_indices(
    map_hw: tuple[int, int], network_hw: tuple[int, int] | None, place: Placement
) -> tuple[np.ndarray, np.ndarray]:
    net_h, net_w = network_hw or map_hw
    rows = map_indices(map_hw[0], net_h, place.top, place.height, place.source_height)
    cols = map_indices(map_hw[1], net_w, place.left, place.width, place.source_width)
    return rows, cols


def restore_numpy(
    head_map: np.ndarray, place: Placement, network_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """A head's HxW output map (mask or confidence) resized to the source image with one nearest
    neighbour gather; ``network_hw`` is the network input size the map covers (None: the map's
    own size, i.e. a full-resolution head). The letterbox padding is cropped on the way."""
    rows, cols = _restore_indices(tuple(head_map.shape[:2]), network_hw, place)
    # Two 1-D np.take gathers: same result as head_map[rows[:, None], cols[None, :]]; ~3-4x
    # faster than fancy indexing (measured 0.45 vs 2.0 ms for 512x1024 from 256x512).
    return np.take(np.take(head_map, rows, axis=0), cols, axis=1)


def restore_torch(
    head_map: torch.Tensor, place: Placement, network_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """:func:`restore_numpy` on a torch tensor, on its device."""
    rows, cols = _restore_indices(tuple(head_map.shape[:2]), network_hw, place)
    device = head_map.device
    rows_t = torch.from_numpy(rows).to(device)
    cols_t = torch.from_numpy(cols).to(device)
    return head_map.index_select(0, rows_t).index_select(1, cols_t)
