"""The segmentation node's parameters: declared once (name, default, description, constraints),
validated into a typed, frozen :class:`NodeConfig`, and turned into what the runtime takes
(:func:`model_source`, :func:`runtime_options`). No rclpy, no torch.

Every rejected value raises :class:`ParameterError`, whose message names the parameter, the value
and what is allowed, so a bad YAML file stops the node at start-up (and a bad ``ros2 param set``
is refused) with a sentence a user can act on. Each parameter says how it may change while the
node runs (:data:`LIVE`: from the next frame on; :data:`RELOAD`: the model is reloaded beside the
one in service; :data:`RESTART`: read-only, topics and QoS are fixed for the node's life);
:func:`review_change` checks a change against that. The runtime choices (backends, precisions,
resize modes) are dfanet_core's own.
"""

from __future__ import annotations

import array
import contextlib
import difflib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dfanet_core.deploy.options import (
    BACKENDS,
    COMPILE_MODES,
    HEADS,
    PRECISIONS,
    RESIZE_MODES,
    RuntimeOptions,
    TensorRTOptions,
)

from .qos import MAX_DEPTH, QOS_PRESETS

INPUT_TYPES = ("raw", "compressed")
COLOR_MODES = ("mask", "overlay")
CONFIDENCE_ENCODINGS = ("mono8", "32FC1")
# Parameters rclpy declares on every node (and the QoS overrides it declares per topic with
# QoSOverridingOptions: qos_overrides.<topic>.<publisher|subscription>.<policy>); never "unknown".
RCLPY_PARAMETERS = ("use_sim_time", "start_type_description_service")
RCLPY_PREFIXES = ("qos_overrides.",)
# How a parameter may change at run time (ParamSpec.change).
LIVE, RELOAD, RESTART = "live", "reload", "restart"
#: The largest value a range descriptor can state for an unbounded integer parameter.
INT_MAX = 2**63 - 1


class ParameterError(ValueError):
    """A parameter value that the node cannot run with; ``name`` is the parameter."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"parameter '{name}': {problem}")
        self.name = name


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: default (its type is the parameter's type), description, constraints
    (choices, or an inclusive range) and how it may change at run time (LIVE, RELOAD, RESTART)."""

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    change: str = RESTART

    @property
    def constraints(self) -> str:
        """Human-readable constraints (ParameterDescriptor.additional_constraints)."""
        if self.choices:
            return "one of: " + _listed(self.choices)
        parts = []
        if self.min_value is not None:
            parts.append(f">= {self.min_value:g}")
        if self.max_value is not None:
            parts.append(f"<= {self.max_value:g}")
        return " and ".join(parts)

    @property
    def value_range(self) -> tuple[str, Any, Any] | None:
        """``('integer' | 'floating_point', from, to)`` for a numeric parameter with a range (the
        ParameterDescriptor's IntegerRange / FloatingPointRange), else None."""
        if self.min_value is None and self.max_value is None:
            return None
        if isinstance(self.default, int) and not isinstance(self.default, bool):
            low = -INT_MAX - 1 if self.min_value is None else int(self.min_value)
            return "integer", low, INT_MAX if self.max_value is None else int(self.max_value)
        low = -math.inf if self.min_value is None else float(self.min_value)
        return "floating_point", low, math.inf if self.max_value is None else self.max_value


