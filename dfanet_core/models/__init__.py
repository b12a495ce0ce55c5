"""DFANet network: variants as data, a registry, the blocks and the backbone."""

from .backbone import Backbone, StageInfo, XceptionClassifier
from .config import INPUT_PRESETS, MODEL_CONFIGS, BackboneSpec, DFANetConfig, StageSpec
from .dfanet import Decoder, DFANet
from .pretrained import load_pretrained_backbone
from .registry import count_parameters, create_model, get_config, list_models

__all__ = [
    "Backbone",
    "BackboneSpec",
    "DFANet",
    "DFANetConfig",
    "Decoder",
    "INPUT_PRESETS",
    "MODEL_CONFIGS",
    "StageInfo",
    "StageSpec",
    "XceptionClassifier",
    "count_parameters",
    "create_model",
    "get_config",
    "list_models",
    "load_pretrained_backbone",
]
