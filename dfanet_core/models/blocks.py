"""Small building blocks of DFANet. Norm and activation layers are constructor arguments.

No block modifies a tensor in place: the public DFANet ports crash in backward because an in-place
ReLU overwrote a tensor autograd still needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


def resize_to(x: torch.Tensor, ref: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``ref`` (export-friendly: explicit size)."""
    size = tuple(ref.shape[-2:]) if isinstance(ref, torch.Tensor) else tuple(ref)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvNormAct(nn.Sequential):
    """Plain conv -> norm -> activation (conv1 of Table 1 and the decoder's convs)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer | None = nn.ReLU,
    ):
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False
            ),
            norm_layer(out_channels),
            act_layer() if act_layer is not None else nn.Identity(),
        )


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 (carries the stride) -> norm -> pointwise 1x1 -> norm -> activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer | None = nn.ReLU,
    ):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            norm_layer(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            norm_layer(out_channels),
            act_layer() if act_layer is not None else nn.Identity(),
        )


class XceptionBlock(nn.Module):
    """Three separable convs [mid, mid, out] plus a residual (Table 1 bracket).

    The first conv carries the stride; a strided 1x1 projection matches the shortcut when the
    shape changes, as in Xception's entry flow.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
    ):
        super().__init__()
        self.convs = nn.Sequential(
            SeparableConv(in_channels, mid_channels, stride, norm_layer, act_layer),
            SeparableConv(mid_channels, mid_channels, 1, norm_layer, act_layer),
            SeparableConv(mid_channels, out_channels, 1, norm_layer, act_layer=None),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvNormAct(
                in_channels, out_channels, 1, stride, norm_layer, act_layer=None
            )
        else:
            self.shortcut = nn.Identity()
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.shortcut(x))


class XceptionStage(nn.Sequential):
    """``repeats`` Xception blocks; the first one changes width and resolution."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        repeats: int,
        stride: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
    ):
        blocks = [
            XceptionBlock(in_channels, mid_channels, out_channels, stride, norm_layer, act_layer)
        ]
        blocks += [
            XceptionBlock(out_channels, mid_channels, out_channels, 1, norm_layer, act_layer)
            for _ in range(repeats - 1)
        ]
        super().__init__(*blocks)


class FCAttention(nn.Module):
    """FC attention (Sec. 3.3): global pool -> FC kept from ImageNet pretraining (C -> 1000)
    -> 1x1 conv back to C channels -> channel-wise multiplication with the features.

    The paper does not name the gate; a sigmoid (as in SE-Net, which the paper cites for it)
    keeps the product bounded.
    """

    def __init__(self, channels: int, fc_dim: int = 1000):
        super().__init__()
        self.fc = nn.Linear(channels, fc_dim)
        # No norm layer on a 1x1 vector: batch norm there breaks batch-1 training.
        self.proj = nn.Conv2d(fc_dim, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        encoded = self.fc(pooled)[:, :, None, None]
        return x * self.gate(self.proj(encoded))
