"""The segmentation node's parameters: declared once (name, default, description, constraints),
validated into a typed, frozen :class:`NodeConfig`, and turned into what the runtime takes
(:func:`model_source`, :func:`runtime_options`). No rclpy, no torch.

Every rejected value raises :class:`ParameterError`, whose message names the parameter, the value
and what is allowed, so a bad YAML file stops the node at start-up with a sentence a user can act
on. All parameters are read-only at run time (changing the model or QoS needs a restart). The
runtime choices (backends, precisions, resize modes) are dfanet_core's own.
"""

from __future__ import annotations

import array
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dfanet_core.deploy.options import (
    BACKENDS,
    PRECISIONS,
    RESIZE_MODES,
    RuntimeOptions,
    TensorRTOptions,
)

from .qos import MAX_DEPTH, QOS_PRESETS

INPUT_TYPES = ("raw", "compressed")
COLOR_MODES = ("mask", "overlay")
CONFIDENCE_ENCODINGS = ("mono8", "32FC1")
# Parameters rclpy declares on every node; not ours, never "unknown".
RCLPY_PARAMETERS = ("use_sim_time", "start_type_description_service")


class ParameterError(ValueError):
    """A parameter value that the node cannot run with; ``name`` is the parameter."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"parameter '{name}': {problem}")
        self.name = name


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: default (its type is the parameter's type), description, constraints."""

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    min_exclusive: bool = False

    @property
    def constraints(self) -> str:
        """Human-readable constraints (ParameterDescriptor.additional_constraints)."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        parts = []
        if self.min_value is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {self.min_value:g}")
        if self.max_value is not None:
            parts.append(f"<= {self.max_value:g}")
        return " and ".join(parts)


_S = ParamSpec
PARAMETERS: tuple[ParamSpec, ...] = (
    # model and runtime
    _S("checkpoint", "", "Checkpoint file (.safetensors); empty: the shipped weights "
       "(the package's share/dfanet_ros/weights, else the source tree's weights/)"),
    _S("backend", "auto", "Inference backend; auto picks tensorrt, then torch on CUDA, "
       "then onnxruntime", BACKENDS),
    _S("precision", "fp32", "Numeric precision of the backend", PRECISIONS),
    _S("input_size", [0, 0], "Network input [height, width]; [0, 0]: the size the checkpoint "
       "was trained for"),
    _S("resize_mode", "stretch", "How camera images are fitted to the network input",
       RESIZE_MODES),
    _S("engine_cache_dir", "", "Folder for exported ONNX models and TensorRT engines; empty: "
       "the default cache folder"),
    _S("onnx_path", "", "Use this ONNX model instead of exporting one from the checkpoint"),
    _S("force_engine_update", False, "Rebuild the TensorRT engine even if a matching one "
       "is cached"),
    _S("build_only", False, "Load the model (build the engine if needed), then exit 0"),
    _S("gpu_id", 0, "CUDA device index for GPU backends", min_value=0),
    _S("threads", 0, "CPU threads for inference; 0: the backend's default", min_value=0),
    # input
    _S("input_type", "raw", "raw: sensor_msgs/Image on 'image'; compressed: "
       "sensor_msgs/CompressedImage (jpeg/png) on 'image/compressed'", INPUT_TYPES),
    _S("input_qos", "SENSOR_DATA", "QoS preset of the image subscription", QOS_PRESETS),
    _S("input_depth", 1, "History depth of the image subscription", min_value=1,
       max_value=MAX_DEPTH),
    _S("max_input_pixels", 50_000_000, "Larger images are rejected as bad frames",
       min_value=1),
    # outputs
    _S("output_qos", "DEFAULT", "QoS preset of the mask, colour and confidence publishers",
       QOS_PRESETS),
    _S("output_depth", 1, "History depth of the output publishers", min_value=1,
       max_value=MAX_DEPTH),
    _S("publish_color", True, "Offer segmentation/color (computed only while it has "
       "subscribers)"),
    _S("color_mode", "mask", "segmentation/color content: the colour mask or an overlay on "
       "the camera image", COLOR_MODES),
    _S("overlay_alpha", 0.5, "Mask opacity in overlay mode", min_value=0.0, max_value=1.0),
    _S("publish_confidence", False, "Publish segmentation/confidence (top-class probability)"),
    _S("confidence_encoding", "mono8", "mono8: probability x 255; 32FC1: float 0..1",
       CONFIDENCE_ENCODINGS),
    # diagnostics
    _S("expected_rate_hz", 0.0, "WARN when the output rate falls below this; 0: no "
       "expectation", min_value=0.0),
    _S("max_drop_ratio", 0.5, "WARN when more than this fraction of frames is dropped",
       min_value=0.0, max_value=1.0),
    _S("no_input_timeout_s", 5.0, "ERROR when no image arrived for this long while the input "
       "topic has a publisher (WARN without one)", min_value=0.0, min_exclusive=True),
    _S("error_window_s", 5.0, "Failures (bad frames, backend errors) keep the status ERROR "
       "for this long", min_value=0.0, min_exclusive=True),
    _S("diagnostics_period_s", 1.0, "Period of the /diagnostics status", min_value=0.0,
       min_exclusive=True),
    _S("hardware_id", "", "diagnostics hardware_id; empty: backend and device"),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


@dataclass(frozen=True)
class NodeConfig:
    """Validated parameter values (one attribute per entry of PARAMETERS)."""

    checkpoint: str
    backend: str
    precision: str
    input_size: tuple[int, int] | None  # None: the checkpoint's
    resize_mode: str
    engine_cache_dir: str
    onnx_path: str
    force_engine_update: bool
    build_only: bool
    gpu_id: int
    threads: int
    input_type: str
    input_qos: str
    input_depth: int
    max_input_pixels: int
    output_qos: str
    output_depth: int
    publish_color: bool
    color_mode: str
    overlay_alpha: float
    publish_confidence: bool
    confidence_encoding: str
    expected_rate_hz: float
    max_drop_ratio: float
    no_input_timeout_s: float
    error_window_s: float
    diagnostics_period_s: float
    hardware_id: str

    @property
    def input_topic(self) -> str:
        """The relative topic the node subscribes to for this input type."""
        return "image/compressed" if self.input_type == "compressed" else "image"


def defaults() -> dict[str, Any]:
    """{name: default} for every parameter."""
    return {spec.name: spec.default for spec in PARAMETERS}


def config_from_values(values: Mapping[str, Any]) -> NodeConfig:
    """Validate parameter values (missing ones take their default) into a NodeConfig.

    Raises ParameterError naming the first offending parameter and the allowed values.
    """
    merged = defaults()
    merged.update(values)
    checked = {spec.name: _check(spec, merged[spec.name]) for spec in PARAMETERS}
    size = checked["input_size"]
    checked["input_size"] = None if size == (0, 0) else size
    return NodeConfig(**checked)


def unknown_parameters(names: Iterable[str]) -> list[str]:
    """Sentences for override names that are not parameters of the node (typos in YAML files
    are otherwise ignored silently), each with the closest known name when there is one."""
    known = set(SPECS) | set(RCLPY_PARAMETERS)
    messages = []
    for name in sorted(set(names) - known):
        close = difflib.get_close_matches(name, list(SPECS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        messages.append(f"unknown parameter '{name}' ignored{hint}")
    return messages


def _check(spec: ParamSpec, value: Any) -> Any:
    """Type, choice and range check of one value; returns the value in its canonical type."""
    default = spec.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParameterError(spec.name, f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(spec.name, f"expected an integer, got {value!r}")
        _check_range(spec, value)
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(spec.name, f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ParameterError(spec.name, f"expected a finite number, got {value!r}")
        _check_range(spec, value)
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ParameterError(spec.name, f"expected a string, got {value!r}")
        if spec.choices:
            # QoS preset names are matched case-insensitively, like rclpy's own short keys.
            fold = str.upper if spec.name.endswith("_qos") else str
            allowed = {fold(choice): choice for choice in spec.choices}
            if fold(value) not in allowed:
                raise ParameterError(
                    spec.name, f"invalid value {value!r}; allowed: {', '.join(spec.choices)}"
                )
            return allowed[fold(value)]
        return value
    return _check_size(spec, value)


def _check_range(spec: ParamSpec, value: float) -> None:
    low, high = spec.min_value, spec.max_value
    too_low = low is not None and (value <= low if spec.min_exclusive else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        raise ParameterError(
            spec.name, f"value {value!r} out of range; allowed: {spec.constraints}"
        )


def _check_size(spec: ParamSpec, value: Any) -> tuple[int, int]:
    """input_size: [height, width], both positive, or [0, 0]."""
    ok = (
        isinstance(value, (list, tuple, array.array))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        raise ParameterError(spec.name, f"expected [height, width] integers, got {value!r}")
    height, width = (int(v) for v in value)
    if (height, width) != (0, 0) and (height < 32 or width < 32):
        raise ParameterError(
            spec.name,
            f"invalid size {list(value)}; allowed: [height, width] >= 32 each, or [0, 0] "
            "for the checkpoint's size",
        )
    return height, width


def field_names() -> tuple[str, ...]:
    """NodeConfig's attributes (equal to the parameter names; checked by the tests)."""
    return tuple(f.name for f in fields(NodeConfig))


