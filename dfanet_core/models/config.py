"""DFANet variants as data: every paper variant and ablation is one frozen entry in one table.

Model classes take these configs and never branch on a variant name. Numbers cite the paper
(Li et al., "DFANet: Deep Feature Aggregation for Real-Time Semantic Segmentation", CVPR 2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageSpec:
    """One encoder stage of the modified Xception (Table 1)."""

    name: str
    # Output channels of the block, i.e. the third separable conv (Table 1: 48/96/192 for A).
    out_channels: int
    # Channels of the first two separable convs of each block (Table 1: 12/24/48 for A).
    mid_channels: int
    # Number of stacked blocks (Table 1: x4, x6, x4).
    repeats: int
    # Downsampling on the stage's first separable conv (Table 1 reading; docs/architecture.md).
    stride: int = 2


@dataclass(frozen=True)
class BackboneSpec:
    """Modified Xception A or B plus the FC attention tail (Table 1, Table 2 "Backbone")."""

    name: str
    # conv1: plain 3x3 conv, 8 channels, stride 2 (Table 1).
    stem_channels: int
    stages: tuple[StageSpec, ...]
    # FC attention (Sec. 3.3): global pool -> FC from ImageNet pretraining (1000-d) -> 1x1 conv.
    fc_attention: bool = True
    fc_dim: int = 1000
    stem_stride: int = 2

    @property
    def out_channels(self) -> int:
        return self.stages[-1].out_channels


@dataclass(frozen=True)
class PaperFigures:
    """What the paper reports for a variant, for side-by-side profiling. None = not reported."""

    # Compute at 1024x1024 in G multiply-accumulates (the paper's "FLOPs" match MACs).
    gmac_1024: float | None = None
    params_m: float | None = None
    # Cityscapes val mIoU (%) as reported, and the table it comes from.
    miou: float | None = None
    source: str = ""


@dataclass(frozen=True)
class DFANetConfig:
    """A full network: N cascaded backbones and a decoder (Fig. 3, Tables 3-5)."""

    name: str
    backbone: BackboneSpec
    # Number of cascaded backbones: sub-network aggregation feeds backbone n-1's tail into
    # backbone n; sub-stage aggregation concatenates stage i of backbone n-1 into stage i of
    # backbone n (Eq. 1-2).
    num_backbones: int = 3
    # Decoder "HL": fuse the high-level (FC attention) outputs of every backbone (Table 4).
    high_level: bool = True
    # Decoder "LL": fuse the low-level (enc2) outputs of every backbone (Table 4).
    low_level: bool = True
    # Channels the decoder reduces every fused feature to ("a few convolutions to reduce the
    # number of channels", Sec. 3.3).
    decoder_channels: int = 32
    # Kernel of the conv that smooths the fused high+low features at 1/4 resolution (Sec. 4.1.3).
    smooth_kernel: int = 3
    # Which encoder stage provides the low-level features (enc2, 1/4 of backbone 1's input).
    low_level_stage: int = 0
    paper: PaperFigures = field(default_factory=PaperFigures)
    description: str = ""


def _xception(
    name: str,
    stem: int,
    widths: tuple[int, int, int],
    repeats: tuple[int, int, int],
    fc_attention: bool = True,
) -> BackboneSpec:
    stages = tuple(
        StageSpec(name=f"enc{i + 2}", out_channels=w, mid_channels=w // 4, repeats=r)
        for i, (w, r) in enumerate(zip(widths, repeats))
    )
    return BackboneSpec(name=name, stem_channels=stem, stages=stages, fc_attention=fc_attention)


# Table 1: conv1 3x3/8/s2; enc2 [12,12,48]x4, enc3 [24,24,96]x6, enc4 [48,48,192]x4 (A);
# B halves... exactly: enc2 [8,8,32]x4, enc3 [16,16,64]x6, enc4 [32,32,128]x4.
XCEPTION_A = _xception("xception_a", 8, (48, 96, 192), (4, 6, 4), fc_attention=False)
XCEPTION_B = _xception("xception_b", 8, (32, 64, 128), (4, 6, 4), fc_attention=False)
BACKBONE_A = _xception("backbone_a", 8, (48, 96, 192), (4, 6, 4))
BACKBONE_B = _xception("backbone_b", 8, (32, 64, 128), (4, 6, 4))


def _single(name: str, spec: BackboneSpec, paper: PaperFigures, description: str) -> DFANetConfig:
    return DFANetConfig(
        name=name,
        backbone=spec,
        num_backbones=1,
        high_level=False,
        low_level=False,
        paper=paper,
        description=description,
    )


def _build_table() -> dict[str, DFANetConfig]:
    table: dict[str, DFANetConfig] = {}

    def add(cfg: DFANetConfig) -> None:
        table[cfg.name] = cfg

    # Table 2: single backbones, classifier upsampled x16.
    add(
        _single(
            "xception_a",
            XCEPTION_A,
            PaperFigures(1.6, None, 59.2, "Table 2"),
            "Xception A alone (no FC attention), head upsampled x16",
        )
    )
    add(
        _single(
            "xception_b",
            XCEPTION_B,
            PaperFigures(0.83, None, 55.4, "Table 2"),
            "Xception B alone (no FC attention), head upsampled x16",
        )
    )
    add(
        _single(
            "backbone_a",
            BACKBONE_A,
            PaperFigures(1.6, 2.1, 65.4, "Table 2/3"),
            "Xception A + FC attention, head upsampled x16",
        )
    )
    add(
        _single(
            "backbone_b",
            BACKBONE_B,
            PaperFigures(0.83, 1.4, 59.2, "Table 2/3"),
            "Xception B + FC attention, head upsampled x16",
        )
    )

    # Table 3: cascaded backbones with a naive decoder (last tail upsampled to the input size).
    table3 = {
        ("a", 2): (2.4, 4.9, 66.3),
        ("a", 3): (2.6, 7.6, 65.1),
        ("a", 4): (2.7, 10.2, 50.8),
        ("b", 2): (1.2, 3.1, 62.1),
        ("b", 3): (1.4, 4.7, 58.2),
        ("b", 4): (1.5, 6.3, 50.7),
    }
    specs = {"a": BACKBONE_A, "b": BACKBONE_B}
    for (key, n), (gmac, params, miou) in table3.items():
        add(
            DFANetConfig(
                name=f"backbone_{key}_x{n}",
                backbone=specs[key],
                num_backbones=n,
                high_level=False,
                low_level=False,
                paper=PaperFigures(gmac, params, miou, "Table 3"),
                description=f"{n} cascaded backbones {key.upper()}, naive decoder",
            )
        )

    # Table 4: decoder ablations.
    table4 = {
        ("a", 2, True, False): (2.5, 5.0, 67.1),
        ("a", 2, True, True): (3.2, 5.1, 69.4),
        ("a", 3, True, False): (2.7, 7.7, 69.6),
        ("b", 3, True, False): (1.5, 4.9, 67.6),
    }
    for (key, n, hl, ll), (gmac, params, miou) in table4.items():
        suffix = "_hl" + ("_ll" if ll else "")
        add(
            DFANetConfig(
                name=f"backbone_{key}_x{n}{suffix}",
                backbone=specs[key],
                num_backbones=n,
                high_level=hl,
                low_level=ll,
                paper=PaperFigures(gmac, params, miou, "Table 4"),
                description=f"{n} backbones {key.upper()}, decoder {suffix[1:].upper()}",
            )
        )

    # The full networks (Table 4 last rows, Table 5). A' is dfanet_a at 512x1024 input (a preset).
    add(
        DFANetConfig(
            name="dfanet_a",
            backbone=BACKBONE_A,
            num_backbones=3,
            paper=PaperFigures(3.4, 7.8, 71.9, "Table 4/5"),
            description="DFANet A: 3 x Backbone A, HL+LL decoder",
        )
    )
    add(
        DFANetConfig(
            name="dfanet_b",
            backbone=BACKBONE_B,
            num_backbones=3,
            paper=PaperFigures(2.1, 4.8, 68.4, "Table 4/5"),
            description="DFANet B: 3 x Backbone B, HL+LL decoder",
        )
    )
    return table


MODEL_CONFIGS: dict[str, DFANetConfig] = _build_table()

# Input-size presets (H, W) named in the paper. A' = dfanet_a at 512x1024 (Table 5).
INPUT_PRESETS: dict[str, tuple[int, int]] = {
    "cityscapes_ablation": (1024, 1024),  # Sec. 4.1, Tables 2-4
    "a_prime": (512, 1024),  # Table 5 "DFANet A'"
    "camvid_paper": (720, 960),  # Sec. 4.3
    "camvid_segnet": (360, 480),  # SegNet CamVid release used here
}
