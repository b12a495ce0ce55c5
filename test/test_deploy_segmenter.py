"""Segmenter: the same masks from every backend, at every input's resolution, any channel order,
resize mode and batch mix; clear errors for bad input; RuntimeOptions and make_backend. Real
CamVid images through the shipped trained weights (conftest), whose masks vary with the content,
the colour order and the size of the image: a channel swap or a wrong resize changes them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dfanet_core import Segmenter
from dfanet_core.deploy import preprocess as pp
from dfanet_core.deploy.backends import BackendUnavailableError, make_backend, resolve_backend
from dfanet_core.deploy.export import read_onnx_info
from dfanet_core.deploy.options import RuntimeOptions, TensorRTOptions
from dfanet_core.deploy.segmenter import SegmentationResult

INPUT_SIZE = (192, 256)  # CamVid's 3:4 aspect, small enough for a quick CPU run
ORT = {"backend": "onnxruntime", "input_size": INPUT_SIZE, "intra_op_threads": 1}
TORCH = {"backend": "torch", "input_size": INPUT_SIZE, "device": "cpu"}


# One intra-op thread for this module's CPU inference (conftest.one_cpu_thread explains why).
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture
def seg_ort(segmenter_of, shipped_checkpoint) -> Segmenter:
    return segmenter_of(shipped_checkpoint, **ORT)


@pytest.fixture
def seg_torch(segmenter_of, shipped_checkpoint) -> Segmenter:
    return segmenter_of(shipped_checkpoint, **TORCH)


@pytest.fixture
def images(camvid_images) -> list[np.ndarray]:
    return camvid_images


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def nearest_back(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour on pixel centres, in floating point: row ``floor((y + 0.5) * h / H)``."""
    rows = np.floor((np.arange(height) + 0.5) * mask.shape[0] / height).astype(int)
    cols = np.floor((np.arange(width) + 0.5) * mask.shape[1] / width).astype(int)
    return mask[rows[:, None], cols[None, :]]


def by_hand(seg: Segmenter, image: np.ndarray) -> np.ndarray:
    """The mask of ``image`` computed another way: bilinear resize to the network input with
    OpenCV, the Segmenter on that network-sized image (nothing to resize inside), then nearest
    neighbour back to the image size (:func:`nearest_back`)."""
    height, width = seg.input_size
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return nearest_back(seg.predict(small), *image.shape[:2])


def test_the_reference_masks_vary(seg_ort, images):
    """Every comparison below would pass whatever the code does if the masks were one class
    everywhere (an untrained network's): these have structure, per image and across images."""
    masks = seg_ort.predict(images)
    for mask in masks:
        assert len(np.unique(mask)) >= 3
    assert not np.array_equal(masks[0], masks[1])


def test_onnxruntime_and_torch_masks_agree_on_camvid(seg_ort, seg_torch, images):
    assert seg_ort.backend_name == "onnxruntime" and seg_torch.backend_name == "torch"
    ort_masks = seg_ort.predict(images)
    torch_masks = seg_torch.predict(images)
    for image, a, b in zip(images, ort_masks, torch_masks):
        assert a.shape == image.shape[:2] and a.dtype == np.uint8
        assert agreement(a, b) >= 0.999
    assert all(m.max() < seg_ort.num_classes for m in ort_masks)


def test_segmenter_exposes_checkpoint_meta(seg_ort, segmenter_of, shipped_checkpoint):
    assert seg_ort.input_size == INPUT_SIZE
    assert seg_ort.precision == "fp32"
    assert seg_ort.class_names[0] == "Sky" and len(seg_ort.palette) == 11
    assert seg_ort.meta["variant"] == "dfanet_a" and seg_ort.meta["dataset"] == "camvid"
    default = segmenter_of(shipped_checkpoint, backend="torch", device="cpu")
    assert default.input_size == (360, 480)  # input_size=None -> meta['input_size']


