"""DFANet (Fig. 3): cascaded backbones, sub-network and sub-stage aggregation, the decoder."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone, StageInfo
from .blocks import ActLayer, ConvNormAct, NormLayer, resize_to
from .config import DFANetConfig


class Decoder(nn.Module):
    """Sec. 3.3 decoder: fuse the high-level tails of every backbone (HL), upsample x4, fuse the
    low-level enc2 features of every backbone (LL), add, smooth, classify, upsample x4.

    With neither HL nor LL it is the naive decoder of Tables 2-3: a classifier on the last tail,
    upsampled to the input size.
    """

    def __init__(
        self,
        config: DFANetConfig,
        tails: list[StageInfo],
        lows: list[StageInfo],
        num_classes: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
    ):
        super().__init__()
        width = config.decoder_channels
        self.high = (
            nn.ModuleList(
                ConvNormAct(t.channels, width, 1, 1, norm_layer, act_layer) for t in tails
            )
            if config.high_level
            else None
        )
        self.low = (
            nn.ModuleList(
                ConvNormAct(s.channels, width, 1, 1, norm_layer, act_layer) for s in lows
            )
            if config.low_level
            else None
        )
        self.smooth = (
            ConvNormAct(width, width, config.smooth_kernel, 1, norm_layer, act_layer)
            if config.low_level
            else None
        )
        fused = config.high_level or config.low_level
        self.classifier = nn.Conv2d(width if fused else tails[-1].channels, num_classes, 1)

    @staticmethod
    def _fuse(convs: nn.ModuleList, features: list[torch.Tensor]) -> torch.Tensor:
        """Project each feature, bring it to the first one's resolution and sum."""
        target = features[0]
        fused = resize_to(convs[0](target), target)
        for conv, feature in zip(list(convs)[1:], features[1:]):
            fused = fused + resize_to(conv(feature), target)
        return fused

    def forward(
        self,
        lows: list[torch.Tensor],
        tails: list[torch.Tensor],
        out_size: tuple[int, int] | None,
    ) -> torch.Tensor:
        """Logits resized (bilinear) to ``out_size``; None keeps the decoder's own resolution
        (1/4 of the input with HL or LL fusion), for heads that upsample less."""
        if self.high is None and self.low is None:
            return _maybe_resize(self.classifier(tails[-1]), out_size)
        fused = None
        if self.high is not None:
            # Fused at backbone 1's tail resolution (1/16), then x4 to the enc2 resolution (1/4).
            fused = resize_to(self._fuse(self.high, tails), lows[0])
        if self.low is not None:
            low = self._fuse(self.low, lows)
            fused = self.smooth(low if fused is None else fused + low)
        return _maybe_resize(self.classifier(fused), out_size)


def _maybe_resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    return x if size is None else resize_to(x, size)


class DFANet(nn.Module):
    """Deep Feature Aggregation Network built from a :class:`DFANetConfig`."""

    def __init__(
        self,
        config: DFANetConfig,
        num_classes: int = 19,
        in_channels: int = 3,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
    ):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        spec = config.backbone
        first = Backbone(spec, in_channels, norm_layer=norm_layer, act_layer=act_layer)
        backbones = [first]
        for _ in range(1, config.num_backbones):
            prev = backbones[-1]
            backbones.append(
                Backbone(
                    spec,
                    input_channels=prev.out_channels,
                    # The previous tail is upsampled to the previous enc2 resolution (x4).
                input_stride=prev.stage_info[0].stride,
                lateral_channels=tuple(s.channels for s in prev.stage_info),
                    with_stem=False,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                )
            )
        self.backbones = nn.ModuleList(backbones)
        self.decoder = Decoder(
            config,
            [self._tail_info(b) for b in backbones],
            [b.stage_info[config.low_level_stage] for b in backbones],
            num_classes,
            norm_layer,
            act_layer,
        )

    @staticmethod
    def _tail_info(backbone: Backbone) -> StageInfo:
        return StageInfo("tail", backbone.out_channels, backbone.out_stride)

    @property
    def stage_info(self) -> list[tuple[StageInfo, ...]]:
        """Per backbone: (enc2, enc3, enc4, tail) channels and output strides."""
        return [b.stage_info + (self._tail_info(b),) for b in self.backbones]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tails(x)[0]

    def decoder_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the decoder's resolution (1/4 of the input), before the final x4 bilinear
        upsampling: what the deployment heads upsample less (dfanet_core.deploy.export)."""
        lows, tails = self._features(x)
        return self.decoder(lows, tails, None)

    def forward_with_tails(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits at the input size and every backbone's attended tail (for deep supervision)."""
        lows, tails = self._features(x)
        return self.decoder(lows, tails, (x.shape[-2], x.shape[-1])), tails

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every backbone's low-level stage output and attended tail."""
        lows, tails = [], []
        stages, tail = self.backbones[0](x)
        lows.append(stages[self.config.low_level_stage])
        tails.append(tail)
        for backbone in self.backbones[1:]:
            # Sub-network aggregation: the previous tail, upsampled, is the next backbone's input;
            # sub-stage aggregation: the previous backbone's stages join by concatenation.
            stages, tail = backbone(resize_to(tail, stages[0]), lateral=stages)
            lows.append(stages[self.config.low_level_stage])
            tails.append(tail)
        return lows, tails
