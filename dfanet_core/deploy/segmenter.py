"""The one inference entry point: images in, class-id masks at each image's own resolution out.

    seg = Segmenter.from_checkpoint("weights/dfanet_a_camvid.safetensors")   # backend='auto'
    mask = seg.predict(rgb)                                  # HxW uint8, same size as rgb
    res = seg.predict_detailed([a, b], channel_order="BGR", confidence=True)
    res.masks, res.confidences, res.timings_ms               # per-stage milliseconds

Pipeline per call: validate -> place (stretch or letterbox) + resize + normalize (on the backend's
device) -> backend inference -> output head on the device (argmax, confidence and the
``min_confidence`` threshold; inside the exported graph for ONNX Runtime and TensorRT; at the
resolution ``RuntimeOptions.head`` picks) -> one nearest-neighbour resize from the head's output
to each image's size (the letterbox cropped on the way) -> numpy. Lists of any sizes are run in
batches of ``max_batch_size``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import imaging
from .backends import Backend, make_backend
from .options import RuntimeOptions, check_min_confidence
from .preprocess import (
    Placement,
    check_channel_order,
    check_resize_mode,
    plan_placement,
    preprocess_numpy,
    preprocess_torch,
    restore_numpy,
    restore_torch,
    validate_images,
)

LOG = logging.getLogger(__name__)

STAGES = ("preprocess", "inference", "postprocess", "total")


@dataclass
class SegmentationResult:
    """Masks (HxW uint8 class ids) at each input's size, optional confidences (HxW float32 in
    [0, 1], max softmax probability), optional colour overlays (HxWx3 RGB) and stage timings
    (ms)."""

    masks: list[np.ndarray]
    confidences: list[np.ndarray] | None
    timings_ms: dict[str, float]
    overlays: list[np.ndarray] | None = field(default=None)


class Segmenter:
    """Segment images with any backend; see the module docstring. Build one with :meth:`load`
    (a path and :class:`RuntimeOptions`), :meth:`from_checkpoint` or :meth:`from_onnx` (keyword
    arguments)."""

    def __init__(self, backend: Backend, meta: dict[str, Any], *, resize_mode: str = "stretch"):
        self.backend = backend
        self.meta = dict(meta)
        self.resize_mode = check_resize_mode(resize_mode)
        self.last_timings_ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._input_buffer: np.ndarray | None = None  # reused network input (numpy backends)
        self._lock = threading.Lock()  # one call at a time uses the buffer (and the backend)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], options: RuntimeOptions = RuntimeOptions()
    ) -> Segmenter:
        """A Segmenter for a dfanet checkpoint (.safetensors) or ONNX export (.onnx), run as
        ``options`` say (see :func:`dfanet_core.deploy.backends.make_backend`)."""
        backend = make_backend(path, options)
        return cls(backend, backend.meta, resize_mode=options.resize_mode)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], **keywords: Any) -> Segmenter:
        """A Segmenter for a dfanet checkpoint; ``keywords`` are the fields of
        :class:`~dfanet_core.deploy.options.RuntimeOptions` (``backend='auto'``,
        ``input_size=None`` = ``meta['input_size']``, ``precision='fp32'``,
        ``resize_mode='stretch'``, ``device``, ``engine_cache_dir``, ``onnx_cache_dir``,
        ``max_batch_size=1``, ``intra_op_threads``, ``cuda_graphs``, ``channels_last``) plus the
        TensorRT ones (``workspace_mib``, ``calibration_images``, ``calibration_cache``,
        ``force_rebuild``).

        ONNX Runtime and TensorRT run the checkpoint's classes-head ONNX export, cached in
        ``onnx_cache_dir`` (default ``~/.cache/dfanet/onnx``, keyed by checkpoint sha256, input
        size, batch and precision); TensorRT engines are cached in ``engine_cache_dir`` (default
        ``~/.cache/dfanet/engines``). ``max_batch_size`` > 1 exports a dynamic batch.
        """
        options = RuntimeOptions.from_keywords(**keywords)
        backend = make_backend(path, options, onnx=False)
        return cls(backend, backend.meta, resize_mode=options.resize_mode)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike[str], **keywords: Any) -> Segmenter:
        """A Segmenter for a dfanet ONNX export (either head); its metadata supplies the classes,
        palette, normalization and input size. Backends: onnxruntime or tensorrt. ``keywords``
        as for :meth:`from_checkpoint` (``precision`` defaults to the export's)."""
        options = RuntimeOptions.from_keywords(**keywords)
        backend = make_backend(path, options, onnx=True)
        return cls(backend, backend.meta, resize_mode=options.resize_mode)

    # -- properties -----------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def input_size(self) -> tuple[int, int]:
        return self.backend.input_size

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.meta["palette"]]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def describe(self) -> dict[str, Any]:
        """Backend, device, precision, input size, resize mode, variant: for logs/diagnostics."""
        return {
            **self.backend.describe(),
            "resize_mode": self.resize_mode,
            "variant": self.meta.get("variant"),
        }

    # -- inference ------------------------------------------------------------------------------

    def predict(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        channel_order: str = "RGB",
        *,
        min_confidence: float = 0.0,
    ) -> np.ndarray | list[np.ndarray]:
        """Class-id mask(s), HxW uint8 at each input's resolution: one array for one image, a list
        for a list. Pixels whose top-class probability is below ``min_confidence`` (0-1; 0: off)
        are 255 ("no prediction")."""
        masks = self.predict_detailed(
            images, channel_order=channel_order, min_confidence=min_confidence
        ).masks
        return masks[0] if isinstance(images, np.ndarray) else masks

    def predict_detailed(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        channel_order: str = "RGB",
        confidence: bool = False,
        overlay: bool = False,
        overlay_alpha: float = 0.5,
        *,
        min_confidence: float = 0.0,
    ) -> SegmentationResult:
        """Masks plus optional confidences and colour overlays (RGB, over the input image) and the
        per-stage timings of this call (also kept in :attr:`last_timings_ms`). Pixels whose
        top-class probability is below ``min_confidence`` (0-1; 0: off) are 255 in the masks
        (computed on the backend's device with the argmax; black in overlays)."""
        started = time.perf_counter()
        threshold = check_min_confidence(min_confidence)
        batch = validate_images(images)
        order = check_channel_order(channel_order)
        timings = dict.fromkeys(STAGES, 0.0)
        masks: list[np.ndarray] = []
        confidences: list[np.ndarray] | None = [] if confidence else None
        step = self.backend.max_batch_size
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            with self._lock:
                chunk_masks, chunk_conf = self._run_chunk(
                    chunk, order, confidence, threshold, timings
                )
            masks.extend(chunk_masks)
            if confidences is not None:
                confidences.extend(chunk_conf)
        overlays = None
        if overlay:
            tick = time.perf_counter()
            overlays = [
                self.overlay(image, mask, overlay_alpha, order)
                for image, mask in zip(batch, masks)
            ]
            timings["postprocess"] += _ms(tick)
        timings["total"] = _ms(started)
        self.last_timings_ms = timings
        return SegmentationResult(masks, confidences, timings, overlays)

    def _run_chunk(
        self,
        images: list[np.ndarray],
        order: str,
        confidence: bool,
        min_confidence: float,
        timings: dict[str, float],
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        meta = self.meta
        places = [plan_placement(im.shape[:2], self.input_size, self.resize_mode) for im in images]
        tick = time.perf_counter()
        if self.backend.uses_torch:
            batch = preprocess_torch(
                images,
                places,
                self.input_size,
                meta["mean"],
                meta["std"],
                order,
                self.backend.device,
            )
        else:
            batch = preprocess_numpy(
                images, places, self.input_size, meta["mean"], meta["std"], order,
                out=self._input_buffer,
            )
            self._input_buffer = batch
        self.backend.synchronize()
        timings["preprocess"] += _ms(tick)
        tick = time.perf_counter()
        ids, conf = self.backend.infer(batch, confidence, min_confidence)
        self.backend.synchronize()
        timings["inference"] += _ms(tick)
        tick = time.perf_counter()
        masks, confs = _restore(ids, conf, places, self.input_size)
        timings["postprocess"] += _ms(tick)
        return masks, confs

    def warmup(self, iterations: int = 2) -> None:
        """Run a few dummy images at the network size (first-call allocations, cuDNN tuning)."""
        dummy = np.zeros((*self.input_size, 3), np.uint8)
        for _ in range(iterations):
            self.predict_detailed([dummy] * self.backend.max_batch_size, confidence=True)

    # -- colour helpers -------------------------------------------------------------------------

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """Class-id mask -> RGB colour image through the checkpoint palette."""
        return imaging.colorize(mask, self.palette)

    def overlay(
        self, image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, channel_order: str = "RGB"
    ) -> np.ndarray:
        """The colour mask blended over ``image``, returned in the image's ``channel_order``."""
        order = check_channel_order(channel_order)
        rgb = image[:, :, ::-1] if order == "BGR" else image
        blended = imaging.overlay(np.ascontiguousarray(rgb), mask, self.palette, alpha)
        return np.ascontiguousarray(blended[:, :, ::-1]) if order == "BGR" else blended

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Segmenter({self.meta.get('variant')}, backend={self.backend_name}, "
            f"precision={self.precision}, input_size={self.input_size}, "
            f"resize_mode={self.resize_mode})"
        )


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


def _restore(
    ids: np.ndarray | torch.Tensor,
    conf: np.ndarray | torch.Tensor | None,
    places: list[Placement],
    network_hw: tuple[int, int],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Head outputs (any head resolution) -> per-image numpy maps at source size, one nearest
    resize each (on the device for tensors)."""
    masks, confs = [], []
    restore = restore_torch if isinstance(ids, torch.Tensor) else restore_numpy
    for index, place in enumerate(places):
        masks.append(restore(ids[index], place, network_hw))
        if conf is not None:
            confs.append(restore(conf[index], place, network_hw))
    if masks and isinstance(masks[0], torch.Tensor):
        masks = [m.cpu().numpy() for m in masks]
        confs = [c.float().cpu().numpy() for c in confs]
    return masks, confs
