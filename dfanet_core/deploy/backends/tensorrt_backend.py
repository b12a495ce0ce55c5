"""TensorRT on an NVIDIA GPU: a cached engine built from the classes-head ONNX (argmax and
confidence inside the engine), run with torch CUDA tensors on torch's current stream."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..export import read_onnx_info
from ..tensorrt.api import TensorRTUnavailableError, load_tensorrt
from ..tensorrt.builder import BuildOptions
from ..tensorrt.cache import get_or_build_engine
from ..tensorrt.runner import TrtRunner
from .base import Backend, BackendUnavailableError, apply_min_confidence, classes_from_logits


class TensorRTBackend(Backend):
    """Build (or reuse) an engine for ``onnx_path`` in ``engine_path`` and run it."""

    name = "tensorrt"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        engine_path: str | os.PathLike[str],
        *,
        options: BuildOptions = BuildOptions(),
        device: str | torch.device | None = None,
        force_rebuild: bool = False,
        progress: bool = True,
    ):
        try:
            info = load_tensorrt()
        except TensorRTUnavailableError as exc:
            raise BackendUnavailableError(str(exc)) from None
        if not torch.cuda.is_available():
            raise BackendUnavailableError("the tensorrt backend needs a CUDA GPU; torch sees none")
        onnx_info = read_onnx_info(onnx_path)
        self.engine_path = Path(engine_path)
        engine, self.built = get_or_build_engine(
            onnx_path, engine_path, options, force=force_rebuild, progress=progress, info=info
        )
        self.runner = TrtRunner(engine, device=device, info=info)
        self.runner.activate()
        self.device = self.runner.device
        self.precision = options.precision
        self.meta = onnx_info.meta
        self.input_size = onnx_info.input_size
        self.input_name = onnx_info.input_name
        self.max_batch_size = int(self.runner.max_input_shape(self.input_name)[0])
        self._static_batch = None if onnx_info.dynamic_batch else self.max_batch_size
        self.tensorrt_version = info.version_string

    def infer(
        self, batch: torch.Tensor, confidence: bool, min_confidence: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        count = batch.shape[0]
        if count > self.max_batch_size:
            raise ValueError(
                f"batch of {count} exceeds the engine's max batch {self.max_batch_size}"
            )
        if self._static_batch and count < self._static_batch:
            pad = batch.new_zeros((self._static_batch - count, *batch.shape[1:]))
            batch = torch.cat([batch, pad])
        with torch.cuda.device(self.device):
            outputs = self.runner.infer({self.input_name: batch})
        if "class_ids" not in outputs:
            return classes_from_logits(outputs["logits"][:count], confidence, min_confidence)
        conf = outputs.get("confidence")
        if (confidence or min_confidence) and conf is None:
            raise ValueError("the engine was built from an ONNX without the confidence output")
        conf = conf[:count] if conf is not None else None
        # The engine's graph has one input (the builder's contract): threshold on the GPU here.
        ids = apply_min_confidence(outputs["class_ids"][:count], conf, min_confidence)
        return ids, (conf if confidence else None)

    def close(self) -> None:
        self.runner.deactivate()

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "engine": str(self.engine_path),
            "tensorrt": self.tensorrt_version,
        }
