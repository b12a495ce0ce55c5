"""The node's pure logic without a ROS graph: parameters, QoS, statistics, diagnostics, launch."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

from dfanet_core.paths import REPO_ROOT
from dfanet_ros import diagnostics as diag
from dfanet_ros import launch_logic, params
from dfanet_ros.qos import describe_qos, latched_qos, make_qos
from dfanet_ros.stats import STAGES, TOTALS, PipelineStats


# -- parameters -------------------------------------------------------------------------------
def test_every_parameter_is_declared_once_with_a_description():
    names = [spec.name for spec in params.PARAMETERS]
    assert len(names) == len(set(names))
    assert tuple(names) == params.field_names()
    for spec in params.PARAMETERS:
        assert len(spec.description) > 15, spec.name
    assert params.SPECS["backend"].constraints == "one of: auto, onnxruntime, torch, tensorrt"
    assert params.SPECS["max_drop_ratio"].constraints == ">= 0 and <= 1"
    assert params.SPECS["no_input_timeout_s"].constraints == ">= 0.1"


def test_descriptors_carry_real_ranges_and_the_read_only_flag():
    import math

    descriptor = params.descriptor(params.SPECS["min_confidence"])
    (fp_range,) = descriptor.floating_point_range
    assert (fp_range.from_value, fp_range.to_value) == (0.0, 1.0) and not descriptor.read_only
    (int_range,) = params.descriptor(params.SPECS["png_compression_level"]).integer_range
    assert (int_range.from_value, int_range.to_value, int_range.step) == (0, 9, 0)
    (depth,) = params.descriptor(params.SPECS["input_depth"]).integer_range
    assert (depth.from_value, depth.to_value) == (1, 1000)
    (rate,) = params.descriptor(params.SPECS["expected_rate_hz"]).floating_point_range
    assert rate.from_value == 0.0 and math.isinf(rate.to_value)
    assert params.descriptor(params.SPECS["input_qos"]).read_only  # topics and QoS: restart
    assert not params.descriptor(params.SPECS["checkpoint"]).read_only  # reloads the model
    for spec in params.PARAMETERS:  # every numeric parameter with bounds has a range
        numeric = isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool)
        if numeric and (spec.min_value is not None or spec.max_value is not None):
            d = params.descriptor(spec)
            assert d.integer_range or d.floating_point_range, spec.name


def test_defaults_give_the_documented_config():
    config = params.config_from_values({})
    assert config.input_qos == "SENSOR_DATA" and config.input_depth == 1
    assert config.output_qos == "DEFAULT"
    assert config.input_size is None and config.input_topic == "image"
    assert config.publish_color and not config.publish_confidence
    compressed = params.config_from_values({"input_type": "compressed"})
    assert compressed.input_topic == "image/compressed"


def test_values_are_converted_to_their_canonical_types():
    config = params.config_from_values(
        {"expected_rate_hz": 10, "input_qos": "sensor_data", "input_size": [512, 1024]}
    )
    assert config.expected_rate_hz == 10.0 and isinstance(config.expected_rate_hz, float)
    assert config.input_qos == "SENSOR_DATA"
    assert config.input_size == (512, 1024)


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("backend", "cuda", "parameter 'backend': invalid value 'cuda'; allowed: auto, "
         "onnxruntime, torch, tensorrt"),
        ("precision", "fp64", "invalid value 'fp64'; allowed: fp32, fp16"),
        ("resize_mode", "crop", "allowed: stretch, letterbox"),
        ("head", "half", "allowed: fast, exact"),
        ("compile_mode", "jit", "allowed: \"\", default, reduce-overhead"),
        ("input_type", "jpeg", "allowed: raw, compressed"),
        ("input_qos", "BEST_EFFORT", "allowed: SENSOR_DATA, DEFAULT, SYSTEM_DEFAULT"),
        ("color_mode", "heat", "allowed: mask, overlay"),
        ("input_depth", 0, "value 0 out of range; allowed: >= 1 and <= 1000"),
        ("gpu_id", -1, "allowed: >= 0"),
        ("max_drop_ratio", 1.5, "allowed: >= 0 and <= 1"),
        ("no_input_timeout_s", 0.0, "allowed: >= 0.1"),
        ("min_confidence", 1.5, "value 1.5 out of range; allowed: >= 0 and <= 1"),
        ("png_compression_level", 10, "allowed: >= 0 and <= 9"),
        ("expected_rate_hz", float("nan"), "expected a finite number"),
        ("publish_color", "yes", "expected true or false, got 'yes'"),
        ("threads", 2.5, "expected an integer, got 2.5"),
        ("gpu_id", True, "expected an integer, got True"),
        ("checkpoint", 3, "expected a string, got 3"),
        ("input_size", [512], "expected [height, width] integers"),
        ("input_size", [16, 1024], "allowed: [height, width] >= 32 each, or [0, 0]"),
    ],
)
def test_invalid_values_name_the_parameter_and_what_is_allowed(name, value, message):
    with pytest.raises(params.ParameterError, match=f"parameter '{name}'") as info:
        params.config_from_values({name: value})
    assert message in str(info.value)
    assert info.value.name == name


def test_unknown_parameters_suggest_the_closest_name():
    messages = params.unknown_parameters(["backnd", "use_sim_time", "checkpoint", "zzz_top"])
    assert messages == [
        "unknown parameter 'backnd' ignored (did you mean 'backend'?)",
        "unknown parameter 'zzz_top' ignored",
    ]


def test_run_time_changes_are_reviewed_by_kind(tmp_path):
    config = params.config_from_values({})
    live = params.review_change(config, {"min_confidence": 0.4, "color_mode": "overlay"})
    assert live.config.min_confidence == 0.4 and live.config.color_mode == "overlay"
    assert live.changed == {"min_confidence", "color_mode"} and not live.reload
    assert not params.review_change(config, {"min_confidence": 0.0}).changed  # same value
    model = tmp_path / "other.safetensors"
    model.write_bytes(b"x")
    reload = params.review_change(config, {"checkpoint": str(model), "input_size": [256, 512]})
    assert reload.reload and reload.config.input_size == (256, 512)
    with pytest.raises(params.ParameterError, match="'input_qos': cannot change while the node "
                       "runs"):
        params.review_change(config, {"input_qos": "DEFAULT"})
    with pytest.raises(params.ParameterError, match="'checkpoint': file not found"):
        params.review_change(config, {"checkpoint": str(tmp_path / "missing.safetensors")})
    with pytest.raises(params.ParameterError, match=r"'min_confidence': value 2.0 out of range; "
                       r"allowed: >= 0 and <= 1"):
        params.review_change(config, {"min_confidence": 2.0})
    assert params.reload_values(config)["input_size"] == [0, 0]


def test_live_parameters_review_apply_and_the_nodes_own_values():
    from types import SimpleNamespace as P

    config, applied, reloading = params.config_from_values({}), [], [False]
    live = params.LiveParameters(lambda: config, lambda: reloading[0], applied.append,
                                 facts=("class_names",))
    ok = live.review([P(name="min_confidence", value=0.3), P(name="qos_overrides./x", value=1)])
    assert ok.successful
    live.applied([])
    assert applied[-1].config.min_confidence == 0.3
    refused = live.review([P(name="overlay_alpha", value=-1.0)])
    assert not refused.successful and "parameter 'overlay_alpha'" in refused.reason
    assert "set by the node" in live.review([P(name="class_names", value=["x"])]).reason
    reloading[0] = True
    busy = live.review([P(name="threads", value=1)])
    assert not busy.successful and "a model reload is under way" in busy.reason
    with live.own():  # the node's own updates pass unreviewed and are not applied again
        assert live.review([P(name="class_names", value=["a"])]).successful
        live.applied([])
    assert len(applied) == 1


def test_runtime_choices_are_the_cores_own():
    """The node takes backends, precisions and resize modes from dfanet_core (no copies)."""
    from dfanet_core.deploy import options, preprocess

    assert params.BACKENDS is options.BACKENDS and params.PRECISIONS is options.PRECISIONS
    assert params.RESIZE_MODES is options.RESIZE_MODES is preprocess.RESIZE_MODES
    assert launch_logic.BACKENDS is options.BACKENDS
    for name, choices in (("backend", options.BACKENDS), ("precision", options.PRECISIONS),
                          ("resize_mode", options.RESIZE_MODES), ("head", options.HEADS)):
        assert params.SPECS[name].choices == choices


# -- QoS --------------------------------------------------------------------------------------
def test_qos_presets():
    sensor = make_qos("SENSOR_DATA", 1)
    assert sensor.reliability == ReliabilityPolicy.BEST_EFFORT
    assert sensor.durability == DurabilityPolicy.VOLATILE
    assert (sensor.history, sensor.depth) == (HistoryPolicy.KEEP_LAST, 1)
    default = make_qos("default", 5)
    assert default.reliability == ReliabilityPolicy.RELIABLE and default.depth == 5
    assert make_qos("SYSTEM_DEFAULT", 2).reliability == ReliabilityPolicy.SYSTEM_DEFAULT
    assert describe_qos(sensor) == "best_effort/volatile/keep_last(1)"
    latched = latched_qos()
    assert latched.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert latched.reliability == ReliabilityPolicy.RELIABLE
    with pytest.raises(ValueError, match="allowed: SENSOR_DATA, DEFAULT, SYSTEM_DEFAULT"):
        make_qos("FAST", 1)
    with pytest.raises(ValueError, match="depth must be an integer in 1..1000"):
        make_qos("DEFAULT", 0)


# -- statistics -------------------------------------------------------------------------------
def test_rates_counters_and_windowed_latency():
    stats = PipelineStats(start_time=0.0, rate_window_s=2.0, error_window_s=3.0)
    for i in range(40):  # 20 Hz input for 2 s, every other frame dropped
        t = i * 0.05
        stats.record_input(t)
        if i % 2:
            stats.record_drop(t)
        else:
            stats.record_output(t, {"inference": 10.0 + i, "node_latency": 20.0})
    snap = stats.snapshot(2.0)
    assert (snap.frames_in, snap.frames_out, snap.frames_dropped) == (40, 20, 20)
    assert snap.input_rate_hz == pytest.approx(20.0, abs=0.6)
    assert snap.output_rate_hz == pytest.approx(10.0, abs=0.6)
    assert snap.drop_ratio == pytest.approx(0.5, abs=0.03)
    inference = snap.latency["inference"]
    assert inference.count == 20 and inference.mean == pytest.approx(29.0)
    assert inference.p50 == pytest.approx(29.0) and inference.max == 48.0
    assert 47.0 < inference.p99 <= 48.0
    assert "decode" not in snap.latency  # never recorded
    # 10 s later the windows are empty but the totals stay
    later = stats.snapshot(12.0)
    assert later.input_rate_hz == 0 and later.inputs_in_window == 0 and later.frames_in == 40
    assert later.seconds_since_input == pytest.approx(12.0 - 39 * 0.05)


def test_a_stream_that_just_started_reports_its_real_rate():
    stats = PipelineStats(start_time=0.0, rate_window_s=5.0)
    for i in range(10):  # 10 Hz, starting long after the node did
        stats.record_input(100.0 + i * 0.1)
    assert stats.snapshot(101.0).input_rate_hz == pytest.approx(10.0)
    assert stats.snapshot(200.0).input_rate_hz == 0.0


def test_failures_expire_after_the_error_window():
    stats = PipelineStats(start_time=0.0, error_window_s=3.0)
    stats.record_bad_frame(1.0, "unsupported encoding 'nv12'")
    stats.record_backend_error(1.5, "CUDA out of memory")
    snap = stats.snapshot(2.0)
    assert (snap.bad_frames, snap.backend_errors, snap.failures_in_window) == (1, 1, 2)
    assert snap.last_failure == "backend error: CUDA out of memory"
    assert stats.snapshot(4.2).failures_in_window == 1
    assert stats.snapshot(5.0).failures_in_window == 0


# -- diagnostics ------------------------------------------------------------------------------
INFO = diag.PipelineInfo(
    node_name="/cam1/segment_node", hardware_id="onnxruntime:cpu", input_topic="/cam1/image",
    backend="onnxruntime", precision="fp32", model="dfanet_b", network_resolution="480x360",
)
READY = diag.NodeState("ready", phase_age_s=30.0)
THRESHOLDS = diag.Thresholds(expected_rate_hz=10.0, max_drop_ratio=0.3, no_input_timeout_s=5.0)


def _streaming(rate_hz: float, drop_every: int = 0, seconds: float = 10.0) -> PipelineStats:
    stats = PipelineStats(start_time=0.0, rate_window_s=5.0)
    n = int(seconds * rate_hz)
    for i in range(n):
        t = i / rate_hz
        stats.record_input(t)
        if drop_every and i % drop_every == 0:
            stats.record_drop(t)
        else:
            stats.record_output(t, {name: 1.0 for name in STAGES + TOTALS})
    return stats


def _status(stats, now=10.0, publishers=1, state=READY, thresholds=THRESHOLDS, **observed):
    seen = diag.Observations(**{"input_publishers": publishers, "input_resolution": "640x480",
                                **observed})
    return diag.build_status(stats.snapshot(now), thresholds, state, INFO, seen)


def test_ok_status_has_the_documented_shape():
    status = _status(_streaming(12.0))
    assert status.level == diag.OK
    assert status.message.startswith("segmenting at 12.")
    assert status.name == "cam1/segment_node: segmentation"
    assert status.hardware_id == "onnxruntime:cpu"
    values = diag.values_dict(status)
    for key in ("backend", "precision", "model", "input_resolution", "network_resolution",
                "frames_in", "frames_out", "total_dropped_frames", "input_rate_hz",
                "output_rate_hz", "inference_ms_p99", "pipeline_latency_ms_p50",
                "node_latency_ms_mean", "processing_time_ms_p99", "last_error"):
        assert key in values, key
    assert values["input_resolution"] == "640x480" and values["frames_out"] == "120"
    assert values["inference_ms_p50"] == "1.00"


def test_warn_when_output_is_slower_than_expected():
    status = _status(_streaming(6.0))
    assert status.level == diag.WARN
    assert "output rate 6.0 Hz below expected 10 Hz" in status.message


def test_warn_when_too_many_frames_are_dropped():
    status = _status(_streaming(30.0, drop_every=2))
    assert status.level == diag.WARN
    assert "dropping 50% of frames (limit 30%)" in status.message


def test_error_after_failures_within_the_window():
    stats = _streaming(12.0)
    stats.record_bad_frame(9.5, "truncated data: 10 bytes, expected 30")
    status = _status(stats)
    assert status.level == diag.ERROR
    assert "1 failure(s) in the last 5 s, last: bad frame: truncated data" in status.message
    assert diag.values_dict(status)["bad_frames"] == "1"
    # 5.1 s later the failure has left the window
    recovered = _status(stats, now=14.6, thresholds=diag.Thresholds(no_input_timeout_s=5.0))
    assert recovered.level == diag.OK, recovered.message


def test_error_when_a_publisher_exists_but_no_frames_arrive():
    stats = _streaming(12.0)
    status = _status(stats, now=18.0, publishers=2)
    assert status.level == diag.ERROR
    assert "no images for 8.1 s although 2 publisher(s) exist on /cam1/image" in status.message
    quiet = _status(stats, now=18.0, publishers=0)
    assert quiet.level == diag.WARN and "no publisher on /cam1/image" in quiet.message


def test_never_received_counts_from_readiness():
    stats = PipelineStats(start_time=0.0)
    fresh = diag.NodeState("ready", phase_age_s=1.0)
    status = _status(stats, now=1.0, publishers=1, state=fresh)
    assert status.level == diag.OK and "waiting for images on /cam1/image" in status.message
    stale = diag.NodeState("ready", phase_age_s=6.0)
    assert _status(stats, now=6.0, publishers=1, state=stale).level == diag.ERROR


def test_loading_and_failed_states():
    stats = PipelineStats(start_time=0.0)
    loading = diag.NodeState("loading", "building TensorRT engine", 42.0)
    status = _status(stats, state=loading)
    assert status.level == diag.WARN
    assert status.message == "starting: building TensorRT engine (42 s)"
    failed = _status(stats, state=diag.NodeState("failed", "checkpoint corrupt"))
    assert failed.level == diag.ERROR and "checkpoint corrupt" in failed.message


def test_camera_info_of_another_size_warns_and_idle_and_lifecycle_states_are_ok():
    stats = _streaming(12.0)
    mismatch = _status(stats, camera_info_resolution="1280x720")
    assert mismatch.level == diag.WARN
    assert "camera_info describes 1280x720 images but the images are 640x480" in mismatch.message
    assert diag.values_dict(mismatch)["camera_info_resolution"] == "1280x720"
    assert _status(stats, camera_info_resolution="640x480").level == diag.OK
    idle = _status(stats, idle_reason="nobody subscribes")
    assert (idle.level, idle.message) == (diag.OK, "idle: nobody subscribes")
    assert diag.values_dict(idle)["idle_reason"] == "nobody subscribes"
    for phase, waiting in (("unconfigured", "configure"), ("inactive", "activate")):
        status = _status(stats, state=diag.NodeState(phase))
        assert status.level == diag.OK and f"waiting for {waiting}" in status.message
    assert diag.values_dict(_status(stats, min_confidence=0.25))["min_confidence"] == "0.25"


def test_diagnostic_array_round_trip():
    from builtin_interfaces.msg import Time

    status = _status(_streaming(12.0))
    array = diag.to_diagnostic_array([status], Time(sec=5))
    assert array.header.stamp.sec == 5 and len(array.status) == 1
    msg = array.status[0]
    assert msg.level == b"\x00" and msg.name == status.name
    assert diag.status_from_msg(msg) == status


# -- launch -----------------------------------------------------------------------------------
def test_launch_plan_defaults():
    plan = launch_logic.plan_launch({}, "/opt/share/dfanet_ros", environ={})
    assert plan.parameters == ("/opt/share/dfanet_ros/config/segment.yaml",
                               {"managed": False, "use_sim_time": False})
    assert plan.remappings == (
        ("image", "/camera/image_raw"),
        ("image/compressed", "/camera/image_raw/compressed"),
        ("camera_info", "/camera/camera_info"),
    )
    assert plan.environment == (
        ("FASTDDS_DEFAULT_PROFILES_FILE", "/opt/share/dfanet_ros/config/fastdds_profile.xml"),)
    assert (plan.namespace, plan.node_name) == ("", "segment_node")
    assert plan.ros_arguments == ("--log-level", "info")


def test_launch_plan_with_arguments():
    plan = launch_logic.plan_launch(
        {"image": "/cam1/image_raw/", "input_type": "compressed", "backend": "tensorrt",
         "namespace": "/cam1/", "params_file": "/tmp/p.yaml", "managed": "true",
         "use_sim_time": "true", "min_confidence": "0.25", "log_level": "warn",
         "fastdds_profile": "/etc/dds.xml"},
        "/share",
        environ={},
    )
    assert plan.parameters == ("/tmp/p.yaml", {
        "input_type": "compressed", "backend": "tensorrt", "managed": True,
        "use_sim_time": True, "min_confidence": 0.25})
    assert ("image/compressed", "/cam1/image_raw/compressed") in plan.remappings
    assert ("camera_info", "/cam1/camera_info") in plan.remappings
    assert plan.environment == (("FASTDDS_DEFAULT_PROFILES_FILE", "/etc/dds.xml"),)
    assert plan.namespace == "cam1" and plan.ros_arguments == ("--log-level", "warn")
    # the user's profile in the environment wins; 'none' leaves the environment alone
    mine = {"FASTDDS_DEFAULT_PROFILES_FILE": "/home/me/dds.xml"}
    assert launch_logic.plan_launch({}, "/share", environ=mine).environment == ()
    assert launch_logic.plan_launch({"fastdds_profile": "none"}, "/share",
                                    environ={}).environment == ()
    # every argument of the launch file is one the plan takes (a test per argument above)
    covered = {"params_file", "image", "input_type", "backend", "checkpoint", "namespace",
               "node_name", "managed", "use_sim_time", "min_confidence", "log_level",
               "fastdds_profile"}
    assert {arg.name for arg in launch_logic.LAUNCH_ARGUMENTS} == covered
    named = launch_logic.plan_launch({"node_name": "front_seg", "checkpoint": "/m.safetensors"},
                                     "/share", environ={})
    assert named.node_name == "front_seg" and named.parameters[1]["checkpoint"] == "/m.safetensors"


@pytest.mark.parametrize(
    "arguments,message",
    [
        ({"backend": "cuda"}, "launch argument 'backend': invalid value 'cuda'"),
        ({"input_type": "h264"}, "launch argument 'input_type'"),
        ({"image": ""}, "launch argument 'image'"),
        ({"imgae": "/x"}, "unknown launch argument"),
        ({"managed": "yes"}, "launch argument 'managed': invalid value 'yes'"),
        ({"log_level": "loud"}, "launch argument 'log_level'"),
        ({"min_confidence": "high"}, "launch argument 'min_confidence': 'high' is not a number"),
        ({"min_confidence": "1.5"}, r"min_confidence.*out of range; allowed: >= 0 and <= 1"),
    ],
)
def test_launch_plan_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        launch_logic.plan_launch(arguments, "/share", environ={})


class _Recorded:
    """A stand-in launch action: remembers how the launch file built it."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.name = kwargs.get("name", args[0] if args else None)