def model_source(config: NodeConfig) -> Path:
    """The file to load: ``onnx_path`` when set, else ``checkpoint``, else the shipped weights
    (dfanet_core.files.resolve_checkpoint). Raises ParameterError when there is none (before any
    model code is imported)."""
    from dfanet_core.files import resolve_checkpoint

    name = "onnx_path" if config.onnx_path else "checkpoint"
    try:
        return resolve_checkpoint(getattr(config, name))
    except FileNotFoundError as exc:
        raise ParameterError(name, str(exc)) from None


def runtime_options(config: NodeConfig, cuda_available: bool) -> RuntimeOptions:
    """How the node's model runs, from its parameters: the one place they meet the runtime."""
    cache = Path(config.engine_cache_dir) if config.engine_cache_dir else None
    on_gpu = cuda_available and config.backend != "onnxruntime"
    from_onnx = bool(config.onnx_path)  # an ONNX file fixes its own input size
    return RuntimeOptions(
        backend=config.backend,
        precision=config.precision,
        device=f"cuda:{config.gpu_id}" if on_gpu else None,
        input_size=None if from_onnx else config.input_size,
        resize_mode=config.resize_mode,
        intra_op_threads=config.threads or None,
        onnx_cache_dir=None if from_onnx else cache,
        engine_cache_dir=cache,
        tensorrt=TensorRTOptions(force_rebuild=config.force_engine_update),
    )
