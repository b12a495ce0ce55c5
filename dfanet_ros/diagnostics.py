"""The node's diagnostic status in the shape diagnostic_updater produces, from pure inputs.

``evaluate`` decides the level and the reason, ``build_status`` adds the key/value pairs, and
``to_diagnostic_array`` turns statuses into a ``diagnostic_msgs/DiagnosticArray`` (the only part
that imports ROS message types, lazily). Levels and their reasons:

ERROR  failures (bad frames, backend errors, incompatible QoS, a failed model reload) within the
       error window; no frame for ``no_input_timeout_s`` although the input topic has a
       publisher; the model failed to load (or a lifecycle configure failed).
WARN   starting (model/engine loading); output rate below ``expected_rate_hz``; drop ratio above
       ``max_drop_ratio``; no publisher on the input topic for ``no_input_timeout_s``; camera_info
       whose size differs from the images'.
OK     otherwise: segmenting, waiting for images, idle because nobody listens (lazy), or a
       managed node that is unconfigured or inactive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .stats import STAGES, TOTALS, StatsSnapshot

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}
TASK = "segmentation"
# Minimum received frames in the rate window before the drop ratio can raise a warning.
MIN_FRAMES_FOR_DROP_WARNING = 5


@dataclass(frozen=True)
class Thresholds:
    """When the status leaves OK (see the module docstring)."""

    expected_rate_hz: float = 0.0  # 0: no expectation
    max_drop_ratio: float = 0.5
    no_input_timeout_s: float = 5.0
    error_window_s: float = 5.0

    @classmethod
    def of(cls, config: Any) -> Thresholds:
        """The thresholds of a node configuration (its parameters of the same names)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class PipelineInfo:
    """What does not change while the node runs (shown as key/value pairs)."""

    node_name: str
    hardware_id: str
    input_topic: str
    input_type: str = "raw"
    input_qos: str = ""
    backend: str = ""
    precision: str = ""
    model: str = ""
    checkpoint: str = ""
    network_resolution: str = ""  # "WxH"


@dataclass(frozen=True)
class NodeState:
    """Where the node is in its life: 'unconfigured' or 'inactive' (a managed node waiting for a
    lifecycle transition), 'loading' (with what it is doing), 'ready' or 'failed'."""

    phase: str
    detail: str = ""
    phase_age_s: float = 0.0


@dataclass(frozen=True)
class Observations:
    """What the node sees at one instant besides its counters."""

    input_publishers: int = 0
    input_resolution: str = ""  # "WxH" of the last image
    camera_info_resolution: str = ""  # "WxH" the last camera_info describes ("": none)
    idle_reason: str = ""  # lazy mode: why no frame is segmented ("": segmenting)
    reload: str = ""  # a model reload in progress ("": none)
    min_confidence: float = 0.0


@dataclass(frozen=True)
class Status:
    """One diagnostic_msgs/DiagnosticStatus, as plain data."""

    level: int
    name: str
    message: str
    hardware_id: str
    values: tuple[tuple[str, str], ...]

    def value(self, key: str) -> str:
        """The value of ``key`` (KeyError if absent)."""
        for k, v in self.values:
            if k == key:
                return v
        raise KeyError(key)


def pipeline_info(node_name: str, config: Any, input_topic: str, checkpoint: str | None = None,
                  segmenter: Any = None) -> PipelineInfo:
    """What the diagnostics show about the node: from its configuration while the model loads,
    from the loaded ``segmenter`` (backend, device, precision, network size) afterwards.
    ``checkpoint`` defaults to the file the configuration names (params.source_name)."""
    if checkpoint is None:
        from .params import source_name

        checkpoint = source_name(config)
    common = {"node_name": node_name, "input_topic": input_topic,
              "input_type": config.input_type, "input_qos": config.input_qos,
              "checkpoint": checkpoint}
    if segmenter is None:
        return PipelineInfo(hardware_id=config.hardware_id or config.backend,
                            backend=config.backend, precision=config.precision, **common)
    height, width = segmenter.input_size
    return PipelineInfo(
        hardware_id=config.hardware_id or f"{segmenter.backend_name}:{segmenter.device}",
        backend=segmenter.backend_name,
        precision=segmenter.precision,
        model=str(segmenter.meta.get("variant", "")),
        network_resolution=f"{width}x{height}",
        **common,
    )


