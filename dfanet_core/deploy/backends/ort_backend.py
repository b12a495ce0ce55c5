"""ONNX Runtime on the CPU: the default backend where there is no usable GPU."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..export import onnxruntime_session, read_onnx_info
from .base import Backend, BackendUnavailableError, classes_from_logits

DEFAULT_DYNAMIC_BATCH = 8


class OnnxRuntimeBackend(Backend):
    """Runs a dfanet ONNX export (either head) with ``CPUExecutionProvider``.

    ``intra_op_threads`` sets ONNX Runtime's intra-op thread pool (None: one per physical core).
    A static-batch graph gets short batches padded; a dynamic-batch graph takes up to
    ``max_batch_size`` images per call.
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        *,
        intra_op_threads: int | None = None,
        max_batch_size: int | None = None,
    ):
        self.info = read_onnx_info(onnx_path)
        try:
            self.session = onnxruntime_session(onnx_path, intra_op_threads)
        except ImportError as exc:
            raise BackendUnavailableError(str(exc)) from None
        self.meta = self.info.meta
        self.device = torch.device("cpu")
        self.precision = self.info.precision
        self.input_size = self.info.input_size
        self.intra_op_threads = intra_op_threads
        self._static_batch = None if self.info.dynamic_batch else int(self.info.input_shape[0])
        self.max_batch_size = self._static_batch or max_batch_size or DEFAULT_DYNAMIC_BATCH
        self._has_classes = "class_ids" in self.info.output_names

    def infer(self, batch: np.ndarray, confidence: bool) -> tuple[np.ndarray, np.ndarray | None]:
        count = batch.shape[0]
        if count > self.max_batch_size:
            raise ValueError(f"batch of {count} exceeds max_batch_size {self.max_batch_size}")
        if self._static_batch and count < self._static_batch:
            pad = np.zeros((self._static_batch - count, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        feed = {self.info.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        if not self._has_classes:
            (logits,) = self.session.run(["logits"], feed)
            ids, conf = classes_from_logits(logits[:count], confidence)
            return ids, conf
        wanted = ["class_ids"]
        if confidence:
            if "confidence" not in self.info.output_names:
                raise ValueError(f"{self.info.path} was exported without the confidence output")
            wanted.append("confidence")
        outputs = self.session.run(wanted, feed)
        return outputs[0][:count], (outputs[1][:count] if confidence else None)

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "onnx": str(self.info.path),
            "intra_op_threads": self.intra_op_threads,
        }