_S = ParamSpec
PARAMETERS: tuple[ParamSpec, ...] = (
    # model and runtime: a change reloads the model beside the one in service
    _S("checkpoint", "", "Checkpoint file (.safetensors); empty: the shipped weights "
       "(the package's share/dfanet_ros/weights, else the source tree's weights/)",
       change=RELOAD),
    _S("backend", "auto", "Inference backend; auto picks tensorrt, then torch on CUDA, "
       "then onnxruntime", BACKENDS, change=RELOAD),
    _S("precision", "fp32", "Numeric precision of the backend", PRECISIONS, change=RELOAD),
    _S("input_size", [0, 0], "Network input [height, width]; [0, 0]: the size the checkpoint "
       "was trained for", change=RELOAD),
    _S("resize_mode", "stretch", "How camera images are fitted to the network input",
       RESIZE_MODES, change=RELOAD),
    _S("head", "fast", "Output head: fast (class ids from the decoder's 1/4-resolution logits, "
       "upsampled x2) or exact (full-resolution logits, then argmax)", HEADS, change=RELOAD),
    _S("compile_mode", "", "torch backend only: torch.compile (inductor) mode, compiled at "
       "start-up (progress logged); empty: eager", ("", *COMPILE_MODES), change=RELOAD),
    _S("engine_cache_dir", "", "Folder for exported ONNX models and TensorRT engines; empty: "
       "the default cache folder", change=RELOAD),
    _S("onnx_path", "", "Use this ONNX model instead of exporting one from the checkpoint",
       change=RELOAD),
    _S("force_engine_update", False, "Rebuild the TensorRT engine even if a matching one "
       "is cached", change=RELOAD),
    _S("build_only", False, "Load the model (build the engine if needed), then exit 0"),
    _S("gpu_id", 0, "CUDA device index for GPU backends", min_value=0, change=RELOAD),
    _S("threads", 0, "CPU threads for inference; 0: the backend's default", min_value=0,
       change=RELOAD),
    _S("managed", False, "Run as a lifecycle (managed) node: configure loads the model, "
       "activate subscribes and publishes, deactivate stops inference, cleanup frees the model"),
    # input
    _S("input_type", "raw", "raw: sensor_msgs/Image on 'image'; compressed: "
       "sensor_msgs/CompressedImage (jpeg/png) on 'image/compressed'", INPUT_TYPES),
    _S("input_qos", "SENSOR_DATA", "QoS preset of the image subscription", QOS_PRESETS),
    _S("input_depth", 1, "History depth of the image subscription", min_value=1,
       max_value=MAX_DEPTH),
    _S("max_input_pixels", 50_000_000, "Larger images are rejected as bad frames",
       min_value=1, change=LIVE),
    _S("use_camera_info", True, "Subscribe to 'camera_info' (beside the image) and republish "
       "it on segmentation/camera_info with each mask's header"),
    _S("lazy", True, "No inference while nobody subscribes to any output (mask, compressed "
       "mask, colour, confidence, camera_info); false: segment every frame (recording)",
       change=LIVE),
    # outputs
    _S("output_qos", "DEFAULT", "QoS preset of the mask, colour and confidence publishers",
       QOS_PRESETS),
    _S("output_depth", 1, "History depth of the output publishers", min_value=1,
       max_value=MAX_DEPTH),
    _S("min_confidence", 0.0, "Pixels whose top-class probability is below this become 255 "
       "(no prediction) in the mask; 0: off", min_value=0.0, max_value=1.0, change=LIVE),
    _S("publish_compressed_mask", True, "Offer segmentation/mask/compressed (PNG, lossless; "
       "encoded only while it has subscribers)"),
    _S("png_compression_level", 1, "zlib level of the compressed mask (0: none, 9: smallest)",
       min_value=0, max_value=9, change=LIVE),
    _S("publish_color", True, "Offer segmentation/color (computed only while it has "
       "subscribers)", change=LIVE),
    _S("color_mode", "mask", "segmentation/color content: the colour mask or an overlay on "
       "the camera image", COLOR_MODES, change=LIVE),
    _S("overlay_alpha", 0.5, "Mask opacity in overlay mode", min_value=0.0, max_value=1.0,
       change=LIVE),
    _S("publish_confidence", False, "Publish segmentation/confidence (top-class probability)",
       change=LIVE),
    _S("confidence_encoding", "mono8", "mono8: probability x 255; 32FC1: float 0..1",
       CONFIDENCE_ENCODINGS, change=LIVE),
    # diagnostics
    _S("expected_rate_hz", 0.0, "WARN when the output rate falls below this; 0: no "
       "expectation", min_value=0.0, change=LIVE),
    _S("max_drop_ratio", 0.5, "WARN when more than this fraction of frames is dropped",
       min_value=0.0, max_value=1.0, change=LIVE),
    _S("no_input_timeout_s", 5.0, "ERROR when no image arrived for this long while the input "
       "topic has a publisher (WARN without one)", min_value=0.1, change=LIVE),
    _S("error_window_s", 5.0, "Failures (bad frames, backend errors) keep the status ERROR "
       "for this long", min_value=0.1, change=LIVE),
    _S("diagnostics_period_s", 1.0, "Period of the /diagnostics status", min_value=0.01),
    _S("hardware_id", "", "diagnostics hardware_id; empty: backend and device", change=LIVE),
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
    head: str
    compile_mode: str
    engine_cache_dir: str
    onnx_path: str
    force_engine_update: bool
    build_only: bool
    gpu_id: int
    threads: int
    managed: bool
    input_type: str
    input_qos: str
    input_depth: int
    max_input_pixels: int
    use_camera_info: bool
    lazy: bool
    output_qos: str
    output_depth: int
    min_confidence: float
    publish_compressed_mask: bool
    png_compression_level: int
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
        if name.startswith(RCLPY_PREFIXES):
            continue
        close = difflib.get_close_matches(name, list(SPECS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        messages.append(f"unknown parameter '{name}' ignored{hint}")
    return messages


def _listed(choices: Iterable[str]) -> str:
    """Choices for a message; the empty string shown as ``""`` (e.g. compile_mode's "eager")."""
    return ", ".join(choice if choice else '""' for choice in choices)


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
                    spec.name, f"invalid value {value!r}; allowed: {_listed(spec.choices)}"
                )
            return allowed[fold(value)]
        return value
    return _check_size(spec, value)


def _check_range(spec: ParamSpec, value: float) -> None:
    low, high = spec.min_value, spec.max_value
    too_low = low is not None and value < low
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


@dataclass(frozen=True)
class Change:
    """A run-time parameter change that passed :func:`review_change`."""

    config: NodeConfig  # the configuration with the change applied
    changed: frozenset[str]  # the parameters whose value differs from before
    reload: bool  # a model parameter changed: the model must be reloaded


def review_change(config: NodeConfig, values: Mapping[str, Any]) -> Change:
    """Check new values of some of the node's parameters against the running ``config``.

    Raises ParameterError for a value outside its type, choices or range, and for a parameter
    that cannot change while the node runs (RESTART; rclpy refuses those as read-only first).
    A model source that does not exist is refused here too, before any reload starts."""
    for name in values:
        if SPECS[name].change == RESTART:
            raise ParameterError(name, "cannot change while the node runs (topics, QoS and the "
                                 "node's mode are fixed for its life); restart the node")
    current = {name: getattr(config, name) for name in field_names()}
    current["input_size"] = list(config.input_size or (0, 0))
    updated = config_from_values({**current, **values})
    changed = frozenset(n for n in values if getattr(updated, n) != getattr(config, n))
    reload = any(SPECS[name].change == RELOAD for name in changed)
    if reload:
        model_source(updated)
    return Change(updated, changed, reload)


class LiveParameters:
    """A node's run-time parameter changes, as rclpy's on-set / post-set callbacks: :meth:`review`
    checks a change of the node's parameters (:func:`review_change`) and refuses outside changes
    of ``facts`` (values the node sets itself); :meth:`applied` hands an accepted change to
    ``apply``; inside :meth:`own` the node sets its own parameters past both."""

    def __init__(self, config: Callable[[], NodeConfig], reloading: Callable[[], bool],
                 apply: Callable[[Change], None], facts: Iterable[str] = ()) -> None:
        self._config, self._reloading, self._apply = config, reloading, apply
        self._facts = frozenset(facts)
        self._pending: Change | None = None
        self._own = False

    def review(self, parameters: list[Any]) -> Any:
        """rcl_interfaces SetParametersResult for rclpy Parameters about to be set."""
        from rcl_interfaces.msg import SetParametersResult

        if self._own:
            return SetParametersResult(successful=True)
        refused = sorted(p.name for p in parameters if p.name in self._facts)
        if refused:
            return SetParametersResult(successful=False, reason=f"parameter '{refused[0]}': set "
                                       "by the node from the model (read-only)")
        ours = {p.name: p.value for p in parameters if p.name in SPECS}
        try:
            change = review_change(self._config(), ours) if ours else None
            if change is not None and change.reload and self._reloading():
                raise ParameterError(min(change.changed), "a model reload is under way; set it "
                                     "again when the diagnostics no longer show 'reload'")
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._pending = change
        return SetParametersResult(successful=True)

    def applied(self, parameters: list[Any]) -> None:
        """After rclpy stored the values: apply the change :meth:`review` accepted."""
        change, self._pending = self._pending, None
        if change is not None and not self._own:
            self._apply(change)

    @contextlib.contextmanager
    def own(self) -> Iterator[None]:
        """Parameters set (or declared) in this block are the node's own: no review."""
        self._own = True
        try:
            yield
        finally:
            self._own = False


def descriptor(spec: ParamSpec) -> Any:
    """The rcl_interfaces ParameterDescriptor of a parameter: description, constraints, its
    IntegerRange / FloatingPointRange, read-only unless it may change at run time. Typing is
    dynamic: :func:`config_from_values` checks types, so ``ros2 param set ... 1`` works for a
    float parameter too."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    result = ParameterDescriptor(description=spec.description, dynamic_typing=True,
                                 additional_constraints=spec.constraints,
                                 read_only=spec.change == RESTART)
    if spec.value_range:
        kind, low, high = spec.value_range
        if kind == "integer":
            result.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
        else:
            result.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
    return result


def reload_values(config: NodeConfig) -> dict[str, Any]:
    """The parameters a model was made of (RELOAD ones), as parameter values."""
    values = {name: getattr(config, name) for name, spec in SPECS.items() if spec.change == RELOAD}
    values["input_size"] = list(config.input_size or (0, 0))
    return values


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


def source_name(config: NodeConfig) -> str:
    """The model file :func:`model_source` resolves, or the configured name when it does not
    exist (for diagnostics; loading reports the error)."""
    try:
        return str(model_source(config))
    except ParameterError:
        return config.onnx_path or config.checkpoint


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
        head=config.head,
        compile_mode=config.compile_mode or None,
        intra_op_threads=config.threads or None,
        onnx_cache_dir=None if from_onnx else cache,
        engine_cache_dir=cache,
        tensorrt=TensorRTOptions(force_rebuild=config.force_engine_update),
    )