def _stand_in_launch(monkeypatch) -> types.SimpleNamespace:
    """Minimal ``launch``/``launch_ros`` modules (not installable from PyPI) that record what the
    launch file asks of them; LaunchConfiguration reads the values of the launch context."""
    classes = {name: type(name, (_Recorded,), {}) for name in (
        "DeclareLaunchArgument", "OpaqueFunction", "SetEnvironmentVariable", "Node")}

    class LaunchDescription(_Recorded):
        @property
        def entities(self):
            return self.args[0]

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context.launch_configurations[self.name]

    modules = {
        "launch": {},
        "launch.actions": {k: classes[k] for k in ("DeclareLaunchArgument", "OpaqueFunction",
                                                   "SetEnvironmentVariable")},
        "launch.launch_description": {"LaunchDescription": LaunchDescription},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": classes["Node"]},
    }
    for name, members in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(**classes, LaunchDescription=LaunchDescription)


def test_launch_file_starts_the_node_the_plan_describes(monkeypatch, installed_prefix):
    """segment.launch.py run against stand-in launch classes and the real ament index of a
    colcon-style install: it declares every argument and starts the node as plan_launch says
    (params file from the package's share directory, overrides, remappings, namespace, the
    Fast DDS profile, the log level)."""
    launch = _stand_in_launch(monkeypatch)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(installed_prefix))
    monkeypatch.delenv(launch_logic.PROFILE_VARIABLE, raising=False)
    spec = importlib.util.spec_from_file_location(
        "segment_launch", installed_prefix / "share/dfanet_ros/launch/segment.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    description = module.generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, launch.DeclareLaunchArgument)]
    assert [(d.name, d.kwargs["default_value"], d.kwargs.get("choices")) for d in declared] == [
        (a.name, a.default, list(a.choices) if a.choices else None)
        for a in launch_logic.LAUNCH_ARGUMENTS]
    (opaque,) = [e for e in description.entities if isinstance(e, launch.OpaqueFunction)]

    values = {a.name: a.default for a in launch_logic.LAUNCH_ARGUMENTS}
    values.update(image="/cam1/image_raw", input_type="compressed", namespace="cam1",
                  backend="tensorrt", managed="true", min_confidence="0.5", log_level="debug")
    context = types.SimpleNamespace(launch_configurations=values)
    *environment, node = opaque.kwargs["function"](context)
    share_profile = installed_prefix / "share/dfanet_ros/config/fastdds_profile.xml"
    assert [(e.args, e.kwargs) for e in environment] == [
        (("FASTDDS_DEFAULT_PROFILES_FILE", str(share_profile)), {})]
    share_params = installed_prefix / "share/dfanet_ros/config/segment.yaml"
    assert isinstance(node, launch.Node) and node.kwargs == {
        "package": "dfanet_ros", "executable": "segment_node", "name": "segment_node",
        "namespace": "cam1",
        "parameters": [str(share_params), {"input_type": "compressed", "backend": "tensorrt",
                                           "managed": True, "use_sim_time": False,
                                           "min_confidence": 0.5}],
        "remappings": [("image", "/cam1/image_raw"),
                       ("image/compressed", "/cam1/image_raw/compressed"),
                       ("camera_info", "/cam1/camera_info")],
        "ros_arguments": ["--log-level", "debug"],
        "output": "screen", "emulate_tty": True,
    }
    assert share_params.is_file() and share_profile.is_file()
    source = (REPO_ROOT / "launch" / "segment.launch.py").read_text()
    assert "eval(" not in source and "subprocess" not in source


@pytest.mark.ros_install
def test_launch_file_runs_with_a_real_launch_install():
    # Runs on a ROS 2 install (launch/launch_ros are not on PyPI); the pure tests above carry the
    # weight elsewhere.
    from launch.actions import DeclareLaunchArgument
    from launch.launch_context import LaunchContext
    from launch.launch_description import LaunchDescription

    spec = importlib.util.spec_from_file_location("segment_launch",
                                                  REPO_ROOT / "launch" / "segment.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == {arg.name for arg in launch_logic.LAUNCH_ARGUMENTS}
    context = LaunchContext()
    for entity in description.entities:
        entity.visit(context)


# -- shipped files ----------------------------------------------------------------------------
def test_shipped_params_file_is_valid_for_any_namespace():
    import yaml

    text = (REPO_ROOT / "config" / "segment.yaml").read_text()
    document = yaml.safe_load(text)
    assert list(document) == ["/**"]
    values = document["/**"]["ros__parameters"]
    assert not params.unknown_parameters(values)
    config = params.config_from_values(values)
    assert (config.backend, config.precision, config.checkpoint) == ("onnxruntime", "fp32", "")
    # the commented GPU block is valid once uncommented
    gpu_lines = [line.replace("# ", "", 1) for line in text.splitlines()
                 if line.strip().startswith("# ") and ":" in line and "--" not in line
                 and line.startswith("    # ")]
    gpu = yaml.safe_load("\n".join(line.strip() for line in gpu_lines))
    assert gpu["backend"] == "tensorrt" and gpu["build_only"] is False
    params.config_from_values({**values, **gpu, "engine_cache_dir": "/tmp/engines"})


def test_interface_doc_lists_every_parameter_and_key():
    doc = (REPO_ROOT / "docs" / "ros_interface.md").read_text()
    for spec in params.PARAMETERS:
        assert f"| `{spec.name}` |" in doc, spec.name
    for arg in launch_logic.LAUNCH_ARGUMENTS:
        assert f"| `{arg.name}` |" in doc, arg.name
    status = _status(_streaming(12.0))
    for key, _ in status.values:
        stem = key.rsplit("_ms_", 1)[0]
        assert f"`{key}`" in doc or f"`{stem}`" in doc, key


# -- node start-up helpers --------------------------------------------------------------------
def test_runtime_options_follow_the_parameters():
    from dfanet_core.deploy.options import RuntimeOptions, TensorRTOptions

    cpu = params.runtime_options(params.config_from_values({"backend": "onnxruntime"}), True)
    assert cpu == RuntimeOptions(backend="onnxruntime", precision="fp32")
    gpu = params.runtime_options(params.config_from_values(
        {"backend": "tensorrt", "precision": "fp16", "gpu_id": 1, "threads": 2,
         "engine_cache_dir": "/cache", "force_engine_update": True, "input_size": [512, 1024],
         "resize_mode": "letterbox", "head": "exact"}
    ), True)
    assert gpu == RuntimeOptions(
        backend="tensorrt", precision="fp16", device="cuda:1", input_size=(512, 1024),
        resize_mode="letterbox", head="exact", intra_op_threads=2, onnx_cache_dir=Path("/cache"),
        engine_cache_dir=Path("/cache"), tensorrt=TensorRTOptions(force_rebuild=True))
    assert params.runtime_options(params.config_from_values({}), False).device is None
    compiled = params.runtime_options(params.config_from_values(
        {"backend": "torch", "compile_mode": "reduce-overhead"}), True)
    assert (compiled.compile_mode, compiled.head) == ("reduce-overhead", "fast")
    assert params.runtime_options(params.config_from_values({}), False).compile_mode is None
    onnx = params.runtime_options(params.config_from_values(
        {"onnx_path": "/m.onnx", "input_size": [512, 1024], "engine_cache_dir": "/c"}), False)
    assert onnx.input_size is None and onnx.onnx_cache_dir is None  # the file fixes them
    assert onnx.engine_cache_dir == Path("/c")


def test_model_source_must_exist(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert params.model_source(params.config_from_values({"onnx_path": str(model)})) == model
    with pytest.raises(params.ParameterError, match="parameter 'checkpoint': file not found"):
        params.model_source(params.config_from_values({"checkpoint": str(tmp_path / "no")}))
    from dfanet_core.files import default_checkpoint

    assert params.model_source(params.config_from_values({})) == default_checkpoint()
