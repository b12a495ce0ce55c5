"""Training losses: pixel-wise cross-entropy, class-weighted or with online hard example
mining (OHEM), summed over the main output and the auxiliary deep-supervision heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "ohem")


class SegmentationLoss(nn.Module):
    """Cross-entropy over non-ignored pixels.

    - ``kind="ce"``: the (optionally class-weighted) loss summed over valid pixels; divide by
      the valid-pixel count (``forward`` returns both) for the mean.
    - ``kind="ohem"``: only pixels whose true-class probability is below ``ohem_threshold``,
      but at least ``ohem_min_fraction`` of the valid pixels (the hardest ones), as in the
      public DFANet-from-scratch Cityscapes port and BiSeNet; mean over the kept pixels.
    """

    def __init__(
        self,
        kind: str = "ce",
        weight: torch.Tensor | None = None,
        ignore_index: int = 255,
        ohem_threshold: float = 0.7,
        ohem_min_fraction: float = 1 / 16,
    ):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        self.kind = kind
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)
        self.ohem_loss = -math.log(ohem_threshold)
        self.ohem_min_fraction = ohem_min_fraction

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss_sum, normalizer)``: the loss to minimise is ``loss_sum / normalizer``."""
        logits = logits.float()
        if self.kind == "ce":
            loss_sum = F.cross_entropy(
                logits, targets, self.weight, ignore_index=self.ignore_index, reduction="sum"
            )
            valid = (targets != self.ignore_index).sum().to(loss_sum.dtype)
            return loss_sum, valid
        pixel = F.cross_entropy(
            logits, targets, self.weight, ignore_index=self.ignore_index, reduction="none"
        ).flatten()
        valid = (targets != self.ignore_index).flatten()
        # Without boolean indexing or .item(): no host synchronisation on a GPU. Ignored
        # pixels sort last (loss -1); keep the first max(#hard, min_kept) of the sorted losses.
        ranked = torch.where(valid, pixel, pixel.new_tensor(-1.0)).sort(descending=True).values
        valid_count = valid.sum()
        min_kept = (valid_count.float() * self.ohem_min_fraction).ceil().clamp(min=1)
        kept = torch.maximum((ranked > self.ohem_loss).sum().float(), min_kept)
        kept = torch.minimum(kept, valid_count.float().clamp(min=1))
        keep = torch.arange(ranked.numel(), device=ranked.device) < kept
        return (ranked * keep).sum(), kept


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
