"""TensorRT builder, engine cache and runner against the real installed TensorRT (tensorrt-rtx on
CPU-only machines: it parses ONNX and builds engines without a GPU). Tiny hand-made ONNX graphs
keep
builds well under a second; the DFANet graph itself is built in test_deploy_segmenter.py."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dfanet_core.deploy import build_engine as build_engine_cli
from dfanet_core.deploy.tensorrt import api
from dfanet_core.deploy.tensorrt.api import TensorRTUnavailableError, load_tensorrt
from dfanet_core.deploy.tensorrt.builder import (
    BuildOptions,
    EngineBuildError,
    OnnxParseError,
    build_engine,
)
from dfanet_core.deploy.tensorrt.cache import (
    EngineFileError,
    compute_key,
    get_or_build_engine,
    read_engine_file,
    sidecar_path,
)
from dfanet_core.deploy.tensorrt.calibration import calibration_batches, calibration_image_paths
from dfanet_core.files import atomic_path, sha256_file
from dfanet_core.paths import REPO_ROOT

try:
    TRT = load_tensorrt()
except TensorRTUnavailableError as exc:
    # CI and dev machines install tensorrt-rtx-cu13 (requirements.txt): there this must fail. The
    # lent GPU machines have no TensorRT wheel at all, so there the module is skipped.
    if not torch.cuda.is_available():
        raise
    pytest.skip(f"no TensorRT on this GPU machine: {exc}", allow_module_level=True)


def tiny_onnx(path: Path, *, batch: int | str = 1, fp16: bool = False, seed: int = 0) -> Path:
    """images (N,3,16,16) -> Conv 3x3 (4 classes) -> ArgMax -> uint8 class_ids, plus confidence."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if fp16 else np.float32
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(dtype), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(dtype), "b")
    nodes = []
    conv_in = "images"
    if fp16:
        nodes.append(helper.make_node("Cast", ["images"], ["x16"], to=TensorProto.FLOAT16))
        conv_in = "x16"
    nodes += [
        helper.make_node("Conv", [conv_in, "w", "b"], ["logits_raw"], pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["logits_raw"], ["logits"], to=TensorProto.FLOAT),
        helper.make_node("ArgMax", ["logits"], ["ids64"], axis=1, keepdims=0),
        helper.make_node("Cast", ["ids64"], ["class_ids"], to=TensorProto.UINT8),
        helper.make_node("ReduceMax", ["logits"], ["peak"], keepdims=1),
        helper.make_node("Sub", ["logits", "peak"], ["shifted"]),
        helper.make_node("Exp", ["shifted"], ["e"]),
        helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=0),
        helper.make_node("Reciprocal", ["s"], ["confidence"]),
    ]
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [
            helper.make_tensor_value_info("class_ids", TensorProto.UINT8, [batch, 16, 16]),
            helper.make_tensor_value_info("confidence", TensorProto.FLOAT, [batch, 16, 16]),
        ],
        initializer=[weight, bias, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return tiny_onnx(tmp_path / "tiny.onnx")


def test_module_is_the_tensorrt_10_api():
    # tensorrt-rtx installs as `tensorrt_rtx`; the full TensorRT as `tensorrt`. Either must offer
    # the name-based I/O API the runner uses.
    assert TRT.module_name in api.MODULE_NAMES
    engine_api = dir(TRT.module.ICudaEngine)
    context_api = dir(TRT.module.IExecutionContext)
    for name in ("num_io_tensors", "get_tensor_name", "get_tensor_mode"):
        assert name in engine_api
    for name in ("set_input_shape", "set_tensor_address", "execute_async_v3"):
        assert name in context_api


def test_missing_tensorrt_names_what_to_install(monkeypatch):
    monkeypatch.setattr(api, "MODULE_NAMES", ("tensorrt_does_not_exist",))
    api.load_tensorrt.cache_clear()
    try:
        with pytest.raises(TensorRTUnavailableError, match="pip install tensorrt"):
            api.load_tensorrt()
    finally:
        monkeypatch.undo()
        api.load_tensorrt.cache_clear()
    assert api.load_tensorrt().module_name == TRT.module_name


def test_build_static_engine(onnx_file: Path, tmp_path: Path):
    timing = tmp_path / "timing.cache"
    result = build_engine(onnx_file, BuildOptions(workspace_mib=64, timing_cache=timing))
    assert len(result.engine) > 1000
    assert result.profile.is_static and result.profile.max == (1, 3, 16, 16)
    assert result.tensorrt == TRT.version_string
    assert timing.is_file() and timing.stat().st_size > 0
    # a second build reads the persisted cache back without complaint
    build_engine(onnx_file, BuildOptions(workspace_mib=64, timing_cache=timing))


def test_build_dynamic_batch_profile(tmp_path: Path):
    path = tiny_onnx(tmp_path / "dyn.onnx", batch="batch")
    result = build_engine(path, BuildOptions(max_batch_size=4, opt_batch_size=2))
    assert result.profile.min == (1, 3, 16, 16)
    assert result.profile.opt == (2, 3, 16, 16)
    assert result.profile.max == (4, 3, 16, 16)


def test_build_shows_progress(onnx_file: Path, capsys):
    build_engine(onnx_file, BuildOptions(), progress=True)
    err = capsys.readouterr().err
    assert "engine" in err.lower()  # the tqdm bar, driven by IProgressMonitor phases


@pytest.mark.skipif(not TRT.is_rtx, reason="checks the TensorRT-for-RTX strongly typed rules")
def test_rtx_precision_rules(onnx_file: Path, tmp_path: Path):
    with pytest.raises(EngineBuildError, match="--precision fp16"):
        build_engine(onnx_file, BuildOptions(precision="fp16"))
    with pytest.raises(EngineBuildError, match="INT8 .* not available"):
        build_engine(onnx_file, BuildOptions(precision="int8"))
    half = tiny_onnx(tmp_path / "half.onnx", fp16=True)
    result = build_engine(half, BuildOptions(precision="fp16"))
    assert result.strongly_typed and len(result.engine) > 1000
    with pytest.raises(EngineBuildError, match="computes in fp16"):
        build_engine(half, BuildOptions(precision="fp32"))


def test_parse_errors_are_all_reported(tmp_path: Path, onnx_file: Path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_file.read_bytes()[:200])
    with pytest.raises(OnnxParseError) as info:
        build_engine(truncated)
    assert str(truncated) in str(info.value)

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="custom.ops")
    graph = helper.make_graph(
        [node],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom.ops", 1)]
    )
    unsupported = tmp_path / "unsupported.onnx"
    onnx.save(model, str(unsupported))
    with pytest.raises(OnnxParseError) as info:
        build_engine(unsupported)
    assert info.value.errors, "every parser error is listed"
    assert "NoSuchOp" in str(info.value)


