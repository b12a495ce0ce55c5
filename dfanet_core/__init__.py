"""dfanet_core: the DFANet network, data, metrics, checkpoints and inference runtime. No rclpy.

The names below are imported on first use, so that light modules (``dfanet_core.files``,
``dfanet_core.deploy.options``, ``dfanet_core.paths``) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint",
    "default_checkpoint": "files",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "create_model": "models",
    "list_models": "models",
    "RuntimeOptions": "deploy.options",
    "Segmenter": "deploy.segmenter",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dfanet_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