def status_name(node_name: str) -> str:
    """'<node name>: segmentation' (node name without the leading slash; namespaced nodes keep
    their namespace so that two cameras' statuses stay apart)."""
    return f"{node_name.lstrip('/')}: {TASK}"


def evaluate(
    snapshot: StatsSnapshot,
    thresholds: Thresholds,
    state: NodeState,
    input_topic: str,
    observed: Observations,
) -> tuple[int, str]:
    """(level, reason) for the current state; several reasons of one level are joined by '; '."""
    if state.phase == "failed":
        return ERROR, f"model failed to load: {state.detail}"
    if state.phase == "loading":
        return WARN, f"starting: {state.detail} ({state.phase_age_s:.0f} s)"
    if state.phase in ("unconfigured", "inactive"):
        waiting = "configure" if state.phase == "unconfigured" else "activate"
        return OK, f"{state.phase} (managed): waiting for {waiting}"
    input_publishers = observed.input_publishers
    idle_s = snapshot.seconds_since_input
    if idle_s is None:
        idle_s = state.phase_age_s  # never received: count from when the model became ready
    starved = idle_s > thresholds.no_input_timeout_s

    errors = []
    if snapshot.failures_in_window:
        errors.append(
            f"{snapshot.failures_in_window} failure(s) in the last "
            f"{thresholds.error_window_s:g} s, last: {snapshot.last_failure}"
        )
    if starved and input_publishers > 0:
        errors.append(
            f"no images for {idle_s:.1f} s although {input_publishers} publisher(s) exist on "
            f"{input_topic} (QoS, transport or a stalled camera?)"
        )
    if errors:
        return ERROR, "; ".join(errors)

    warnings = []
    mismatch = camera_info_mismatch(observed)
    if mismatch:
        warnings.append(mismatch)
    if starved:
        warnings.append(f"no publisher on {input_topic} for {idle_s:.1f} s")
    elif snapshot.seconds_since_input is not None:
        since_first = snapshot.seconds_since_first_input or 0.0
        rate_known = since_first >= snapshot.rate_window_s
        expected = thresholds.expected_rate_hz
        if expected > 0 and rate_known and snapshot.output_rate_hz < expected:
            warnings.append(
                f"output rate {snapshot.output_rate_hz:.1f} Hz below expected {expected:g} Hz "
                f"(input {snapshot.input_rate_hz:.1f} Hz)"
            )
        if (
            snapshot.inputs_in_window >= MIN_FRAMES_FOR_DROP_WARNING
            and snapshot.drop_ratio > thresholds.max_drop_ratio
        ):
            warnings.append(
                f"dropping {snapshot.drop_ratio:.0%} of frames (limit "
                f"{thresholds.max_drop_ratio:.0%}): inference is slower than the input"
            )
    if warnings:
        return WARN, "; ".join(warnings)
    if observed.idle_reason:
        return OK, f"idle: {observed.idle_reason}"
    if snapshot.seconds_since_input is None:
        return OK, f"ready, waiting for images on {input_topic}"
    return OK, f"segmenting at {snapshot.output_rate_hz:.1f} Hz"


def camera_info_mismatch(observed: Observations) -> str:
    """The warning when camera_info describes another image size than the images have, or ''."""
    info, image = observed.camera_info_resolution, observed.input_resolution
    if info and image and info != image:
        return (f"camera_info describes {info} images but the images are {image} (masks are "
                "published at the image size)")
    return ""


