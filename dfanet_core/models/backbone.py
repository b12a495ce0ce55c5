"""The modified Xception backbone (Table 1) with FC attention, and its ImageNet classifier."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .blocks import ActLayer, ConvNormAct, FCAttention, NormLayer, XceptionStage
from .config import BackboneSpec


@dataclass(frozen=True)
class StageInfo:
    """Published stage metadata: the aggregation and decoder derive their widths from it."""

    name: str
    channels: int
    # Output stride relative to the network input.
    stride: int


class Backbone(nn.Module):
    """One backbone of the cascade: [stem] -> enc2 -> enc3 -> enc4 -> FC attention.

    Backbone ``n > 1`` has no stem: its input is the upsampled tail of backbone ``n - 1``, and its
    stage ``i`` also receives stage ``i`` of backbone ``n - 1`` by concatenation (Eq. 1).
    ``input_channels`` and ``lateral_channels`` say what arrives; ``input_stride`` where.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        input_channels: int = 3,
        input_stride: int = 1,
        lateral_channels: tuple[int, ...] | None = None,
        with_stem: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
    ):
        super().__init__()
        lateral = lateral_channels or (0,) * len(spec.stages)
        stride = input_stride
        channels = input_channels
        self.stem: nn.Module | None = None
        if with_stem:
            self.stem = ConvNormAct(
                input_channels, spec.stem_channels, 3, spec.stem_stride, norm_layer, act_layer
            )
            channels, stride = spec.stem_channels, stride * spec.stem_stride
        stages, infos = [], []
        for stage, extra in zip(spec.stages, lateral):
            stages.append(
                XceptionStage(
                    channels + extra,
                    stage.mid_channels,
                    stage.out_channels,
                    stage.repeats,
                    stage.stride,
                    norm_layer,
                    act_layer,
                )
            )
            channels, stride = stage.out_channels, stride * stage.stride
            infos.append(StageInfo(stage.name, channels, stride))
        self.stages = nn.ModuleList(stages)
        self.attention: nn.Module = (
            FCAttention(channels, spec.fc_dim) if spec.fc_attention else nn.Identity()
        )
        self.stage_info: tuple[StageInfo, ...] = tuple(infos)
        self.out_channels = channels
        self.out_stride = stride

    def forward(
        self, x: torch.Tensor, lateral: list[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return every stage's output and the attended tail."""
        if self.stem is not None:
            x = self.stem(x)
        outputs = []
        for i, stage in enumerate(self.stages):
            if lateral is not None:
                x = torch.cat([x, lateral[i]], dim=1)
            x = stage(x)
            outputs.append(x)
        return outputs, self.attention(x)


class XceptionClassifier(nn.Module):
    """ImageNet classifier around Backbone A/B for pretraining (Sec. 3.3, 4.1.1).

    Its ``fc`` is the layer FC attention keeps: ``stem.*``, ``stages.*`` and ``fc.*`` load into
    every DFANet backbone through :func:`load_pretrained_backbone`.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        num_classes: int = 1000,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = nn.ReLU,
    ):
        super().__init__()
        body = Backbone(
            replace(spec, fc_attention=False), norm_layer=norm_layer, act_layer=act_layer
        )
        self.spec = spec
        self.stem = body.stem
        self.stages = body.stages
        self.fc = nn.Linear(body.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))
