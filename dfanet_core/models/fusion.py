"""Fold eval-mode batch norm into the convolution before it, for inference in float16.

Trained with the paper's tiny weight decay (1e-5), the convolutions in front of batch norm grow
their weights freely (batch norm makes the layer blind to their scale), so pre-norm activations
of a trained DFANet reach ~1e5: past float16's 65504. Run layer by layer in float16 the network
then overflows: the shipped CamVid weights agreed with float32 on only 27-33 % of pixels in
torch fp16 on an H200. Folding each ``BatchNorm2d`` into its ``Conv2d`` removes those values:
the fused convolution writes the normalized output directly. What is left are a few fused
weights beyond float16's range, on channels whose input is (nearly) constant, where batch norm
divided by ~sqrt(eps); :func:`fuse_conv_bn` clamps them to +-65504 (``clamp_to_fp16``), which
changes no float32 logit of the shipped weights by more than 1e-4 and gives >= 99.7 % float16
agreement on CamVid test images. Every deployment path (ONNX export, hence ONNX Runtime and
TensorRT, and the torch backend) runs the fused copy; training keeps the unfused model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

FP16_MAX = 65504.0


def fuse_conv_bn(model: nn.Module, clamp_to_fp16: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``Conv2d`` immediately followed by a
    ``BatchNorm2d`` inside an ``nn.Sequential`` replaced by one fused ``Conv2d`` (the norm
    becomes ``nn.Identity``, so module names and indices stay), and with ``clamp_to_fp16`` every
    parameter clamped to float16's finite range. ``model`` is not modified."""
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d:
                if norm.track_running_stats and norm.running_mean is not None:
                    module._modules[first] = fuse_conv_bn_eval(conv, norm)
                    module._modules[second] = nn.Identity()
    if clamp_to_fp16:
        with torch.no_grad():
            for parameter in fused.parameters():
                parameter.clamp_(-FP16_MAX, FP16_MAX)
    return fused


def count_batch_norms(model: nn.Module) -> int:
    """How many ``BatchNorm2d`` layers are left (0 after :func:`fuse_conv_bn` on DFANet)."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@torch.no_grad()
def fp16_range_report(
    model: nn.Module, images: list, mean: list[float], std: list[float]
) -> dict[str, float | bool | int]:
    """Is ``model`` deployable in float16 *without* clamping? Folds batch norm (no clamp) and
    returns the largest fused weight and the largest activation of any layer over ``images``
    (RGB uint8 arrays, run at their own size in float32)."""
    from ..deploy.preprocess import plan_placement, preprocess_torch

    fused = fuse_conv_bn(model.float().cpu(), clamp_to_fp16=False)
    max_weight = max(p.abs().max().item() for p in fused.parameters())
    peak = [0.0]

    def record(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            peak[0] = max(peak[0], output.abs().max().item())

    hooks = [m.register_forward_hook(record) for m in fused.modules() if not list(m.children())]
    try:
        for image in images:
            size = image.shape[:2]
            x = preprocess_torch([image], [plan_placement(size, size, "stretch")], size, mean,
                                 std, "RGB", torch.device("cpu"))  # fmt: skip
            fused(x)
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "max_abs_weight": max_weight,
        "max_abs_activation": peak[0],
        "images": len(images),
        "within_fp16": bool(max_weight < FP16_MAX and peak[0] < FP16_MAX),
    }