@pytest.mark.parametrize("shape", [(301, 417), (97, 203), (360, 480), (33, 1000), (720, 960)])
def test_masks_come_back_at_each_input_resolution(seg_ort, seg_torch, images, shape):
    image = cv2.resize(images[0], (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    for seg in (seg_ort, seg_torch):
        mask = seg.predict(image)
        assert mask.shape == shape and mask.dtype == np.uint8
    assert agreement(seg_ort.predict(image), seg_torch.predict(image)) >= 0.999
    # the same mask as resizing by hand (a transposed, shifted or blurred resize is not)
    assert agreement(seg_ort.predict(image), by_hand(seg_ort, image)) >= 0.999


def test_list_of_mixed_sizes_matches_single_calls(seg_ort, images):
    mixed = [images[0], np.ascontiguousarray(images[1][:251, 13:400]), images[2][::2, ::2]]
    masks = seg_ort.predict(mixed)
    assert isinstance(masks, list) and len(masks) == 3
    for image, mask in zip(mixed, masks):
        assert mask.shape == image.shape[:2]
        assert np.array_equal(mask, seg_ort.predict(image))


def test_rgb_and_bgr_inputs_give_the_same_mask(seg_ort, seg_torch, images):
    rgb = images[1]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for seg in (seg_ort, seg_torch):
        assert np.array_equal(
            seg.predict(rgb, channel_order="RGB"), seg.predict(bgr, channel_order="BGR")
        )
    # and the order matters: a BGR image read as RGB gives another mask
    for seg in (seg_ort, seg_torch):
        right = seg.predict(rgb)
        assert agreement(seg.predict(bgr, channel_order="RGB"), right) < 0.95


def test_letterbox_placement_and_restore():
    place = pp.plan_placement((180, 480), (192, 256), "letterbox")
    assert (place.top, place.left, place.height, place.width) == (48, 0, 96, 256)
    # a network map whose value is its row: the restored mask must be rows 48..143 stretched back
    rows = np.repeat(np.arange(192, dtype=np.uint8)[:, None], 256, axis=1)
    restored = pp.restore_numpy(rows, place)
    assert restored.shape == (180, 480)
    assert restored[0, 0] == 48 and restored[-1, 0] == 143
    assert np.array_equal(restored, pp.restore_torch(torch.from_numpy(rows), place).numpy())


def test_letterbox_pads_with_the_mean_and_keeps_aspect(images):
    image = images[0][:120]  # 120 x 480: 1:4, much wider than the 3:4 network
    place = pp.plan_placement(image.shape[:2], INPUT_SIZE, "letterbox")
    batch = pp.preprocess_numpy([image], [place], INPUT_SIZE, [0.5] * 3, [0.25] * 3)
    assert place.width == 256 and place.height == 64
    assert np.all(batch[0, :, : place.top] == 0)  # padding = mean colour = 0 after normalization
    assert np.all(batch[0, :, place.top + place.height :] == 0)
    assert np.abs(batch[0, :, place.top : place.top + place.height]).sum() > 0
    same = pp.preprocess_torch(
        [image], [place], INPUT_SIZE, [0.5] * 3, [0.25] * 3, "RGB", torch.device("cpu")
    )
    assert np.abs(same.numpy() - batch).max() < 0.05  # bilinear: OpenCV (uint8) vs torch (float)


def test_letterbox_vs_stretch_segmenter(segmenter_of, shipped_checkpoint, images):
    letter = segmenter_of(shipped_checkpoint, **ORT, resize_mode="letterbox")
    stretch = segmenter_of(shipped_checkpoint, **ORT)
    # same aspect as the network: letterbox places the image exactly like stretch
    assert np.array_equal(letter.predict(images[0]), stretch.predict(images[0]))
    wide = np.ascontiguousarray(images[1][:120])
    a, b = letter.predict(wide), stretch.predict(wide)
    assert a.shape == b.shape == wide.shape[:2]
    assert agreement(a, b) < 0.95  # letterboxed, the network sees another image
    # by hand: the image scaled to fit the width, centred on the mean colour, the mask cropped
    # back and resized with nearest neighbour
    place = pp.plan_placement(wide.shape[:2], INPUT_SIZE, "letterbox")
    padded = np.empty((*INPUT_SIZE, 3), np.uint8)
    padded[:] = np.round(np.asarray(letter.meta["mean"]) * 255).astype(np.uint8)
    padded[place.top:place.top + place.height, place.left:place.left + place.width] = \
        cv2.resize(wide, (place.width, place.height), interpolation=cv2.INTER_LINEAR)
    region = stretch.predict(padded)[place.top:place.top + place.height,
                                     place.left:place.left + place.width]
    assert agreement(a, nearest_back(region, *wide.shape[:2])) >= 0.99
    with pytest.raises(ValueError, match="resize_mode"):
        Segmenter.from_checkpoint(
            shipped_checkpoint, backend="torch", device="cpu", resize_mode="crop"
        )


def test_detailed_result_confidence_timings_overlay(seg_ort, seg_torch, images):
    for seg in (seg_ort, seg_torch):
        res = seg.predict_detailed(images[:2], confidence=True, overlay=True)
        assert isinstance(res, SegmentationResult)
        assert len(res.masks) == len(res.confidences) == len(res.overlays) == 2
        for image, mask, conf, over in zip(images, res.masks, res.confidences, res.overlays):
            assert conf.shape == mask.shape == image.shape[:2] and conf.dtype == np.float32
            assert conf.min() >= 1.0 / seg.num_classes - 1e-6 and conf.max() <= 1.0
            assert over.shape == image.shape and over.dtype == np.uint8
        assert set(res.timings_ms) == {"preprocess", "inference", "postprocess", "total"}
        assert all(v > 0 for v in res.timings_ms.values())
        assert res.timings_ms["total"] >= res.timings_ms["inference"]
        assert seg.last_timings_ms == res.timings_ms
        assert seg.predict_detailed(images[0]).confidences is None
    a = seg_ort.predict_detailed(images[0], confidence=True).confidences[0]
    b = seg_torch.predict_detailed(images[0], confidence=True).confidences[0]
    assert np.abs(a - b).max() < 1e-4


def test_bgr_overlay_is_returned_in_bgr(seg_ort, images):
    rgb = images[0]
    mask = seg_ort.predict(rgb)
    over_rgb = seg_ort.overlay(rgb, mask)
    over_bgr = seg_ort.overlay(np.ascontiguousarray(rgb[:, :, ::-1]), mask, channel_order="BGR")
    assert np.array_equal(over_rgb, over_bgr[:, :, ::-1])
    assert np.array_equal(seg_ort.colorize(mask)[0, 0], seg_ort.palette[mask[0, 0]])


@pytest.mark.parametrize(
    "bad,expected",
    [
        ([], "at least one image"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((10, 10, 4), np.uint8), "3 colour channels"),
        (np.zeros((0, 10, 3), np.uint8), "non-empty"),
        ("image.png", "numpy"),
        ([np.zeros((8, 8, 3), np.uint8), None], "image 1"),
    ],
)
def test_bad_input_raises_value_error(seg_ort, bad, expected):
    with pytest.raises(ValueError, match=expected):
        seg_ort.predict(bad)


def test_bad_channel_order_and_precision(seg_ort, untrained_checkpoint):
    with pytest.raises(ValueError, match="channel_order"):
        seg_ort.predict(np.zeros((8, 8, 3), np.uint8), channel_order="RGBA")
    with pytest.raises(ValueError, match="precision"):
        Segmenter.from_checkpoint(
            untrained_checkpoint, backend="onnxruntime", precision="fp16", input_size=INPUT_SIZE
        )
    with pytest.raises(ValueError, match="CUDA"):
        Segmenter.from_checkpoint(
            untrained_checkpoint, backend="torch", device="cpu", precision="fp16"
        )
    with pytest.raises(ValueError, match="backend"):
        Segmenter.from_checkpoint(untrained_checkpoint, backend="openvino")


def ort_export(onnx_cache: Path) -> Path:
    """The classes-head export ``seg_ort`` runs (the session cache holds others too)."""
    (path,) = onnx_cache.glob("*-192x256-b1-fp32-classes-*.onnx")
    return path


def test_onnx_export_is_cached_by_checkpoint_and_size(seg_ort, onnx_cache, shipped_checkpoint):
    path = ort_export(onnx_cache)
    stamp = path.stat().st_mtime_ns
    with Segmenter.from_checkpoint(shipped_checkpoint, **ORT) as again:
        assert again.input_size == INPUT_SIZE
    assert path.stat().st_mtime_ns == stamp, "reused, not re-exported"
    assert ort_export(onnx_cache) == path
    assert not list(onnx_cache.glob(".*.tmp"))


def test_from_onnx_reads_everything_from_the_file(seg_ort, onnx_cache, images):
    path = ort_export(onnx_cache)
    info = read_onnx_info(path)
    assert info.export["head"] == "classes"
    assert info.output_names == ("class_ids", "confidence")
    seg = Segmenter.from_onnx(path, backend="onnxruntime", intra_op_threads=1)
    assert seg.input_size == INPUT_SIZE and seg.class_names == seg_ort.class_names
    assert np.array_equal(seg.predict(images[3]), seg_ort.predict(images[3]))


def test_batched_segmenter_runs_lists_in_one_call(segmenter_of, shipped_checkpoint, images,
                                                  seg_ort):
    batched = segmenter_of(shipped_checkpoint, **TORCH, max_batch_size=4)
    assert batched.backend.max_batch_size == 4
    masks = batched.predict(images)
    for image, mask in zip(images, masks):
        assert agreement(mask, seg_ort.predict(image)) >= 0.999
    # the batch is really split back per image (not, say, image 0's mask four times)
    assert not np.array_equal(masks[0], masks[1])


# -- runtime options and the backend factory -------------------------------------------------
def test_runtime_options_take_the_flat_keywords_and_check_them(tmp_path):
    options = RuntimeOptions.from_keywords(backend="tensorrt", precision="fp16",
                                           workspace_mib=512, force_rebuild=True,
                                           engine_cache_dir=str(tmp_path), input_size=[64, 96])
    assert options.tensorrt == TensorRTOptions(workspace_mib=512, force_rebuild=True)
    assert options.engine_cache_dir == tmp_path and options.input_size == (64, 96)
    with pytest.raises(AttributeError):
        options.backend = "torch"  # frozen
    with pytest.raises(TypeError, match="unknown runtime option.*'engine_dir'.*valid:"):
        RuntimeOptions.from_keywords(engine_dir="/x")
    for bad, message in [({"backend": "openvino"}, "backend must be 'auto' or one of"),
                         ({"precision": "fp64"}, "precision must be one of"),
                         ({"resize_mode": "crop"}, "resize_mode must be one of"),
                         ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
                         ({"input_size": (16, 64)}, r"input_size must be \(H, W\)")]:
        with pytest.raises(ValueError, match=message):
            RuntimeOptions(**bad)


def test_load_and_make_backend_serve_checkpoints_and_onnx_files(
    seg_ort, onnx_cache, shipped_checkpoint, images
):
    options = RuntimeOptions(**ORT)
    with Segmenter.load(shipped_checkpoint, options) as loaded:
        assert loaded.backend_name == "onnxruntime" and loaded.input_size == INPUT_SIZE
        assert np.array_equal(loaded.predict(images[2]), seg_ort.predict(images[2]))
    backend = make_backend(ort_export(onnx_cache), RuntimeOptions(backend="auto", device="cpu"))
    assert backend.name == "onnxruntime" and backend.meta["class_names"] == seg_ort.class_names
    with pytest.raises(ValueError, match="an ONNX file fixes its own input size"):
        make_backend(ort_export(onnx_cache), RuntimeOptions(input_size=(96, 128)))
    with pytest.raises(ValueError, match="the torch backend needs a checkpoint"):
        make_backend(ort_export(onnx_cache), RuntimeOptions(backend="torch"))


def test_auto_backend_on_this_machine():
    """This machine (development and CI): no CUDA GPU, so auto is ONNX Runtime on the CPU."""
    assert not torch.cuda.is_available(), "a GPU machine runs test_auto_backend_on_a_gpu"
    assert resolve_backend("auto") == "onnxruntime"
    assert resolve_backend("auto", device="cpu") == "onnxruntime"


@pytest.mark.gpu
def test_auto_backend_on_a_gpu():
    from dfanet_core.deploy.backends import tensorrt_usable

    assert resolve_backend("auto") == ("tensorrt" if tensorrt_usable() else "torch")
    assert resolve_backend("auto", device="cpu") == "onnxruntime"


def test_tensorrt_backend_without_gpu_says_what_is_missing(seg_ort, onnx_cache, tmp_path):
    assert not torch.cuda.is_available(), "this machine has no GPU (the test needs none)"
    with pytest.raises(BackendUnavailableError, match="CUDA GPU"):
        Segmenter.from_onnx(ort_export(onnx_cache), backend="tensorrt", engine_cache_dir=tmp_path)


def test_tensorrt_builds_the_dfanet_graph(shipped_checkpoint, tmp_path):
    """The real network's classes-head ONNX as the tensorrt backend exports it (Resize, Concat,
    depthwise convs, ArgMax, uint8 Cast; the fast head; no threshold input: the builder takes
    one input) parses and builds with the installed TensorRT, no GPU needed."""
    from dfanet_core.deploy.export import cached_onnx_export
    from dfanet_core.deploy.tensorrt import BuildOptions, get_or_build_engine
    from dfanet_core.deploy.tensorrt.builder import EngineBuildError

    path = cached_onnx_export(shipped_checkpoint, INPUT_SIZE, 1, "fp32", tmp_path / "onnx",
                              head_resolution="x2")
    with pytest.raises(EngineBuildError, match="min_confidence"):  # the ONNX Runtime export
        get_or_build_engine(cached_onnx_export(shipped_checkpoint, INPUT_SIZE, 1, "fp32",
                                               tmp_path / "onnx", head_resolution="x2",
                                               min_confidence_input=True),
                            tmp_path / "ort.engine", BuildOptions(workspace_mib=256))
    engine = tmp_path / "dfanet_b.fp32.engine"
    data, built = get_or_build_engine(path, engine, BuildOptions(workspace_mib=256))
    assert built and len(data) > 1_000_000 and engine.is_file()


# --- GPU (skipped without CUDA) -------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_matches_cpu(shipped_checkpoint, seg_torch, images, precision):
    cuda = Segmenter.from_checkpoint(
        shipped_checkpoint,
        backend="torch",
        device="cuda",
        input_size=INPUT_SIZE,
        precision=precision,
    )
    assert cuda.device.type == "cuda" and cuda.backend.channels_last
    for image in images:
        assert agreement(cuda.predict(image), seg_torch.predict(image)) >= 0.995
    res = cuda.predict_detailed(images, confidence=True)
    assert all(c.dtype == np.float32 and c.max() <= 1.0 for c in res.confidences)


@pytest.mark.gpu
def test_cuda_graphs_match_eager(shipped_checkpoint, images):
    eager = Segmenter.from_checkpoint(
        shipped_checkpoint,
        backend="torch",
        device="cuda",
        input_size=INPUT_SIZE,
        precision="fp16",
    )
    graphs = Segmenter.from_checkpoint(
        shipped_checkpoint,
        backend="torch",
        device="cuda",
        input_size=INPUT_SIZE,
        precision="fp16",
        cuda_graphs=True,
    )
    for image in images:
        assert np.array_equal(graphs.predict(image), eager.predict(image))


@pytest.mark.gpu
def test_tensorrt_segmenter_matches_torch(shipped_checkpoint, seg_torch, images, tmp_path):
    from dfanet_core.deploy.backends import tensorrt_usable

    if not tensorrt_usable():
        pytest.skip("TensorRT is not installed or does not support this GPU")
    seg = Segmenter.from_checkpoint(
        shipped_checkpoint,
        backend="tensorrt",
        input_size=INPUT_SIZE,
        precision="fp32",
        onnx_cache_dir=tmp_path / "onnx",
        engine_cache_dir=tmp_path / "engines",
    )
    assert seg.backend_name == "tensorrt"
    for image in images:
        assert agreement(seg.predict(image), seg_torch.predict(image)) >= 0.995
