"""The output heads every backend runs after the network: logits -> per-pixel class ids
(uint8), the top-class probability, and pixels below a confidence threshold marked unlabelled.

One module, used inside the exported ONNX graphs (ONNX Runtime, TensorRT) and by the torch
backend, so the backends compute the same thing on their own device.

Head resolutions (``RuntimeOptions.head`` picks one through :data:`HEAD_RESOLUTION_OF`):

    ``full``     the model's own output: logits upsampled x4 (bilinear) to the input size, then
                 argmax. The exact head, what training and evaluation score.
    ``x2``       the decoder's 1/4-resolution logits upsampled x2 (bilinear), argmax at 1/2 of
                 the input size: 1/4 of the full head's upsampling, argmax and softmax work.
    ``decoder``  argmax at the decoder's 1/4 resolution.

Whatever the resolution, the Segmenter maps the head's output to each image's size with one
nearest-neighbour resize (dfanet_core.deploy.preprocess.restore_numpy). The mIoU each costs on
CamVid test is measured by ``python bench/head_accuracy.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_RESOLUTIONS = ("full", "x2", "decoder")
#: RuntimeOptions.head -> head resolution. ``fast`` was chosen from the CamVid test mIoU and
#: the ONNX Runtime latency of each resolution (docs/benchmarks.md, bench/head_accuracy.py).
HEAD_RESOLUTION_OF = {"exact": "full", "fast": "x2"}
#: Mask value of a pixel without a prediction (below ``min_confidence``).
UNLABELLED = 255
#: Name of the exported graphs' optional threshold input (float32, shape [1]).
MIN_CONFIDENCE_INPUT = "min_confidence"
#: ``min_confidence`` input value for "class ids only": the graph skips the confidence branch
#: (an ONNX ``If``; ONNX Runtime runs every node of a graph whichever outputs are fetched), leaves
#: every pixel labelled and returns zeros as confidence.
SKIP_CONFIDENCE = -1.0


def check_head_resolution(resolution: str) -> str:
    if resolution not in HEAD_RESOLUTIONS:
        raise ValueError(f"head resolution must be one of {HEAD_RESOLUTIONS}, got {resolution!r}")
    return resolution


def head_logits(model: nn.Module, x: torch.Tensor, resolution: str) -> torch.Tensor:
    """The logits a head of ``resolution`` takes its argmax over. Models without
    ``decoder_logits`` (not a DFANet) always give their own full-resolution logits."""
    if resolution == "full" or not hasattr(model, "decoder_logits"):
        return model(x)
    logits = model.decoder_logits(x)
    if resolution == "x2":
        height, width = logits.shape[-2:]
        size = (min(2 * height, x.shape[-2]), min(2 * width, x.shape[-1]))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


class ClassesHead(nn.Module):
    """``model`` ending in class ids (N x h x w uint8) and, with ``confidence``, the top-class
    probability (N x h x w float32), at ``resolution``.

    ``threshold_input`` adds a second input, the ``min_confidence`` threshold (float32 [1]):
    pixels whose top-class probability is below it get :data:`UNLABELLED`; 0 keeps every pixel;
    a negative value (:data:`SKIP_CONFIDENCE`) skips the confidence computation (``torch.cond``,
    exported as an ONNX ``If``), for callers that want class ids only. Without it the threshold
    is an optional tensor argument (the torch backend's; no branch, so CUDA graphs can replay it).
    ``compute_dtype`` float16 casts the input inside the graph, so an exported graph's interface
    stays float32 while a strongly typed TensorRT build runs in fp16.
    """

    def __init__(
        self,
        model: nn.Module,
        confidence: bool = True,
        compute_dtype: torch.dtype = torch.float32,
        resolution: str = "full",
        threshold_input: bool = False,
    ):
        super().__init__()
        self.model = model
        self.confidence = confidence
        self.compute_dtype = compute_dtype
        self.resolution = check_head_resolution(resolution)
        self.threshold_input = threshold_input

    def forward(
        self, images: torch.Tensor, min_confidence: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = head_logits(self.model, images.to(self.compute_dtype), self.resolution).float()
        class_ids = logits.argmax(dim=1).to(torch.uint8)
        if self.threshold_input:
            class_ids, conf = torch.cond((min_confidence >= 0).all(), _thresholded, _ids_only,
                                         (logits, class_ids, min_confidence))
        elif min_confidence is not None:
            class_ids, conf = _thresholded(logits, class_ids, min_confidence)
        elif not self.confidence:
            return class_ids
        else:
            conf = top_probability(logits)
        return (class_ids, conf) if self.confidence else class_ids


def _thresholded(
    logits: torch.Tensor, class_ids: torch.Tensor, min_confidence: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    conf = top_probability(logits)
    return class_ids.masked_fill(conf < min_confidence, UNLABELLED), conf


def _ids_only(
    logits: torch.Tensor, class_ids: torch.Tensor, min_confidence: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return class_ids.clone(), torch.zeros_like(class_ids, dtype=logits.dtype)


class LogitsHead(nn.Module):
    """The plain model, with the same fp16 casting rule as :class:`ClassesHead`."""

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.compute_dtype)).float()


def top_probability(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability over dim 1 as ``1 / sum(exp(logits - max))``: no softmax tensor
    is kept."""
    peak = logits.amax(dim=1, keepdim=True)
    return torch.exp(logits - peak).sum(dim=1).reciprocal()
