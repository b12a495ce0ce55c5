"""The one image codec of the project: read/write images and labels, colour masks and overlays.

Arrays are RGB uint8 (H, W, 3) or single-channel uint8 (H, W). OpenCV does the codec work; files
are written atomically through :mod:`dfanet_core.files` (``atomic_write_bytes`` is re-exported
here for the callers that import it from this module).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .files import atomic_write_bytes

__all__ = [
    "atomic_write_bytes",
    "colorize",
    "encode_image",
    "overlay",
    "palette_array",
    "palette_to_hex",
    "read_image",
    "read_label",
    "write_image",
]

Palette = Sequence[Sequence[int]]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); grey images are expanded to three channels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image file {path} (not an image OpenCV can read)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label PNG as uint8 (H, W), values unchanged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError(f"cannot decode label file {path}")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(
            f"label file {path} must be single-channel 8-bit, "
            f"got shape {label.shape} dtype {label.dtype}"
        )
    return label


def encode_image(array: np.ndarray, suffix: str = ".png", quality: int = 95) -> bytes:
    """Encode an RGB or single-channel uint8 array to PNG/JPEG bytes."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected uint8 HxW or HxWx3 array, got {array.dtype} {array.shape}")
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, data, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {suffix}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an RGB or single-channel uint8 array atomically; the suffix picks PNG or JPEG."""
    path = Path(path)
    return atomic_write_bytes(path, encode_image(array, path.suffix or ".png"))


def palette_array(palette: Palette, size: int = 256) -> np.ndarray:
    """A (size, 3) uint8 lookup table; ids past the palette (e.g. 255 = ignore) map to black."""
    table = np.zeros((size, 3), np.uint8)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:size]
    table[: len(colours)] = colours
    return table


def colorize(mask: np.ndarray, palette: Palette) -> np.ndarray:
    """Class-id mask (H, W) -> RGB colour image through the palette."""
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) class-id mask, got shape {mask.shape}")
    return palette_array(palette)[mask.astype(np.uint8, copy=False)]


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: Palette, alpha: float = 0.5
) -> np.ndarray:
    """Blend the colour mask over an RGB image of the same size."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ")
    return cv2.addWeighted(image, 1.0 - alpha, colorize(mask, palette), alpha, 0.0)


def palette_to_hex(palette: Palette) -> list[int]:
    """[[r, g, b], ...] -> [0xRRGGBB, ...] (the ROS convention for colour parameters)."""
    return [(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in palette]
