"""Checkpoints: weights plus metadata in one safetensors file. Loading never executes pickled code.

The metadata (variant, classes, palette, normalization, input size, ...) travels as JSON in the
safetensors header, so anything that loads the weights knows how to feed and read the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .files import atomic_write_bytes, default_checkpoint
from .models import create_model, list_models
from .models.dfanet import DFANet

__all__ = [
    "CheckpointError",
    "default_checkpoint",  # the shipped weights: dfanet_core.files.default_checkpoint
    "default_meta",
    "load_checkpoint",
    "load_state",
    "read_checkpoint",
    "save_checkpoint",
    "save_untrained",
    "shipped_or_untrained",
]

FORMAT_VERSION = 1
META_KEY = "dfanet_meta"
REQUIRED_META = (
    "variant",
    "num_classes",
    "class_names",
    "palette",
    "mean",
    "std",
    "channel_order",
    "input_size",
)


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, corrupt, or does not fit what was asked for."""


def default_meta(variant: str, num_classes: int, **extra: Any) -> dict[str, Any]:
    """Metadata for a model with no dataset attached: generic names, a fixed palette."""
    rng = torch.Generator().manual_seed(0)
    palette = torch.randint(0, 256, (num_classes, 3), generator=rng).tolist()
    meta = {
        "variant": variant,
        "num_classes": num_classes,
        "class_names": [f"class_{i}" for i in range(num_classes)],
        "palette": palette,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "RGB",
        "input_size": [1024, 1024],
        "ignore_index": 255,
        "dataset": None,
        "trained": False,
    }
    meta.update(extra)
    return meta


def save_checkpoint(
    path: str | os.PathLike,
    model: DFANet,
    meta: dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write weights + metadata atomically. ``dtype=torch.float16`` stores the parameters in half
    precision (shipping); buffers such as BN running statistics stay float32."""
    meta = dict(meta)
    meta.setdefault("variant", model.config.name)
    meta.setdefault("num_classes", model.num_classes)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta is missing {missing}; required: {list(REQUIRED_META)}")
    if meta["variant"] != model.config.name or meta["num_classes"] != model.num_classes:
        raise ValueError(
            f"meta says {meta['variant']}/{meta['num_classes']} classes but the model "
            f"is {model.config.name}/{model.num_classes} classes"
        )
    meta["format_version"] = FORMAT_VERSION
    tensors = {}
    parameters = {name for name, _ in model.named_parameters()}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and name in parameters and tensor.is_floating_point():
            # Only parameters shrink, and only when they fit: BN running variances of a trained
            # DFANet exceed float16's range (65504) and would load as inf.
            converted = tensor.to(dtype)
            if torch.isfinite(converted).all():
                tensor = converted
        tensors[name] = tensor.contiguous()
    blob = save(tensors, metadata={META_KEY: json.dumps(meta)})
    return atomic_write_bytes(path, blob)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and metadata without building a model; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][META_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a dfanet checkpoint (truncated, corrupt or another format: {exc}); "
            "write one with dfanet_core.save_checkpoint or training/train.py"
        ) from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {missing}")
    return tensors, meta


def load_checkpoint(
    path: str | os.PathLike,
    *,
    variant: str | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[DFANet, dict[str, Any]]:
    """Build the model the checkpoint describes, load its weights (float32) and return
    ``(model in eval mode, meta)``. ``variant``/``num_classes``, when given, must match."""
    tensors, meta = read_checkpoint(path)
    if variant is not None and variant != meta["variant"]:
        raise CheckpointError(f"{path} holds variant {meta['variant']!r}, expected {variant!r}")
    if num_classes is not None and num_classes != meta["num_classes"]:
        raise CheckpointError(f"{path} has {meta['num_classes']} classes, expected {num_classes}")
    if meta["variant"] not in list_models():
        raise CheckpointError(
            f"{path} holds unknown variant {meta['variant']!r}; valid: {', '.join(list_models())}"
        )
    model = create_model(meta["variant"], num_classes=int(meta["num_classes"]))
    load_state(model, tensors, source=str(path))
    return model.to(map_location).eval(), meta


def load_state(model: DFANet, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly, naming the source and the mismatch instead of torch's wall."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape
    )
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {keys[:3]}{'...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", wrong),
            )
            if keys
        )
        raise CheckpointError(
            f"{source} does not fit {model.config.name} with "
            f"{model.num_classes} classes ({details})"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


def save_untrained(path: str | os.PathLike) -> Path:
    """Write a seeded (torch.manual_seed(0)), untrained ``dfanet_b`` with CamVid's classes and
    input size, ``meta['trained'] = False``: the stand-in when no weights are shipped."""
    from .data import CAMVID

    torch.manual_seed(0)
    model = create_model("dfanet_b", num_classes=CAMVID.num_classes).eval()
    meta = {**CAMVID.meta(), "variant": "dfanet_b", "input_size": [360, 480], "trained": False}
    return save_checkpoint(path, model, meta)


def shipped_or_untrained(folder: str | os.PathLike,
                         given: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """``(checkpoint, trained)``: ``given`` when set, else the shipped weights, else
    :func:`save_untrained` in ``folder`` (reused when already there): for the demo, the
    benchmarks and the one-image tool on a checkout without weights. ``trained`` is the
    checkpoint's ``meta['trained']``."""
    found = Path(given) if given else default_checkpoint()
    if found is not None:
        _, meta = read_checkpoint(found)
        return found, bool(meta.get("trained", True))
    path = Path(folder) / "untrained_dfanet_b_camvid.safetensors"
    if not path.is_file():
        save_untrained(path)
    return path, False
