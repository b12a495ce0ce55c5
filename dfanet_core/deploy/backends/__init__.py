"""Inference backends behind one interface (:class:`Backend`): ``onnxruntime`` (CPU), ``torch``
(CPU/CUDA) and ``tensorrt`` (NVIDIA GPU). Backend modules import their runtime lazily, so a missing
runtime only matters when that backend is asked for, and then the error names what to install."""

from __future__ import annotations

import importlib.util
import logging

import torch

from .base import Backend, BackendUnavailableError, classes_from_logits

LOG = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch", "tensorrt")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "classes_from_logits",
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
