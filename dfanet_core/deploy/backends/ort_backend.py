"""ONNX Runtime on the CPU: the default backend where there is no usable GPU."""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

from ..export import onnxruntime_session, read_onnx_info
from ..heads import MIN_CONFIDENCE_INPUT, SKIP_CONFIDENCE
from .base import Backend, BackendUnavailableError, apply_min_confidence, classes_from_logits

DEFAULT_DYNAMIC_BATCH = 8


class OnnxRuntimeBackend(Backend):
    """Runs a dfanet ONNX export (either head) with ``CPUExecutionProvider``.

    ``intra_op_threads`` sets ONNX Runtime's intra-op thread pool (None: one per physical core);
    ``optimization`` the graph optimization level ('all', 'extended', 'basic'); ``spinning``
    whether idle worker threads busy-wait (None: the library default). With ``io_binding`` the
    input is bound in place and the outputs are written into buffers allocated once per batch
    size. A static-batch graph gets short batches padded; a dynamic-batch graph takes up to
    ``max_batch_size`` images per call. A graph with the ``min_confidence`` input thresholds
    inside the graph, and skips the graph's confidence branch when a call wants class ids only;
    otherwise the threshold is applied to the outputs (vectorized numpy).
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        *,
        intra_op_threads: int | None = None,
        max_batch_size: int | None = None,
        optimization: str = "all",
        spinning: bool | None = None,
        io_binding: bool = True,
    ):
        self.info = read_onnx_info(onnx_path)
        try:
            self.session = onnxruntime_session(
                onnx_path, intra_op_threads, optimization=optimization, spinning=spinning
            )
        except ImportError as exc:
            raise BackendUnavailableError(str(exc)) from None
        self.meta = self.info.meta
        self.device = torch.device("cpu")
        self.precision = self.info.precision
        self.input_size = self.info.input_size
        self.intra_op_threads = intra_op_threads
        self.optimization = optimization
        self.spinning = spinning
        self.io_binding = io_binding
        self._static_batch = None if self.info.dynamic_batch else int(self.info.input_shape[0])
        self.max_batch_size = self._static_batch or max_batch_size or DEFAULT_DYNAMIC_BATCH
        self._has_classes = "class_ids" in self.info.output_names
        self._thresholds_in_graph = self.info.has_min_confidence_input
        #: batch size -> (io binding, {output name: preallocated array})
        self._bindings: dict[int, tuple[object, dict[str, np.ndarray]]] = {}
        self._lock = threading.Lock()  # the bound buffers serve one call at a time

    def infer(
        self, batch: np.ndarray, confidence: bool, min_confidence: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        count = batch.shape[0]
        if count > self.max_batch_size:
            raise ValueError(f"batch of {count} exceeds max_batch_size {self.max_batch_size}")
        if self._static_batch and count < self._static_batch:
            pad = np.zeros((self._static_batch - count, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not self._has_classes:
            (logits,) = self.session.run(["logits"], {self.info.input_name: batch})
            return classes_from_logits(logits[:count], confidence, min_confidence)
        if (confidence or min_confidence) and "confidence" not in self.info.output_names:
            raise ValueError(f"{self.info.path} was exported without the confidence output")
        feed = {self.info.input_name: batch}
        if self._thresholds_in_graph:
            # Class ids only: the graph skips its confidence branch.
            wanted_value = min_confidence if confidence or min_confidence else SKIP_CONFIDENCE
            feed[MIN_CONFIDENCE_INPUT] = np.array([wanted_value], np.float32)
        wanted = [n for n in ("class_ids", "confidence") if n in self.info.output_names]
        if self.io_binding:
            with self._lock:  # copied out: the bound buffers are the next call's
                outputs = {k: v.copy() for k, v in self._run_bound(feed, wanted).items()
                           if k == "class_ids" or confidence or min_confidence}
        else:
            wanted = wanted if confidence or min_confidence else ["class_ids"]
            outputs = dict(zip(wanted, self.session.run(wanted, feed)))
        ids = outputs["class_ids"][:count]
        conf = outputs["confidence"][:count] if "confidence" in outputs else None
        if not self._thresholds_in_graph:
            ids = apply_min_confidence(ids, conf, min_confidence)
        return ids, (conf if confidence else None)

    def _run_bound(self, feed: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
        """One ``run_with_iobinding``: the inputs bound in place, outputs into buffers made on the
        first call of each batch size (their shapes from a first plain run)."""
        key = feed[self.info.input_name].shape[0]
        if key not in self._bindings:
            first = dict(zip(wanted, self.session.run(wanted, feed)))
            binding = self.session.io_binding()
            buffers = {name: np.empty_like(array) for name, array in first.items()}
            for name, array in buffers.items():
                binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape),
                                    array.ctypes.data)
            self._bindings[key] = (binding, buffers)
        binding, buffers = self._bindings[key]
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        self.session.run_with_iobinding(binding)
        return buffers

    def close(self) -> None:
        self._bindings.clear()
        self.session = None

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "onnx": str(self.info.path),
            "intra_op_threads": self.intra_op_threads,
            "ort_optimization": self.optimization,
            "ort_spinning": self.spinning,
            "io_binding": self.io_binding,
            "head_resolution": self.info.export.get("head_resolution", "full"),
        }
