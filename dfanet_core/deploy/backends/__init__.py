"""Inference backends behind one interface (:class:`Backend`): ``onnxruntime`` (CPU), ``torch``
(CPU/CUDA) and ``tensorrt`` (NVIDIA GPU), and the one factory that builds them,
:func:`make_backend` (used by the Segmenter and the benchmark). Backend modules import their
runtime lazily, so a missing runtime only matters when that backend is asked for, and then the
error names what to install."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from ..options import BACKENDS as _CHOICES
from ..options import RuntimeOptions
from .base import Backend, BackendUnavailableError, apply_min_confidence, classes_from_logits

LOG = logging.getLogger(__name__)

#: The concrete backends (``auto`` resolves to one of them).
BACKENDS = _CHOICES[1:]

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "apply_min_confidence",
    "classes_from_logits",
    "make_backend",
    "onnxruntime_available",
    "resolve_backend",
    "tensorrt_usable",
]


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def tensorrt_usable() -> bool:
    """TensorRT imports, torch sees a CUDA GPU, and (TensorRT for RTX) it supports that GPU."""
    from ..tensorrt.api import load_tensorrt, rtx_supports_device, tensorrt_available

    if not tensorrt_available() or not torch.cuda.is_available():
        return False
    capability = torch.cuda.get_device_capability()
    return rtx_supports_device(load_tensorrt(), capability)


def resolve_backend(name: str, device: str | torch.device | None = None) -> str:
    """Map ``auto`` to a concrete backend and validate explicit names.

    auto: TensorRT when it imports and a CUDA GPU it supports exists; else PyTorch on CUDA when a
    GPU
    exists (ONNX Runtime here is CPU-only and far slower than the GPU); else ONNX Runtime on the
    CPU
    (PyTorch if onnxruntime is not installed). ``device='cpu'`` restricts auto to the CPU backends.
    """
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}")
        return name
    wants_cpu = device is not None and torch.device(device).type == "cpu"
    if not wants_cpu and tensorrt_usable():
        return "tensorrt"
    if not wants_cpu and torch.cuda.is_available():
        return "torch"
    if onnxruntime_available():
        return "onnxruntime"
    LOG.warning(
        "onnxruntime is not installed (`pip install onnxruntime`); using PyTorch on the CPU"
    )
    return "torch"


def make_backend(
    source: str | os.PathLike[str],
    options: RuntimeOptions = RuntimeOptions(),
    *,
    onnx: bool | None = None,
) -> Backend:
    """The backend ``options`` ask for, running ``source``: a dfanet checkpoint (.safetensors) or
    a dfanet ONNX export (``onnx``: None decides by the ``.onnx`` suffix). The backend carries the
    model's metadata (:attr:`Backend.meta`).

    From a checkpoint, ONNX Runtime and TensorRT run its classes-head ONNX export, cached in
    ``options.onnx_cache_dir`` (keyed by checkpoint sha256, input size, batch, precision and
    head); every backend runs ``options.head`` (dfanet_core.deploy.heads). TensorRT engines are
    cached in ``options.engine_cache_dir``. A ``max_batch_size`` above 1 exports a dynamic batch
    (TensorRT profile 1..max_batch_size). An ONNX file fixes its own input size, batch and head
    and cannot run on the torch backend (``auto`` then means ONNX Runtime where TensorRT is not
    usable).
    """
    path = Path(source)
    is_onnx = path.suffix.lower() == ".onnx" if onnx is None else onnx
    name = resolve_backend(options.backend, options.device)
    if options.compile_mode is not None and name != "torch":
        raise ValueError(
            f"compile_mode {options.compile_mode!r} needs the torch backend; backend "
            f"{options.backend!r} resolved to {name!r} here (set backend='torch')"
        )
    if is_onnx:
        return _onnx_backend(path, name, options)
    return _checkpoint_backend(path, name, options)


def _checkpoint_backend(path: Path, name: str, options: RuntimeOptions) -> Backend:
    from ...checkpoint import load_checkpoint, read_checkpoint
    from ..export import cached_onnx_export
    from ..heads import HEAD_RESOLUTION_OF
    from ..options import BACKEND_PRECISIONS, check_input_size

    _, meta = read_checkpoint(path)
    size = options.input_size or check_input_size(meta["input_size"])
    batch = options.max_batch_size or 1
    resolution = HEAD_RESOLUTION_OF[options.head]
    if name == "torch":
        from .torch_backend import TorchBackend

        model, meta = load_checkpoint(path)
        return TorchBackend(
            model,
            input_size=size,
            device=options.device,
            precision=options.require_precision(name, "fp32", BACKEND_PRECISIONS[name]),
            channels_last=options.channels_last,
            cuda_graphs=options.cuda_graphs,
            compile_mode=options.compile_mode,
            head_resolution=resolution,
            max_batch_size=batch,
            meta=meta,
        )
    precision = options.require_precision(name, "fp32", BACKEND_PRECISIONS[name])
    export_precision = _tensorrt_onnx_precision(precision) if name == "tensorrt" else "fp32"
    onnx_path = cached_onnx_export(
        path, size, batch, export_precision, options.onnx_cache_dir,
        head_resolution=resolution,
        # ONNX Runtime thresholds inside the graph (the TensorRT builder takes one input) and
        # gets the graph shaped for its blocked CPU layout (deploy.cpu_layout).
        min_confidence_input=name == "onnxruntime",
        cpu_layout=name == "onnxruntime",
    )  # fmt: skip
    if name == "onnxruntime":
        return _ort_backend(onnx_path, batch, options)
    return _tensorrt_backend(onnx_path, precision, batch, options)


def _ort_backend(onnx_path: Path, batch: int | None, options: RuntimeOptions) -> Backend:
    from .ort_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        onnx_path,
        intra_op_threads=options.intra_op_threads,
        max_batch_size=batch,
        optimization=options.ort_optimization,
        spinning=options.ort_spinning,
        io_binding=options.io_binding,
    )


def _onnx_backend(path: Path, name: str, options: RuntimeOptions) -> Backend:
    from ..export import read_onnx_info

    info = read_onnx_info(path)
    if options.input_size is not None and tuple(options.input_size) != info.input_size:
        raise ValueError(
            f"input_size {tuple(options.input_size)} asked for, but {path} was exported for "
            f"{info.input_size}: an ONNX file fixes its own input size"
        )
    if name == "torch":
        if options.backend == "torch":
            raise ValueError("the torch backend needs a checkpoint; use from_checkpoint")
        name = "onnxruntime"
    if name == "onnxruntime":
        options.require_precision(name, "fp32", ("fp32", info.precision))
        return _ort_backend(path, options.max_batch_size, options)
    precision = options.precision or info.precision
    return _tensorrt_backend(path, precision, options.max_batch_size or 1, options)


def _tensorrt_backend(
    onnx_path: Path, precision: str, max_batch_size: int, options: RuntimeOptions
) -> Backend:
    from ...files import default_cache_dir
    from ..tensorrt.builder import BuildOptions, resolve_calibration_images
    from .tensorrt_backend import TensorRTBackend

    trt = options.tensorrt
    cache_dir = options.engine_cache_dir or default_cache_dir("engines")
    build = BuildOptions(
        precision=precision,
        workspace_mib=trt.workspace_mib,
        max_batch_size=max_batch_size,
        timing_cache=cache_dir / "timing.cache",
        calibration_images=(
            resolve_calibration_images(trt.calibration_images)
            if trt.calibration_images is not None
            else None
        ),
        calibration_cache=trt.calibration_cache
        or cache_dir / f"{onnx_path.stem}.calibration.cache",
    )
    engine_path = cache_dir / f"{onnx_path.stem}.{precision}.engine"
    return TensorRTBackend(
        onnx_path,
        engine_path,
        options=build,
        device=options.device,
        force_rebuild=trt.force_rebuild,
        progress=trt.progress,
    )


def _tensorrt_onnx_precision(precision: str) -> str:
    """fp16 engines come from an fp16 ONNX where the TensorRT has no FP16 builder flag (RTX)."""
    if precision != "fp16":
        return "fp32"
    from ..tensorrt.api import load_tensorrt

    try:
        return "fp32" if load_tensorrt().has_fp16_flag else "fp16"
    except ImportError as exc:
        raise BackendUnavailableError(str(exc)) from None
