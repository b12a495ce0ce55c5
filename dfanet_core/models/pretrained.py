"""Load an ImageNet-pretrained :class:`XceptionClassifier` into every backbone of a DFANet."""

from __future__ import annotations

import torch

from .dfanet import DFANet


def load_pretrained_backbone(
    model: DFANet, state_dict: dict[str, torch.Tensor]
) -> list[str]:
    """Copy ``stem.*``, ``stages.*`` and ``fc.*`` into every backbone ("All these backbones have
    the same structure and are initialized with same pretrained weight", Sec. 3.3).

    Tensors whose shape differs (the first block of each stage of backbones 2-3 sees extra
    concatenated channels) are copied over the overlapping input channels. Returns the keys that
    were loaded into nothing, so callers can report them.
    """
    unused = set(state_dict)
    with torch.no_grad():
        for backbone in model.backbones:
            targets = dict(backbone.named_parameters()) | dict(backbone.named_buffers())
            for key, value in state_dict.items():
                name = key.replace("fc.", "attention.fc.", 1) if key.startswith("fc.") else key
                if name not in targets:
                    continue
                target = targets[name]
                if target.shape == value.shape:
                    target.copy_(value)
                elif (
                    target.dim() == value.dim()
                    and target.dim() >= 2
                    and target.shape[0] == value.shape[0]
                    and target.shape[2:] == value.shape[2:]
                ):
                    overlap = min(target.shape[1], value.shape[1])
                    target[:, :overlap].copy_(value[:, :overlap])
                else:
                    continue
                unused.discard(key)
    return sorted(unused)
