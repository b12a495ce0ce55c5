"""What launch/segment.launch.py computes from its arguments, as a pure function.

The launch file only declares the arguments, resolves them and hands the values to
:func:`plan_launch`; the returned :class:`LaunchPlan` says which environment variables to set and
how to start the node (namespace, parameters, remappings, ROS arguments such as the log level).
``launch``/``launch_ros`` are not needed to test it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .graph import PROFILE_NAME, PROFILE_VARIABLE
from .params import BACKENDS, INPUT_TYPES, SPECS, ParameterError, config_from_values

PACKAGE = "dfanet_ros"
EXECUTABLE = "segment_node"
NODE_NAME = "segment_node"
DEFAULT_PARAMS_FILE = ("config", "segment.yaml")  # under the package's share directory
# Fast DDS loses best-effort messages over ~0.5 MB (camera frames, masks) between processes with
# its default transports (a 512 KB shared-memory segment); the shipped profile gives 64 MiB.
DEFAULT_PROFILE = ("config", PROFILE_NAME)  # under the package's share directory
NO_PROFILE = "none"
BOOLEANS = ("true", "false")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


@dataclass(frozen=True)
class LaunchArgument:
    """One DeclareLaunchArgument: name, default value (a string) and description."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()


LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("params_file", "", "Parameter YAML file; empty: the package's "
                   "config/segment.yaml"),
    LaunchArgument("image", "/camera/image_raw", "Camera image topic (for compressed input, "
                   "the base topic: '<image>/compressed' is subscribed)"),
    LaunchArgument("input_type", "", "raw or compressed; empty: as in the params file",
                   ("", *INPUT_TYPES)),
    LaunchArgument("backend", "", "Inference backend; empty: as in the params file",
                   ("", *BACKENDS)),
    LaunchArgument("checkpoint", "", "Checkpoint file; empty: as in the params file"),
    LaunchArgument("namespace", "", "Namespace of the node and its topics (e.g. cam1 -> "
                   "/cam1/segmentation/mask)"),
    LaunchArgument("node_name", NODE_NAME, "Name of the node"),
    LaunchArgument("managed", "false", "Run the node as a lifecycle node (configure/activate "
                   "through its lifecycle services, e.g. by a lifecycle manager)", BOOLEANS),
    LaunchArgument("use_sim_time", "false", "Use /clock (simulation, bag replay) for the node's "
                   "clock", BOOLEANS),
    LaunchArgument("min_confidence", "", "Pixels below this top-class probability become 255 in "
                   "the mask (0..1); empty: as in the params file"),
    LaunchArgument("log_level", "info", "The node's log level", LOG_LEVELS),
    LaunchArgument("fastdds_profile", "", "Fast DDS XML profile for the node "
                   "(FASTDDS_DEFAULT_PROFILES_FILE); empty: the package's "
                   "config/fastdds_profile.xml (large messages through shared memory); 'none': "
                   "leave the environment as it is. A variable already set wins"),
)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the launch file needs to start the node."""

    environment: tuple[tuple[str, str], ...]
    namespace: str
    node_name: str
    parameters: tuple[Any, ...]  # a params file path and/or a dict of overrides, in order
    remappings: tuple[tuple[str, str], ...]
    ros_arguments: tuple[str, ...] = ()  # e.g. ("--log-level", "warn")


def plan_launch(
    arguments: Mapping[str, str],
    share_dir: str | Path,
    environ: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """Compute the node's launch plan from launch-argument values (strings, as launch gives them).

    ``share_dir`` is the package's share directory (for the default params file and Fast DDS
    profile); ``environ`` the environment the launch runs in (an existing
    FASTDDS_DEFAULT_PROFILES_FILE is respected). Raises ValueError naming the argument for a
    value outside its choices.
    """
    values = {arg.name: arg.default for arg in LAUNCH_ARGUMENTS}
    unknown = sorted(set(arguments) - set(values))
    if unknown:
        raise ValueError(f"unknown launch argument(s) {unknown}; known: {sorted(values)}")
    values.update({k: str(v).strip() for k, v in arguments.items()})
    for arg in LAUNCH_ARGUMENTS:
        if arg.choices and values[arg.name] not in arg.choices:
            allowed = ", ".join(repr(c) for c in arg.choices)
            raise ValueError(
                f"launch argument '{arg.name}': invalid value {values[arg.name]!r}; "
                f"allowed: {allowed}"
            )

    params_file = values["params_file"] or str(Path(share_dir, *DEFAULT_PARAMS_FILE))
    overrides: dict[str, Any] = {
        key: values[key] for key in ("input_type", "backend", "checkpoint") if values[key]
    }
    overrides["managed"] = values["managed"] == "true"
    overrides["use_sim_time"] = values["use_sim_time"] == "true"
    if values["min_confidence"]:
        overrides["min_confidence"] = _min_confidence(values["min_confidence"])
    parameters: tuple[Any, ...] = (params_file, overrides)

    image = values["image"].rstrip("/")
    if not image:
        raise ValueError("launch argument 'image': the camera topic must not be empty")
    # camera_info beside the image as image_transport pairs them: /cam/image_raw, /cam/camera_info
    camera_info = f"{image.rsplit('/', 1)[0]}/camera_info" if "/" in image else "camera_info"
    remappings = (("image", image), ("image/compressed", f"{image}/compressed"),
                  ("camera_info", camera_info))

    environment: tuple[tuple[str, str], ...] = ()
    current = environ if environ is not None else {}
    profile = values["fastdds_profile"] or str(Path(share_dir, *DEFAULT_PROFILE))
    if profile != NO_PROFILE and not current.get(PROFILE_VARIABLE):
        environment = ((PROFILE_VARIABLE, profile),)

    return LaunchPlan(
        environment=environment,
        namespace=values["namespace"].strip("/"),
        node_name=values["node_name"] or NODE_NAME,
        parameters=parameters,
        remappings=remappings,
        ros_arguments=("--log-level", values["log_level"]),
    )


def _min_confidence(text: str) -> float:
    """The min_confidence launch argument as the parameter's float (ValueError naming both)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"launch argument 'min_confidence': {text!r} is not a number; "
                         f"allowed: {SPECS['min_confidence'].constraints}") from None
    try:
        return config_from_values({"min_confidence": value}).min_confidence
    except ParameterError as exc:
        raise ValueError(f"launch argument 'min_confidence': {exc}") from None
