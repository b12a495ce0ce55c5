"""dfanet_core: the DFANet network, data, metrics, checkpoints and inference runtime. No rclpy."""

from __future__ import annotations

from .checkpoint import CheckpointError, default_checkpoint, load_checkpoint, save_checkpoint
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Segmenter",
    "create_model",
    "default_checkpoint",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
    "__version__",
]


def __getattr__(name: str):
    # The Segmenter pulls in the runtime backends; import it only when asked for.
    if name == "Segmenter":
        from .deploy.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'dfanet_core' has no attribute {name!r}")
