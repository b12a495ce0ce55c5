"""One registry: ``create_model(name, **overrides)`` and ``list_models()``."""

from __future__ import annotations

from dataclasses import fields, replace

from torch import nn

from .config import MODEL_CONFIGS, DFANetConfig
from .dfanet import DFANet

_MODEL_KWARGS = {"norm_layer", "act_layer", "in_channels"}


def list_models() -> list[str]:
    """Names of every registered variant (paper networks, single backbones and ablations)."""
    return sorted(MODEL_CONFIGS)


def get_config(name: str) -> DFANetConfig:
    """The frozen config of a registered variant; unknown names raise and list the valid ones."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(list_models())}"
        ) from None


def create_model(name: str, *, num_classes: int = 19, **overrides) -> DFANet:
    """Build a registered variant.

    ``overrides`` replace config fields (e.g. ``decoder_channels``) or pass ``norm_layer``,
    ``act_layer`` or ``in_channels`` to the model; the registry itself is never mutated.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    config = get_config(name)
    model_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in _MODEL_KWARGS}
    valid = {f.name for f in fields(DFANetConfig)} - {"name"}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(
            f"unknown override(s) {sorted(unknown)} for {name!r}; "
            f"valid: {sorted(valid | _MODEL_KWARGS)}"
        )
    if overrides:
        config = replace(config, **overrides)
    return DFANet(config, num_classes=num_classes, **model_kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
