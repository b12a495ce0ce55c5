"""Auxiliary deep-supervision heads for training DFANet from scratch.

One small classifier per backbone tail (3x3 conv-norm-ReLU, then 1x1 to the classes), whose
logits, upsampled to the input, get their own loss. They give the early backbones a direct
gradient, which matters without ImageNet initialisation. They are training-only: the heads live
in this wrapper, never in :class:`DFANet`, so ``save_checkpoint(wrapper.net, ...)``, the ONNX
export and ``load_checkpoint`` see the plain network.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormAct
from .dfanet import DFANet


class AuxHead(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__(ConvNormAct(in_channels, width, 1), nn.Conv2d(width, num_classes, 1))


class DeepSupervision(nn.Module):
    """``DFANet`` plus one :class:`AuxHead` per backbone tail. In training mode ``forward``
    returns ``(logits, [aux logits, ...])``, the aux logits at their tails' resolution (the loss
    decides where to compare them: training resizes them to 1/4 of the input, which costs a
    sixteenth of a full-resolution loss); in eval mode only the logits."""

    def __init__(self, net: DFANet, width: int = 64):
        super().__init__()
        self.net = net
        self.aux_heads = nn.ModuleList(
            AuxHead(stages[-1].channels, net.num_classes, width) for stages in net.stage_info
        )

    def forward(self, x: torch.Tensor):
        logits, tails = self.net.forward_with_tails(x)
        if not self.training:
            return logits
        return logits, [head(t) for head, t in zip(self.aux_heads, tails)]