def test_engine_cache_reuses_and_rebuilds_on_key_changes(onnx_file: Path, tmp_path: Path):
    engine = tmp_path / "cache" / "tiny.engine"
    options = BuildOptions(workspace_mib=64)
    data, built = get_or_build_engine(onnx_file, engine, options)
    assert built and engine.read_bytes() == data
    record = json.loads(sidecar_path(engine).read_text())
    assert record["key"] == compute_key(onnx_file, options).to_dict()
    assert record["key"]["tensorrt"] == TRT.version_string
    assert record["key"]["onnx_sha256"] == sha256_file(onnx_file)

    assert get_or_build_engine(onnx_file, engine, options)[1] is False  # same key: reused
    assert get_or_build_engine(onnx_file, engine, BuildOptions(workspace_mib=128))[1] is True
    assert get_or_build_engine(onnx_file, engine, BuildOptions(workspace_mib=128))[1] is False
    tiny_onnx(onnx_file, seed=1)  # new ONNX content, same path
    assert get_or_build_engine(onnx_file, engine, BuildOptions(workspace_mib=128))[1] is True
    assert (
        get_or_build_engine(onnx_file, engine, BuildOptions(workspace_mib=128), force=True)[1]
        is True
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("tensorrt", "tensorrt-9.0.0"),
        ("gpu_name", "NVIDIA H100 80GB HBM3"),
        ("compute_capability", "9.0"),
        ("precision", "fp16"),
        (
            "input_profile",
            {
                "name": "images",
                "min": [1, 3, 32, 32],
                "opt": [1, 3, 32, 32],
                "max": [1, 3, 32, 32],
            },
        ),
    ],
)
def test_recorded_key_mismatch_rebuilds(onnx_file: Path, tmp_path: Path, field, value):
    engine = tmp_path / "tiny.engine"
    options = BuildOptions(workspace_mib=64)
    get_or_build_engine(onnx_file, engine, options)
    sidecar = sidecar_path(engine)
    record = json.loads(sidecar.read_text())
    record["key"][field] = value  # as if built by another TensorRT / on another GPU / ...
    sidecar.write_text(json.dumps(record))
    with pytest.raises(EngineFileError, match=field):
        read_engine_file(engine, compute_key(onnx_file, options))
    assert get_or_build_engine(onnx_file, engine, options)[1] is True
    assert json.loads(sidecar.read_text())["key"][field] != value


def test_engine_file_errors_name_file_and_rebuild_command(onnx_file: Path, tmp_path: Path):
    missing = tmp_path / "missing.engine"
    with pytest.raises(EngineFileError) as info:
        read_engine_file(missing)
    assert str(missing) in str(info.value)
    assert "python -m dfanet_core.deploy.build_engine" in str(info.value)

    engine = tmp_path / "tiny.engine"
    get_or_build_engine(onnx_file, engine, BuildOptions())
    engine.write_bytes(engine.read_bytes()[:-100])  # truncated behind the cache's back
    with pytest.raises(EngineFileError, match="corrupt or incomplete") as info:
        read_engine_file(engine)
    assert str(engine) in str(info.value)
    assert f"--onnx {onnx_file.resolve()}" in str(info.value)
    assert get_or_build_engine(onnx_file, engine, BuildOptions())[1] is True

    sidecar_path(engine).unlink()
    with pytest.raises(EngineFileError, match="no valid sidecar"):
        read_engine_file(engine, compute_key(onnx_file, BuildOptions()))


