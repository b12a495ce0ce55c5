"""INT8 calibration for the full TensorRT 10: real images -> preprocessed batches -> an entropy
calibrator whose device buffer is a torch CUDA tensor; the calibration cache is read back on later
builds (then no images are needed) and written atomically.

Image sources follow the usual deployment parameters (``calibration_image_list_path``/folder): a
folder of images, a .txt file listing image paths, or a list of paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ...files import IMAGE_SUFFIXES, atomic_write_bytes, list_images
from ..preprocess import plan_placement, preprocess_numpy
from .api import TensorRTInfo

if TYPE_CHECKING:
    from .builder import BuildOptions, InputProfile

LOG = logging.getLogger(__name__)

#: Used only when an ONNX carries no dfanet normalization metadata.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def calibration_image_paths(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """Resolve a folder, a .txt list file or a list of paths into existing image paths.

    Raises FileNotFoundError naming the source when it is missing or yields no image."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_dir():
            try:
                paths = list_images(root)
            except ValueError:  # no image there: reported below
                paths = []
        elif root.is_file() and root.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in root.read_text().splitlines()]
            paths = [(root.parent / ln) for ln in lines if ln and not ln.startswith("#")]
        else:
            raise FileNotFoundError(
                f"calibration images: {root} is neither a folder nor a .txt list of image paths"
            )
    else:
        paths = [Path(p) for p in source]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"calibration images not found: {missing[:5]}")
    if not paths:
        raise FileNotFoundError(
            f"no calibration images ({', '.join(IMAGE_SUFFIXES)}) in {source}"
        )
    return paths


def images_fingerprint(paths: Sequence[Path]) -> str:
    """A hash of the image list (names, sizes, mtimes): enters the engine cache key for INT8."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(json.dumps([path.name, stat.st_size, int(stat.st_mtime)]).encode())
    return digest.hexdigest()


def onnx_normalization(onnx_path: Path) -> tuple[list[float], list[float]]:
    """(mean, std) recorded by the dfanet exporter, else ImageNet's with a warning."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "dfanet.mean" in props and "dfanet.std" in props:
        return json.loads(props["dfanet.mean"]), json.loads(props["dfanet.std"])
    LOG.warning("%s has no dfanet mean/std metadata; calibrating with ImageNet's", onnx_path)
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def calibration_batches(
    paths: Sequence[Path],
    input_hw: tuple[int, int],
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Iterator[np.ndarray]:
    """Full batches of preprocessed images (stretch resize, the Segmenter's normalization); a
    trailing partial batch is dropped (the calibrator's batch size is fixed)."""
    from ...imaging import read_image

    for start in range(0, len(paths) - batch_size + 1, batch_size):
        images = [read_image(p) for p in paths[start : start + batch_size]]
        places = [plan_placement(im.shape[:2], input_hw, "stretch") for im in images]
        yield preprocess_numpy(images, places, input_hw, mean, std)


def make_entropy_calibrator(
    info: TensorRTInfo, options: BuildOptions, profile: InputProfile, onnx_path: Path
) -> object:
    """An ``IInt8EntropyCalibrator2`` fed from ``options.calibration_images`` (or the cache)."""
    import torch

    trt = info.module
    cache_path = options.calibration_cache
    has_cache = cache_path is not None and Path(cache_path).is_file()
    if not options.calibration_images and not has_cache:
        raise ValueError(
            "precision int8 needs calibration images (--calibration-images) or an existing "
            "calibration cache (--calibration-cache)"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            "INT8 calibration runs the network on the GPU; torch sees no CUDA device"
        )
    batch_size = profile.opt[0] if not profile.is_static else profile.max[0]
    input_hw = (profile.max[2], profile.max[3])
    paths = list(options.calibration_images or ())[: options.calibration_max_images]
    mean, std = onnx_normalization(onnx_path)
    batches = calibration_batches(paths, input_hw, batch_size, mean, std)
    device = torch.device("cuda", torch.cuda.current_device())

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.buffer: torch.Tensor | None = None  # kept alive while TensorRT reads it
            self.count = 0

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(batches, None)
            if batch is None:
                LOG.info("calibration used %d batches of %d", self.count, batch_size)
                return None
            self.buffer = torch.from_numpy(batch).to(device)
            torch.cuda.current_stream(device).synchronize()
            self.count += 1
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path is not None and Path(cache_path).is_file():
                LOG.info("using calibration cache %s", cache_path)
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache: object) -> None:
            if cache_path is not None:
                atomic_write_bytes(cache_path, bytes(cache))
                LOG.info("wrote calibration cache %s", cache_path)

    return _EntropyCalibrator()
