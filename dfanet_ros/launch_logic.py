"""What launch/segment.launch.py computes from its arguments, as a pure function.

The launch file only declares the arguments, resolves them and hands the values to
:func:`plan_launch`; the returned :class:`LaunchPlan` says which environment variables to set and
how to start the node (namespace, parameters, remappings). ``launch``/``launch_ros`` are not
needed to test it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .params import BACKENDS, INPUT_TYPES

PACKAGE = "dfanet_ros"
EXECUTABLE = "segment_node"
NODE_NAME = "segment_node"
DEFAULT_PARAMS_FILE = ("config", "segment.yaml")  # under the package's share directory
# Fast DDS drops best-effort messages over ~0.5 MB (camera frames, masks) between processes with
# its default transports; LARGE_DATA (TCP + shared memory) carries them.
FASTDDS_TRANSPORT_VARIABLE = "FASTDDS_BUILTIN_TRANSPORTS"
FASTDDS_TRANSPORT_VALUE = "LARGE_DATA"


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
    LaunchArgument("large_data_transport", "true", "Set FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA "
                   "unless the environment already sets it", ("true", "false")),
)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the launch file needs to start the node."""

    environment: tuple[tuple[str, str], ...]
    namespace: str
    node_name: str
    parameters: tuple[Any, ...]  # a params file path and/or a dict of overrides, in order
    remappings: tuple[tuple[str, str], ...]


def plan_launch(
    arguments: Mapping[str, str],
    share_dir: str | Path,
    environ: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """Compute the node's launch plan from launch-argument values (strings, as launch gives them).

    ``share_dir`` is the package's share directory (for the default params file); ``environ`` the
    environment the launch runs in (an existing FASTDDS_BUILTIN_TRANSPORTS is respected).
    Raises ValueError naming the argument for a value outside its choices.
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
    overrides = {
        key: values[key] for key in ("input_type", "backend", "checkpoint") if values[key]
    }
    parameters: tuple[Any, ...] = (params_file, overrides) if overrides else (params_file,)

    image = values["image"].rstrip("/")
    if not image:
        raise ValueError("launch argument 'image': the camera topic must not be empty")
    remappings = (("image", image), ("image/compressed", f"{image}/compressed"))

    environment: tuple[tuple[str, str], ...] = ()
    current = environ if environ is not None else {}
    if values["large_data_transport"] == "true" and not current.get(FASTDDS_TRANSPORT_VARIABLE):
        environment = ((FASTDDS_TRANSPORT_VARIABLE, FASTDDS_TRANSPORT_VALUE),)

    return LaunchPlan(
        environment=environment,
        namespace=values["namespace"].strip("/"),
        node_name=values["node_name"] or NODE_NAME,
        parameters=parameters,
        remappings=remappings,
    )