def build_status(
    snapshot: StatsSnapshot,
    thresholds: Thresholds,
    state: NodeState,
    info: PipelineInfo,
    observed: Observations,
) -> Status:
    """The full status: level and reason from :func:`evaluate`, plus the documented keys."""
    level, message = evaluate(snapshot, thresholds, state, info.input_topic, observed)
    values: list[tuple[str, str]] = [
        ("state", state.phase),
        ("backend", info.backend),
        ("precision", info.precision),
        ("model", info.model),
        ("checkpoint", info.checkpoint),
        ("input_topic", info.input_topic),
        ("input_type", info.input_type),
        ("input_qos", info.input_qos),
        ("input_publishers", str(observed.input_publishers)),
        ("input_resolution", observed.input_resolution),
        ("camera_info_resolution", observed.camera_info_resolution),
        ("network_resolution", info.network_resolution),
        ("min_confidence", f"{observed.min_confidence:g}"),
        ("idle_reason", observed.idle_reason),
        ("reload", observed.reload),
        ("frames_in", str(snapshot.frames_in)),
        ("frames_out", str(snapshot.frames_out)),
        ("frames_idle", str(snapshot.frames_idle)),
        ("total_dropped_frames", str(snapshot.frames_dropped)),
        ("bad_frames", str(snapshot.bad_frames)),
        ("backend_errors", str(snapshot.backend_errors)),
        ("messages_lost", str(snapshot.messages_lost)),
        ("color_frames_out", str(snapshot.extra_outputs.get("color", 0))),
        ("confidence_frames_out", str(snapshot.extra_outputs.get("confidence", 0))),
        ("compressed_frames_out", str(snapshot.extra_outputs.get("mask/compressed", 0))),
        ("camera_info_out", str(snapshot.extra_outputs.get("camera_info", 0))),
        ("drop_ratio", f"{snapshot.drop_ratio:.3f}"),
        ("input_rate_hz", f"{snapshot.input_rate_hz:.2f}"),
        ("output_rate_hz", f"{snapshot.output_rate_hz:.2f}"),
        ("expected_rate_hz", f"{thresholds.expected_rate_hz:g}"),
        ("last_error", snapshot.last_failure or ""),
    ]
    for name in STAGES + TOTALS:
        summary = snapshot.latency.get(name)
        for stat in ("mean", "p50", "p99"):
            text = f"{getattr(summary, stat):.2f}" if summary else ""
            values.append((f"{name}_ms_{stat}", text))
    return Status(level, status_name(info.node_name), message, info.hardware_id, tuple(values))


def to_diagnostic_array(statuses: Sequence[Status], stamp: Any) -> Any:
    """diagnostic_msgs/DiagnosticArray stamped ``stamp`` (a builtin_interfaces/Time)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    array = DiagnosticArray()
    array.header.stamp = stamp
    for status in statuses:
        array.status.append(
            DiagnosticStatus(
                level=bytes([status.level]),
                name=status.name,
                message=status.message,
                hardware_id=status.hardware_id,
                values=[KeyValue(key=k, value=v) for k, v in status.values],
            )
        )
    return array


def status_from_msg(msg: Any) -> Status:
    """The inverse of :func:`to_diagnostic_array` for one DiagnosticStatus (tests, tools)."""
    level = msg.level[0] if isinstance(msg.level, (bytes, bytearray)) else int(msg.level)
    values = tuple((kv.key, kv.value) for kv in msg.values)
    return Status(level, msg.name, msg.message, msg.hardware_id, values)


def values_dict(status: Status) -> Mapping[str, str]:
    """Key/value pairs as a dict."""
    return dict(status.values)


def node_idle(status: Status) -> bool:
    """The status says the node holds no frame: every frame it received was published, dropped
    or failed (a tool waiting for the last masks stops on two such reports in a row)."""
    values = values_dict(status)
    try:
        handled = int(values.get("frames_idle", "0")) + sum(  # lazy mode; absent elsewhere
            int(values[key]) for key in ("frames_out", "total_dropped_frames", "bad_frames",
                                         "backend_errors"))
        return int(values["frames_in"]) == handled
    except (KeyError, ValueError):
        return False
