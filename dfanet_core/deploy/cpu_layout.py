"""Shape the exported graph for ONNX Runtime's CPU layout optimizer, without changing a value.

With ``ORT_ENABLE_ALL``, ONNX Runtime runs convolutions in a blocked channel layout (NCHWc, 16
channels per block with AVX-512) and keeps the tensors between them blocked: Resize, Concat, Add
and ReLU on blocked inputs run blocked too. The layout starts at a convolution and ends at the
first operator it cannot block. In DFANet two things end it:

* FC attention's channel gate (a broadcast Mul): each backbone's attended tail leaves the blocked
  layout, so the x4 bilinear upsampling to the next backbone runs as a plain Resize at 1/4
  resolution and the concatenation after it is reordered back. Measured at 512x1024 on 2
  threads, that Resize, Concat and reorder took a third of the run.
  :func:`anchor_attention_outputs` appends a 1x1 convolution with identity weights to every FC
  attention: ONNX Runtime reorders the small 1/16-resolution tail into the blocked layout for it,
  and everything after stays blocked.
* Channel counts that are not a multiple of the block: DFANet A's stem (8 channels) and the
  12-channel middle of its enc2 blocks (B: 8) run as plain convolutions with reorders around
  each. :func:`pad_channels` pads them with zero channels (zero weights and biases in, zero
  weights out).

And one copy it does not need: sub-stage aggregation concatenates each backbone's stage input
with the previous backbone's stage output (240 channels at 1/4 resolution for backbone 2), only
for a depthwise conv and two 1x1 convs to read it. :func:`split_lateral_concats` feeds the two
parts to per-part convolutions and sums the 1x1 results instead.

All three keep the outputs: every added term is 1.0 x a value or 0 x a value, and the split
only reorders a sum (float32 logits within 1e-4; the tests check it).
Only the ONNX Runtime export gets them (deploy.export ``cpu_layout``); a TensorRT engine has no
use for them. Before/after figures: docs/benchmarks.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.blocks import FCAttention


class LayoutAnchor(nn.Module):
    """``module`` followed by an identity 1x1 convolution over its ``channels`` outputs."""

    def __init__(self, module: nn.Module, channels: int):
        super().__init__()
        self.module = module
        self.identity = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.identity.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.identity(self.module(x))


def anchor_attention_outputs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with a :class:`LayoutAnchor` after every FC attention (same outputs;
    ``model`` is not modified)."""
    anchored = copy.deepcopy(model)
    for parent in list(anchored.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FCAttention):
                anchor = LayoutAnchor(child, child.proj.out_channels)
                setattr(parent, name, anchor.to(next(child.parameters()).dtype))
    return anchored


# -- channel padding -------------------------------------------------------------------------
def _pad_out(conv: nn.Conv2d, channels: int) -> None:
    """Zero output channels appended (weights and bias), in place."""
    extra = channels - conv.out_channels
    with torch.no_grad():
        conv.weight = nn.Parameter(torch.cat([conv.weight, conv.weight.new_zeros(
            (extra, *conv.weight.shape[1:]))]))
        if conv.bias is not None:
            conv.bias = nn.Parameter(torch.cat([conv.bias, conv.bias.new_zeros(extra)]))
    conv.out_channels = channels


def _pad_in(conv: nn.Conv2d, channels: int) -> None:
    """Zero input channels appended to a dense convolution, in place."""
    extra = channels - conv.in_channels
    with torch.no_grad():
        weight = conv.weight
        conv.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(
            (weight.shape[0], extra, *weight.shape[2:]))], dim=1))
    conv.in_channels = channels


def _pad_depthwise(conv: nn.Conv2d, channels: int) -> None:
    _pad_out(conv, channels)
    conv.in_channels = conv.groups = channels


