"""ONNX export: opset 18, one self-describing file, ONNX Runtime parity on real CamVid images
(the one parity test, through the project's exporter, for every network family)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from dfanet_core import create_model, load_checkpoint
from dfanet_core.checkpoint import default_meta
from dfanet_core.deploy import export as export_mod
from dfanet_core.deploy.export import (
    OnnxModelError,
    check_parity,
    export_checkpoint,
    export_onnx,
    read_onnx_info,
)

INPUT_SIZE = (192, 256)


# One intra-op thread for this module's CPU inference (conftest.one_cpu_thread explains why).
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def exported(untrained_checkpoint: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "dfanet_b.onnx"
    return export_checkpoint(untrained_checkpoint, out, input_size=INPUT_SIZE, head="logits")


def test_export_is_valid_single_file_opset18(exported: Path):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert external == [], "weights must be inside the one file"
    assert sorted(p.name for p in exported.parent.iterdir()) == [exported.name]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, *INPUT_SIZE]
    assert [o.name for o in model.graph.output] == ["logits"]


def test_export_metadata_makes_the_file_self_describing(exported: Path, untrained_checkpoint):
    _, meta = load_checkpoint(untrained_checkpoint)
    info = read_onnx_info(exported)
    for key in ("class_names", "palette", "mean", "std", "variant", "num_classes", "input_size"):
        assert info.meta[key] == meta[key], key
    assert info.export["input_size"] == list(INPUT_SIZE)
    assert info.export["head"] == "logits" and info.export["precision"] == "fp32"
    assert info.export["exporter"] == "dynamo", info.export.get("exporter_fallback")
    assert info.input_size == INPUT_SIZE and not info.dynamic_batch
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(props["dfanet.class_names"])[3] == "Road"


@pytest.mark.parametrize("name", ["dfanet_a", "dfanet_b", "backbone_a"])
def test_onnxruntime_matches_pytorch_on_camvid(name: str, tmp_path: Path, camvid_images):
    """The project's exporter (batch norm folded, opset 18, one file) against PyTorch fp32 on
    real frames, for each network family; the batch-norm statistics are moved away from their
    defaults first, so that the logits have structure to disagree on."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=11).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, 64, 96))
    model.eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", meta=default_meta(name, 11),
                       input_size=(360, 480), head="logits")
    report = check_parity(path, model, camvid_images[:2], intra_op_threads=1)
    assert report.images == 2
    assert report.max_abs_diff < 1e-3
    assert report.argmax_agreement > 0.999
    assert report.passed


def test_read_onnx_info_errors_name_the_file_and_command(tmp_path: Path, exported: Path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(OnnxModelError) as info:
        read_onnx_info(missing)
    assert str(missing) in str(info.value)
    assert "python -m dfanet_core.deploy.export" in str(info.value)

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.read_bytes()[:5000])
    with pytest.raises(OnnxModelError, match="not a readable ONNX") as info:
        read_onnx_info(truncated)
    assert str(truncated) in str(info.value)

    bare = onnx.load(str(exported))
    del bare.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(bare, str(foreign))
    with pytest.raises(OnnxModelError, match="no dfanet metadata"):
        read_onnx_info(foreign)


def test_export_cli_errors_exit_nonzero_with_message(tmp_path: Path, caplog):
    missing = tmp_path / "none.safetensors"
    code = export_mod.main(["--checkpoint", str(missing), "--out", str(tmp_path / "x.onnx")])
    assert code == 2
    assert str(missing) in caplog.text
    assert not (tmp_path / "x.onnx").exists()


def test_export_rejects_bad_arguments(untrained_checkpoint: Path, tmp_path: Path):
    model, meta = load_checkpoint(untrained_checkpoint)
    with pytest.raises(ValueError, match="head"):
        export_mod.export_onnx(
            model, tmp_path / "a.onnx", meta=meta, input_size=(64, 64), head="argmax"
        )
    with pytest.raises(ValueError, match="input_size"):
        export_mod.export_onnx(model, tmp_path / "a.onnx", meta=meta, input_size=(16, 64))
    assert not list(tmp_path.iterdir())