KILL_BETWEEN_ENGINE_AND_SIDECAR = textwrap.dedent(
    """
    import os, signal, sys
    from dfanet_core.deploy.tensorrt import cache
    from dfanet_core.deploy.tensorrt.builder import BuildOptions

    def die(*args, **kwargs):  # the process dies after the engine, before its sidecar
        os.kill(os.getpid(), signal.SIGKILL)

    cache.atomic_write_json = die
    cache.get_or_build_engine(sys.argv[1], sys.argv[2], BuildOptions(workspace_mib=32), force=True)
    """
)

KILL_DURING_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from dfanet_core.files import atomic_path

    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"half an engine")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _run_killed(script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_killed_build_leaves_no_loadable_engine(onnx_file: Path, tmp_path: Path):
    engine = tmp_path / "tiny.engine"
    options = BuildOptions(workspace_mib=64)
    get_or_build_engine(onnx_file, engine, options)
    good_sidecar = sidecar_path(engine).read_text()
    # Killed after the new engine replaced the old one but before its sidecar: the old sidecar no
    # longer vouches for the file, so it does not load, and the next call rebuilds.
    _run_killed(KILL_BETWEEN_ENGINE_AND_SIDECAR, str(onnx_file), str(engine))
    assert sidecar_path(engine).read_text() == good_sidecar
    with pytest.raises(EngineFileError, match="corrupt or incomplete"):
        read_engine_file(engine, compute_key(onnx_file, options))
    assert get_or_build_engine(onnx_file, engine, options)[1] is True


def test_killed_write_leaves_no_file(tmp_path: Path):
    target = tmp_path / "fresh.engine"
    _run_killed(KILL_DURING_WRITE, str(target))
    assert not target.exists()
    leftovers = list(tmp_path.glob(".fresh.engine.*.tmp"))
    assert leftovers, "the partial write stays under a temporary name nothing loads"
    with pytest.raises(EngineFileError, match="not found"):
        read_engine_file(target)


def test_exception_inside_writer_leaves_nothing(tmp_path: Path):
    target = tmp_path / "x.engine"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_build_engine_cli(onnx_file: Path, tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "cli.engine"
    argv = [
        "--onnx",
        str(onnx_file),
        "--precision",
        "fp32",
        "--out",
        str(out),
        "--quiet",
        "--workspace-mib",
        "64",
    ]
    assert build_engine_cli.main(argv) == 0
    assert out.is_file() and sidecar_path(out).is_file()
    assert (tmp_path / "timing.cache").is_file()
    caplog.clear()
    assert build_engine_cli.main(argv) == 0
    assert "reused" in caplog.text
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    assert (
        build_engine_cli.main(
            [
                "--onnx",
                str(corrupt),
                "--out",
                str(tmp_path / "c.engine"),
                "--precision",
                "fp32",
                "--quiet",
            ]
        )
        == 2
    )
    assert "could not parse" in caplog.text


def test_calibration_images_from_folder_and_list(camvid_root: Path, tmp_path: Path):
    images = sorted((camvid_root / "test").glob("*.png"))[:3]
    listing = tmp_path / "calib.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    assert calibration_image_paths(listing) == images
    assert calibration_image_paths(camvid_root / "test")[:3] == images
    with pytest.raises(FileNotFoundError):
        calibration_image_paths(tmp_path / "nope")
    batches = list(calibration_batches(images, (64, 96), 2, [0.5] * 3, [0.25] * 3))
    assert len(batches) == 1 and batches[0].shape == (2, 3, 64, 96)
    assert batches[0].dtype == np.float32 and np.abs(batches[0]).max() <= 2.0 + 1e-6


@pytest.mark.gpu
def test_runner_executes_engine_on_gpu(tmp_path: Path):
    from dfanet_core.deploy.backends import tensorrt_usable
    from dfanet_core.deploy.tensorrt.runner import TrtRunner

    if not tensorrt_usable():
        pytest.skip(f"{TRT.version_string} cannot run on {torch.cuda.get_device_name()}")
    path = tiny_onnx(tmp_path / "dyn.onnx", batch="batch")
    result = build_engine(path, BuildOptions(max_batch_size=4))
    model = onnx.load(str(path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    x = torch.randn(3, 3, 16, 16, device="cuda")
    with TrtRunner(result.engine) as runner:
        assert set(runner.inputs) == {"images"}
        assert set(runner.outputs) == {"class_ids", "confidence"}
        out = runner.infer({"images": x})
        torch.cuda.synchronize()
    logits = torch.nn.functional.conv2d(
        x.cpu(), torch.from_numpy(weights["w"]), torch.from_numpy(weights["b"]), padding=1
    )
    assert out["class_ids"].dtype == torch.uint8 and out["class_ids"].shape == (3, 16, 16)
    agree = (out["class_ids"].cpu() == logits.argmax(1).to(torch.uint8)).float().mean()
    assert agree > 0.99
    conf = out["confidence"].cpu()
    assert torch.allclose(conf, torch.softmax(logits, 1).amax(1), atol=1e-3)
    assert not runner.is_active
