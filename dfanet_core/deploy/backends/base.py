"""The one small interface every inference backend implements.

A backend takes a preprocessed batch (N x 3 x H x W float32, normalized) and returns per-pixel
class ids (N x h x w uint8, 255 below ``min_confidence``) and, when asked, the max softmax
probability (N x h x w float32), at its head's resolution (dfanet_core.deploy.heads). CPU
backends take and return numpy arrays; device backends take and return torch tensors on
``device`` so that pre- and post-processing stay on the GPU.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Union

import numpy as np
import torch

from ..heads import UNLABELLED

Array = Union[np.ndarray, torch.Tensor]


class BackendUnavailableError(ImportError):
    """A backend's runtime is not installed or has no device; the message says what to install."""


class Backend(abc.ABC):
    """Run the network on one batch. Subclasses set the attributes below in ``__init__``."""

    name: ClassVar[str]
    #: Where inputs and outputs live: ``cpu`` means numpy arrays in and out.
    device: torch.device
    #: 'fp32', 'fp16' or 'int8'.
    precision: str
    #: Network input (H, W).
    input_size: tuple[int, int]
    #: Largest batch one :meth:`infer` call accepts.
    max_batch_size: int
    #: The model's metadata (classes, palette, normalization, input size; see checkpoint.py).
    meta: dict[str, Any]

    @property
    def uses_torch(self) -> bool:
        """True when :meth:`infer` takes and returns torch tensors on :attr:`device`."""
        return self.device.type != "cpu"

    @abc.abstractmethod
    def infer(
        self, batch: Array, confidence: bool, min_confidence: float = 0.0
    ) -> tuple[Array, Array | None]:
        """(class ids N x h x w uint8, confidence N x h x w float32 or None) at the head's
        resolution (h x w: the input size for the exact head, smaller for the fast one); pixels
        whose top-class probability is below ``min_confidence`` (0: off) are 255."""

    def synchronize(self) -> None:
        """Wait for queued device work (for honest stage timings); no-op on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing to free)
        """Release runtime resources; the backend is unusable afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, object]:
        """Facts for logs, diagnostics and benchmark reports."""
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": self.precision,
            "input_size": list(self.input_size),
            "max_batch_size": self.max_batch_size,
        }


def classes_from_logits(
    logits: Array, confidence: bool, min_confidence: float = 0.0
) -> tuple[Array, Array | None]:
    """Argmax (uint8) and max softmax probability of N x C x H x W logits, numpy or torch, computed
    where the logits are (for graphs exported with the plain ``logits`` head); pixels below
    ``min_confidence`` become 255."""
    if isinstance(logits, torch.Tensor):
        logits = logits.float()
        ids = logits.argmax(dim=1).to(torch.uint8)
        if not confidence and not min_confidence:
            return ids, None
        peak = logits.amax(dim=1, keepdim=True)
        conf = torch.exp(logits - peak).sum(dim=1).reciprocal()
    else:
        ids = logits.argmax(axis=1).astype(np.uint8)
        if not confidence and not min_confidence:
            return ids, None
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        conf = (1.0 / shifted.sum(axis=1)).astype(np.float32)
    return apply_min_confidence(ids, conf, min_confidence), (conf if confidence else None)


def apply_min_confidence(ids: Array, conf: Array | None, min_confidence: float) -> Array:
    """``ids`` with 255 where ``conf`` < ``min_confidence``, computed where the arrays are (one
    vectorized operation, numpy or torch on its device); for graphs that do not threshold
    themselves (TensorRT engines, ONNX files exported without the ``min_confidence`` input)."""
    if not min_confidence:
        return ids
    if conf is None:
        raise ValueError("min_confidence needs the confidence output, which this model lacks")
    if isinstance(ids, torch.Tensor):
        return ids.masked_fill(conf < min_confidence, UNLABELLED)
    return np.where(conf < np.float32(min_confidence), np.uint8(UNLABELLED), ids)
