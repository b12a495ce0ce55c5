"""PyTorch eager on the CPU or a CUDA GPU: the reference backend, and the GPU path where TensorRT
is not installed. On CUDA: fp16 weights, channels_last memory format and optional CUDA graphs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...models.fusion import fuse_conv_bn
from ..options import BACKEND_PRECISIONS
from .base import Array, Backend, classes_from_logits

PRECISIONS = BACKEND_PRECISIONS["torch"]


class TorchBackend(Backend):
    """Runs the model with ``torch.inference_mode``; argmax and confidence on the same device.

    ``channels_last`` (default: on for CUDA) and ``cuda_graphs`` (capture once per batch size, then
    replay: removes per-kernel launch overhead, which dominates small inputs) are CUDA options.
    fp16 needs CUDA (CPU half convolutions are slow or unsupported).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: tuple[int, int],
        device: str | torch.device | None = None,
        precision: str = "fp32",
        channels_last: bool | None = None,
        cuda_graphs: bool = False,
        max_batch_size: int = 8,
        meta: dict[str, Any] | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device} requested but torch sees no CUDA GPU")
        if precision not in PRECISIONS:
            raise ValueError(
                f"torch backend precision must be one of {PRECISIONS}, got {precision!r}"
            )
        on_cuda = self.device.type == "cuda"
        if precision == "fp16" and not on_cuda:
            raise ValueError("precision='fp16' with the torch backend needs a CUDA device")
        if cuda_graphs and not on_cuda:
            raise ValueError("cuda_graphs=True needs a CUDA device")
        self.precision = precision
        self.meta = dict(meta or {})
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.max_batch_size = int(max_batch_size)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.cuda_graphs = cuda_graphs
        # Batch norm folded into the convolutions: fewer kernels, and float16 stays finite (see
        # dfanet_core.models.fusion; unfused fp16 agreed on only ~30 % of pixels).
        self.model = fuse_conv_bn(model).to(
            self.device, self.dtype, memory_format=self.memory_format
        )
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}

    def _prepare(self, batch: Array) -> torch.Tensor:
        tensor = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        return tensor.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, conf = classes_from_logits(self.model(x), confidence=True)
        return ids, conf

    def _graph_for(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]:
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = torch.zeros_like(x)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(
                side
            ):  # warm-up outside capture (cuDNN autotuning, allocations)
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def infer(self, batch: Array, confidence: bool) -> tuple[Array, Array | None]:
        if batch.shape[0] > self.max_batch_size:
            raise ValueError(
                f"batch of {batch.shape[0]} exceeds max_batch_size {self.max_batch_size}"
            )
        with torch.inference_mode():
            x = self._prepare(batch)
            if self.cuda_graphs:
                graph, static_in, (ids, conf) = self._graph_for(x)
                static_in.copy_(x)
                graph.replay()
                ids, conf = ids.clone(), conf.clone() if confidence else None
            else:
                ids, conf = classes_from_logits(self.model(x), confidence)
        if isinstance(batch, np.ndarray):
            return ids.cpu().numpy(), (conf.cpu().numpy() if conf is not None else None)
        return ids, conf

    def close(self) -> None:
        self._graphs.clear()

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "channels_last": self.channels_last,
            "cuda_graphs": self.cuda_graphs,
            "torch": torch.__version__,
        }
