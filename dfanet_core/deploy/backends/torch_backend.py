"""PyTorch on the CPU or a CUDA GPU: the reference backend, and the GPU path where TensorRT
is not installed. On CUDA: fp16/bf16 weights, channels_last memory format, and either CUDA graphs
captured here or ``torch.compile`` (inductor; its 'reduce-overhead' mode captures CUDA graphs
itself)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ...models.fusion import fuse_conv_bn
from ..heads import ClassesHead
from ..options import BACKEND_PRECISIONS, COMPILE_MODES
from .base import Array, Backend

LOG = logging.getLogger(__name__)

PRECISIONS = BACKEND_PRECISIONS["torch"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    """Runs the model with ``torch.inference_mode``; the output head (argmax, confidence,
    ``min_confidence``) on the same device, at ``head_resolution`` (dfanet_core.deploy.heads).

    ``channels_last`` (default: on for CUDA) and ``cuda_graphs`` (capture once per batch size, then
    replay: removes per-kernel launch overhead, which dominates small inputs) are CUDA options.
    fp16 needs CUDA (CPU half convolutions are slow or unsupported); bf16 runs on both.
    ``compile_mode`` compiles the fused model and head with ``torch.compile`` (inductor) at
    construction for one shape, ``max_batch_size`` images (shorter batches are padded to it),
    logging the compilation and its time, so that the first frame is not silently slow.
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
        compile_mode: str | None = None,
        head_resolution: str = "full",
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
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode must be None (eager) or one of {COMPILE_MODES}, got "
                f"{compile_mode!r}"
            )
        if compile_mode is not None and cuda_graphs:
            raise ValueError("cuda_graphs=True and compile_mode cannot be combined")
        self.precision = precision
        self.meta = dict(meta or {})
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.max_batch_size = int(max_batch_size)
        self.dtype = DTYPES[precision]
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.cuda_graphs = cuda_graphs
        self.compile_mode = compile_mode
        self.head_resolution = head_resolution
        # Batch norm folded into the convolutions: fewer kernels, and float16 stays finite (see
        # dfanet_core.models.fusion; unfused fp16 agreed on only ~30 % of pixels).
        self.model = fuse_conv_bn(model).to(
            self.device, self.dtype, memory_format=self.memory_format
        )
        self.head = ClassesHead(
            self.model, confidence=True, compute_dtype=self.dtype, resolution=head_resolution
        ).eval()
        # The threshold lives on the device (a CUDA graph replays it from there).
        self._threshold = torch.zeros(1, device=self.device)
        self._run = self.head
        self.compile_seconds: dict[int, float] = {}
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}
        if compile_mode is not None:
            self._compile(compile_mode)

    def _compile(self, mode: str) -> None:
        """torch.compile the head now for ``max_batch_size`` images, with progress and time
        logged (inductor reports nothing while it works)."""
        LOG.info(
            "torch.compile (inductor, mode %s) of %s on %s, %s, batch %d: compiling now, this "
            "takes a while", mode, self.meta.get("variant", "the model"), self.device,
            self.precision, self.max_batch_size,
        )  # fmt: skip
        self._run = torch.compile(self.head, mode=mode, dynamic=False)
        dummy = torch.zeros(self.max_batch_size, 3, *self.input_size, device=self.device,
                            dtype=self.dtype).contiguous(memory_format=self.memory_format)
        started = time.perf_counter()
        with torch.inference_mode():
            for call in range(3):  # the CUDA-graph modes record on the second/third call
                self._run(dummy, self._threshold)
                self.synchronize()
                LOG.info("torch.compile: call %d/3 done after %.1f s", call + 1,
                         time.perf_counter() - started)
        self.compile_seconds[self.max_batch_size] = time.perf_counter() - started
        LOG.info("torch.compile: ready in %.1f s", self.compile_seconds[self.max_batch_size])

    def _prepare(self, batch: Array) -> torch.Tensor:
        tensor = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        return tensor.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)

    def _graph_for(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]:
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = torch.zeros_like(x)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside capture (cuDNN tuning, allocations)
                for _ in range(3):
                    self.head(static_in, self._threshold)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.head(static_in, self._threshold)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def infer(
        self, batch: Array, confidence: bool, min_confidence: float = 0.0
    ) -> tuple[Array, Array | None]:
        if batch.shape[0] > self.max_batch_size:
            raise ValueError(
                f"batch of {batch.shape[0]} exceeds max_batch_size {self.max_batch_size}"
            )
        with torch.inference_mode():
            x = self._prepare(batch)
            self._threshold.fill_(float(min_confidence))
            if self.cuda_graphs:
                graph, static_in, (ids, conf) = self._graph_for(x)
                static_in.copy_(x)
                graph.replay()
                ids, conf = ids.clone(), conf.clone() if confidence else None
            elif self.compile_mode is not None:
                count = x.shape[0]
                if count < self.max_batch_size:  # compiled for one shape: pad to it
                    x = torch.cat([x, x.new_zeros((self.max_batch_size - count, *x.shape[1:]))])
                ids, conf = self._run(x, self._threshold)
                # sliced and cloned: a compiled CUDA graph reuses its output memory
                ids, conf = ids[:count].clone(), conf[:count].clone() if confidence else None
            else:
                ids, conf = self._run(x, self._threshold)
        conf = conf if confidence else None
        if isinstance(batch, np.ndarray):
            return ids.cpu().numpy(), (conf.float().cpu().numpy() if conf is not None else None)
        return ids, conf

    def close(self) -> None:
        self._graphs.clear()

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "channels_last": self.channels_last,
            "cuda_graphs": self.cuda_graphs,
            "compile_mode": self.compile_mode,
            "head_resolution": self.head_resolution,
            "torch": torch.__version__,
        }
