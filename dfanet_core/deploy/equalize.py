"""Cross-layer range equalisation (Nagel et al., "Data-Free Quantization", ICCV 2019) of a
conv-BN-fused DFANet: the same float function, with the per-channel weight ranges of consecutive
convolutions balanced, so that per-tensor or per-channel 8-bit grids fit every channel.

Why DFANet needs it: folded batch norm leaves depthwise kernels whose channel ranges differ by up
to ~500x, and the 1x1 convolution after each one reads those channels at the opposite scales.
For a pair ``conv1 -> [ReLU] -> conv2`` where output channel ``i`` of ``conv1`` is read only by
input channel ``i`` of ``conv2``, scaling ``conv1``'s channel ``i`` (weights and bias) by
``1 / s_i`` and ``conv2``'s input channel ``i`` by ``s_i`` changes nothing (ReLU is positively
homogeneous: ``relu(x / s) = relu(x) / s`` for ``s > 0``). With
``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: range of ``conv1``'s output channel ``i``, ``r2_i``: of
``conv2``'s input channel ``i``) both become ``sqrt(r1_i * r2_i)``.

The pairs used are the ones DFANet's structure makes exact: inside every separable conv (the
depthwise conv, then the pointwise conv: no activation between), and across the ReLU between the
separable convs of an Xception block (``pw -> ReLU -> dw``). Block outputs (summed with the
shortcut, concatenated, upsampled) are left alone. A few sweeps converge, since each depthwise
conv belongs to two pairs.

Used before INT8 quantization (ONNX Runtime here, and useful for a TensorRT INT8 build); float
outputs are unchanged up to rounding (tested: max |logit diff| < 1e-3, identical argmax).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

#: Ranges below this count as a dead channel: left unscaled.
_EPS = 1e-12


def _pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
    """(conv1, conv2) pairs where conv2 reads conv1's channels one to one (see module doc)."""
    from ..models.blocks import SeparableConv, XceptionBlock

    pairs = []
    for module in model.modules():
        if isinstance(module, SeparableConv):
            pairs.append((module[0], module[2]))  # dw -> pw
        if isinstance(module, XceptionBlock):
            seps = list(module.convs)
            for before, after in zip(seps, seps[1:]):
                if isinstance(before[4], nn.ReLU):  # pw -> ReLU -> next dw
                    pairs.append((before[2], after[0]))
    return pairs


def _output_range(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().abs().flatten(1).amax(dim=1)


def _input_range(conv: nn.Conv2d) -> torch.Tensor:
    weight = conv.weight.detach().abs()
    if conv.groups == conv.in_channels and conv.groups > 1:  # depthwise: channel i reads input i
        return weight.flatten(1).amax(dim=1)
    return weight.transpose(0, 1).flatten(1).amax(dim=1)


@torch.no_grad()
def equalize_ranges(model: nn.Module, sweeps: int = 4) -> nn.Module:
    """An equalised copy of a conv-BN-fused model (``model`` is not modified)."""
    from ..models.fusion import count_batch_norms

    if count_batch_norms(model):
        raise ValueError(
            "equalize_ranges needs a conv-BN-fused model (models.fusion.fuse_conv_bn)"
        )
    equalised = copy.deepcopy(model).eval()
    pairs = _pairs(equalised)
    for _ in range(sweeps):
        for first, second in pairs:
            r1, r2 = _output_range(first), _input_range(second)
            live = (r1 > _EPS) & (r2 > _EPS)
            scale = torch.where(live, torch.sqrt(r1 / r2.clamp_min(_EPS)), torch.ones_like(r1))
            first.weight.div_(scale.view(-1, *([1] * (first.weight.dim() - 1))))
            if first.bias is not None:
                first.bias.div_(scale)
            if second.groups == second.in_channels and second.groups > 1:
                second.weight.mul_(scale.view(-1, 1, 1, 1))
            else:
                second.weight.mul_(scale.view(1, -1, 1, 1))
    return equalised


def range_spread(model: nn.Module) -> float:
    """Largest ratio of per-channel weight ranges within one convolution over the equalised pairs:
    a quick measure of how hard per-tensor 8-bit quantization is (1 is ideal)."""
    worst = 1.0
    for first, second in _pairs(model):
        for ranges in (_output_range(first), _input_range(second)):
            live = ranges[ranges > _EPS]
            if live.numel():
                worst = max(worst, float(live.max() / live.min()))
    return worst