def _padded(channels: int, multiple: int) -> int:
    return -(-channels // multiple) * multiple


#: ONNX Runtime's NCHWc block with AVX-512 (8 with AVX2: a multiple of 16 suits both).
NCHWC_BLOCK = 16


def pad_channels(model: nn.Module, multiple: int = NCHWC_BLOCK) -> nn.Module:
    """A copy of a conv-BN-fused DFANet (:func:`dfanet_core.models.fusion.fuse_conv_bn`) whose
    Xception blocks' middle width and first backbone's stem width are padded with zero channels
    to a multiple of ``multiple`` (same outputs; ``model`` is not modified)."""
    from ..models.blocks import XceptionBlock

    padded = copy.deepcopy(model)
    for block in padded.modules():
        if not isinstance(block, XceptionBlock):
            continue
        first, second, third = block.convs  # SeparableConv: dw, (folded norm), pw, ...
        width = first[2].out_channels
        if width % multiple:
            new = _padded(width, multiple)
            _pad_out(first[2], new)
            _pad_depthwise(second[0], new)
            _pad_in(second[2], new)
            _pad_out(second[2], new)
            _pad_depthwise(third[0], new)
            _pad_in(third[2], new)
    backbones = getattr(padded, "backbones", None)
    stem = backbones[0].stem if backbones is not None else None
    block = backbones[0].stages[0][0] if stem is not None else None  # the stem's one consumer
    if (stem is not None and stem[0].out_channels % multiple
            and isinstance(block.shortcut, nn.Sequential)):  # a projection, not an identity
        new = _padded(stem[0].out_channels, multiple)
        _pad_out(stem[0], new)
        _pad_depthwise(block.convs[0][0], new)
        _pad_in(block.convs[0][2], new)
        _pad_in(block.shortcut[0], new)
    return padded


# -- concatenation-free sub-stage aggregation ------------------------------------------------
def _slice_conv(conv: nn.Conv2d, start: int, stop: int, bias: bool) -> nn.Conv2d:
    """The part of ``conv`` that reads input channels ``start:stop`` (a depthwise conv keeps
    those channels; a dense one keeps all its outputs, with the bias only if ``bias``)."""
    depthwise = conv.groups == conv.in_channels and conv.groups > 1
    channels = stop - start
    part = nn.Conv2d(channels, channels if depthwise else conv.out_channels, conv.kernel_size,
                     conv.stride, conv.padding, conv.dilation,
                     groups=channels if depthwise else 1,
                     bias=conv.bias is not None and (bias or depthwise))
    part = part.to(conv.weight.dtype)
    with torch.no_grad():
        part.weight.copy_(conv.weight[start:stop] if depthwise else conv.weight[:, start:stop])
        if part.bias is not None:
            part.bias.copy_(conv.bias[start:stop] if depthwise else conv.bias)
    return part


class SplitInputBlock(nn.Module):
    """A fused :class:`~dfanet_core.models.blocks.XceptionBlock` (strided, projection shortcut)
    fed ``cat([a, b])``, computed without the concatenation: the depthwise conv per part, the
    pointwise conv and the shortcut as sums of per-part convolutions (their bias in one part)."""

    def __init__(self, block: nn.Module, split: int):
        super().__init__()
        first = block.convs[0]  # dw, (folded norm), pw, (folded norm), act
        total = first[0].in_channels
        self.dw_a = _slice_conv(first[0], 0, split, bias=True)
        self.dw_b = _slice_conv(first[0], split, total, bias=True)
        self.pw_a = _slice_conv(first[2], 0, split, bias=True)
        self.pw_b = _slice_conv(first[2], split, total, bias=False)
        self.act_first = first[4]
        self.rest = nn.Sequential(*list(block.convs)[1:])
        shortcut = block.shortcut[0]
        self.shortcut_a = _slice_conv(shortcut, 0, split, bias=True)
        self.shortcut_b = _slice_conv(shortcut, split, total, bias=False)
        self.act = block.act

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = self.act_first(self.pw_a(self.dw_a(a)) + self.pw_b(self.dw_b(b)))
        return self.act(self.rest(x) + self.shortcut_a(a) + self.shortcut_b(b))


class SplitLateralBackbone(nn.Module):
    """A cascade backbone (n > 1) whose stages take the lateral input of backbone n - 1 through
    :class:`SplitInputBlock` instead of concatenating it (same outputs)."""

    def __init__(self, backbone: nn.Module, lateral_channels: tuple[int, ...]):
        super().__init__()
        self.stages = nn.ModuleList()
        for stage, lateral in zip(backbone.stages, lateral_channels):
            first = stage[0]
            split = first.convs[0][0].in_channels - lateral
            self.stages.append(nn.ModuleList([SplitInputBlock(first, split), *list(stage)[1:]]))
        self.attention = backbone.attention

    def forward(
        self, x: torch.Tensor, lateral: list[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        outputs = []
        for stage, side in zip(self.stages, lateral):
            x = stage[0](x, side)
            for block in list(stage)[1:]:
                x = block(x)
            outputs.append(x)
        return outputs, self.attention(x)


def split_lateral_concats(model: nn.Module) -> nn.Module:
    """A copy of a fused DFANet whose backbones 2.. never concatenate their lateral inputs (the
    largest, at 1/4 resolution with 240 channels, cost 4 ms of a 55 ms run at 512x1024); same
    outputs. Models without that structure are returned as a plain copy."""
    split = copy.deepcopy(model)
    backbones = getattr(split, "backbones", None)
    if backbones is None:
        return split
    laterals = [tuple(s.channels for s in b.stage_info) for b in backbones]
    for index in range(1, len(backbones)):
        if not all(isinstance(stage[0].shortcut, nn.Sequential)
                   for stage in backbones[index].stages):
            return copy.deepcopy(model)  # an identity shortcut: nothing to split
        backbones[index] = SplitLateralBackbone(backbones[index], laterals[index - 1])
    return split
