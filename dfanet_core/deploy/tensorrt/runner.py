"""Run a serialized TensorRT engine with torch CUDA tensors as I/O buffers.

Polygraphy-shaped: a context manager that deserializes the engine and creates the execution context
once on entry, binds I/O by tensor name (TensorRT 10: ``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), checks
every
boolean return, and releases everything on exit.

Why torch tensors instead of pycuda: torch is already loaded and owns a caching allocator and a
current stream, so buffers need no extra CUDA context or manual frees (no leaks), the engine runs
on
torch's current stream (ordering with the preprocessing and argmax kernels is automatic, no host
synchronization in between), and outputs can stay on the GPU for the next step. pycuda does not
build
on the team's machines (no libcuda) and would create a second CUDA context.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .api import TensorRTInfo, TrtLogger, load_tensorrt
from .cache import EngineFileError, build_command, read_engine_file

LOG = logging.getLogger(__name__)


class TensorRTRuntimeError(RuntimeError):
    """A TensorRT runtime call returned failure."""


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor."""

    name: str
    is_input: bool
    dtype: torch.dtype
    shape: tuple[int, ...]


def torch_dtype(info: TensorRTInfo, trt_dtype: object) -> torch.dtype:
    """TensorRT DataType -> torch dtype."""
    trt = info.module
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    for name, dtype in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = dtype
    if trt_dtype not in table:
        raise TensorRTRuntimeError(f"engine tensor type {trt_dtype} has no torch equivalent")
    return table[trt_dtype]


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise TensorRTRuntimeError(f"TensorRT {what} failed")


class TrtRunner:
    """``with TrtRunner(engine) as runner: outputs = runner.infer({'images': x})``.

    ``engine`` is the serialized engine (bytes) or an engine file path (checked against its
    sidecar).
    Inputs are CUDA tensors on ``device``; outputs are new CUDA tensors enqueued on torch's current
    stream (use them on that stream, or synchronize before reading them from the host).
    """

    def __init__(
        self,
        engine: bytes | str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        info: TensorRTInfo | None = None,
    ):
        self.info = info or load_tensorrt()
        if isinstance(engine, (bytes, bytearray, memoryview)):
            self.engine_path: Path | None = None
            self._serialized = bytes(engine)
        else:
            self.engine_path = Path(engine)
            self._serialized = read_engine_file(self.engine_path)
        if not torch.cuda.is_available():
            raise TensorRTRuntimeError("the TensorRT runner needs a CUDA GPU; torch sees none")
        self.device = torch.device(device or "cuda")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._logger = None
        self._runtime = None
        self.engine = None
        self.context = None
        self.inputs: dict[str, TensorSpec] = {}
        self.outputs: dict[str, TensorSpec] = {}
        self._keep_alive: list[torch.Tensor] = []

    @property
    def is_active(self) -> bool:
        return self.context is not None

    def __enter__(self) -> TrtRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        """Deserialize the engine and create its execution context (once)."""
        if self.is_active:
            return
        trt = self.info.module
        with torch.cuda.device(self.device):
            self._logger = TrtLogger.create(self.info)
            self._runtime = trt.Runtime(self._logger)
            _check(self._runtime is not None, "Runtime creation")
            self.engine = self._runtime.deserialize_cuda_engine(self._serialized)
            if self.engine is None:
                where = self.engine_path or "the engine bytes"
                reason = "; ".join(self._logger.errors) or "see the TensorRT log"
                self.deactivate()
                raise EngineFileError(
                    f"TensorRT could not deserialize {where} ({reason}); it may come from another "
                    "TensorRT version or GPU. Rebuild it with: "
                    f"{build_command(self.engine_path or '<engine>')}"
                )
            self.context = self.engine.create_execution_context()
            if self.context is None:
                self.deactivate()
                raise TensorRTRuntimeError("TensorRT could not create an execution context")
        self._serialized = b""  # the engine holds its own copy
        self._collect_io()

    def _collect_io(self) -> None:
        trt = self.info.module
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            spec = TensorSpec(
                name=name,
                is_input=self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                dtype=torch_dtype(self.info, self.engine.get_tensor_dtype(name)),
                shape=tuple(self.engine.get_tensor_shape(name)),
            )
            (self.inputs if spec.is_input else self.outputs)[name] = spec
        LOG.debug("engine inputs %s outputs %s", self.inputs, self.outputs)

    def deactivate(self) -> None:
        """Free the context, engine and runtime (in that order)."""
        self._keep_alive.clear()
        self.context = None
        self.engine = None
        self._runtime = None

    def max_input_shape(self, name: str) -> tuple[int, ...]:
        """Largest shape the engine's profile 0 accepts for input ``name``."""
        shape = self.inputs[name].shape
        if all(d >= 0 for d in shape):
            return shape
        return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])

    def infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Enqueue one inference on torch's current stream and return the output tensors."""
        if not self.is_active:
            raise TensorRTRuntimeError("TrtRunner.infer called outside `with runner:`")
        if set(feed) != set(self.inputs):
            raise ValueError(f"expected inputs {sorted(self.inputs)}, got {sorted(feed)}")
        keep = []
        for name, tensor in feed.items():
            spec = self.inputs[name]
            if tensor.device != self.device or tensor.dtype != spec.dtype:
                tensor = tensor.to(self.device, spec.dtype)
            tensor = tensor.contiguous()
            _check(
                self.context.set_input_shape(name, tuple(tensor.shape)),
                f"set_input_shape({name}, {tuple(tensor.shape)})",
            )
            _check(
                self.context.set_tensor_address(name, tensor.data_ptr()),
                f"set_tensor_address({name})",
            )
            keep.append(tensor)
        outputs = {}
        for name, spec in self.outputs.items():
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TensorRTRuntimeError(f"output {name} shape {shape} unresolved after inputs")
            out = torch.empty(shape, dtype=spec.dtype, device=self.device)
            _check(
                self.context.set_tensor_address(name, out.data_ptr()),
                f"set_tensor_address({name})",
            )
            outputs[name] = out
        stream = torch.cuda.current_stream(self.device)
        _check(self.context.execute_async_v3(stream.cuda_stream), "execute_async_v3")
        # The caching allocator is stream-ordered, so freeing the inputs after enqueue is safe;
        # keeping the last ones referenced also keeps them valid for debuggers.
        self._keep_alive = keep
        return outputs
