"""Output heads and the runtime options of issue 13: the fast head (class ids from the decoder's
1/4-resolution logits, x2) against the exact one (full-resolution logits) on real CamVid frames
with the shipped weights, on every CPU backend; ``min_confidence`` marking unconfident pixels
255 inside the graph or on the torch device; one nearest resize from any head resolution; and
invalid option combinations named with their allowed values."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from dfanet_core import Segmenter
from dfanet_core.deploy import preprocess as pp
from dfanet_core.deploy.backends import make_backend
from dfanet_core.deploy.export import export_checkpoint, read_onnx_info
from dfanet_core.deploy.heads import (
    HEAD_RESOLUTION_OF,
    MIN_CONFIDENCE_INPUT,
    SKIP_CONFIDENCE,
    UNLABELLED,
)
from dfanet_core.deploy.options import (
    COMPILE_MODES,
    HEADS,
    ORT_OPTIMIZATIONS,
    RuntimeOptions,
    check_min_confidence,
)

INPUT_SIZE = (240, 320)  # CamVid's 3:4 aspect; a size no other test module exports
ORT = {"backend": "onnxruntime", "input_size": INPUT_SIZE, "intra_op_threads": 1}
TORCH = {"backend": "torch", "input_size": INPUT_SIZE, "device": "cpu"}
BACKENDS = {"onnxruntime": ORT, "torch": TORCH}
#: Measured on the first 4 CamVid test frames, shipped weights, 240x320 (ONNX Runtime and
#: torch alike): the fast head equals the exact head on 97.8-98.4 % of pixels per frame (over
#: all 233 test frames at 360x480: mean 98.4 %, min 97.6 %, bench/head_accuracy.py).
MIN_FAST_EXACT_AGREEMENT = 0.97

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_fast_head_agrees_with_the_exact_head_on_camvid(segmenter_of, shipped_checkpoint,
                                                        camvid_images, backend):
    fast = segmenter_of(shipped_checkpoint, **BACKENDS[backend], head="fast")
    exact = segmenter_of(shipped_checkpoint, **BACKENDS[backend], head="exact")
    for image in camvid_images:
        fast_mask, exact_mask = fast.predict(image), exact.predict(image)
        assert fast_mask.shape == exact_mask.shape == image.shape[:2]
        assert agreement(fast_mask, exact_mask) >= MIN_FAST_EXACT_AGREEMENT
        # both heads are really selected: they differ where the upsampling order matters
        assert not np.array_equal(fast_mask, exact_mask)
        assert len(np.unique(fast_mask)) >= 4, "masks with structure, not one class"


def test_each_backend_runs_the_head_it_was_given(segmenter_of, shipped_checkpoint):
    """The fast head's output is 1/2 of the network input (x2 from the decoder's 1/4), the exact
    head's the full input; the export records it and both backends return the same shape."""
    height, width = INPUT_SIZE
    expected = {"fast": (height // 2, width // 2), "exact": (height, width)}
    batch = np.zeros((1, 3, *INPUT_SIZE), np.float32)
    for head, shape in expected.items():
        for options in BACKENDS.values():
            seg = segmenter_of(shipped_checkpoint, **options, head=head)
            ids, conf = seg.backend.infer(batch, confidence=True)
            assert ids.shape == conf.shape == (1, *shape), (head, seg.backend_name)
            assert seg.backend.describe()["head_resolution"] == HEAD_RESOLUTION_OF[head]
        ort = segmenter_of(shipped_checkpoint, **ORT, head=head)
        assert ort.backend.info.export["head_resolution"] == HEAD_RESOLUTION_OF[head]


def test_onnxruntime_and_torch_give_the_same_fast_masks(segmenter_of, shipped_checkpoint,
                                                        camvid_images):
    ort = segmenter_of(shipped_checkpoint, **ORT, head="fast")
    eager = segmenter_of(shipped_checkpoint, **TORCH, head="fast")
    for image in camvid_images:
        assert agreement(ort.predict(image), eager.predict(image)) >= 0.999


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("head", HEADS)
def test_min_confidence_marks_unconfident_pixels_unlabelled(segmenter_of, shipped_checkpoint,
                                                            camvid_images, backend, head):
    seg = segmenter_of(shipped_checkpoint, **BACKENDS[backend], head=head)
    image = camvid_images[0]
    plain = seg.predict(image)
    assert not (plain == UNLABELLED).any()
    assert np.array_equal(seg.predict(image, min_confidence=0.0), plain)
    result = seg.predict_detailed(image, confidence=True, min_confidence=0.6)
    masked, conf = result.masks[0], result.confidences[0]
    unknown = masked == UNLABELLED
    # measured at 240x320 with the shipped weights: 45 % of this frame is below 0.6
    assert 0.05 < unknown.mean() < 0.8
    assert np.array_equal(masked[~unknown], plain[~unknown])
    # exactly the pixels whose (restored) top-class probability is below the threshold
    assert np.array_equal(unknown, conf < 0.6)
    # "below": a pixel whose probability equals the threshold keeps its class
    level = float(np.sort(conf, axis=None)[conf.size // 2])  # a value some pixels have
    at_level = seg.predict(image, min_confidence=level)
    assert (conf == level).any() and not (at_level[conf == level] == UNLABELLED).any()
    assert np.array_equal(at_level == UNLABELLED, conf < level)
    assert (seg.predict(image, min_confidence=1.0) == UNLABELLED).mean() > 0.99


def test_min_confidence_is_the_same_in_the_graph_and_outside_it(segmenter_of, shipped_checkpoint,
                                                               camvid_images, tmp_path):
    """An ONNX exported without the threshold input (as for TensorRT) thresholds its outputs in
    numpy; the Segmenter's export thresholds inside the graph: same masks."""
    in_graph = segmenter_of(shipped_checkpoint, **ORT, head="fast")
    assert in_graph.backend.info.has_min_confidence_input
    path = export_checkpoint(shipped_checkpoint, tmp_path / "plain.onnx", input_size=INPUT_SIZE,
                             head="classes", head_resolution="x2")
    assert not read_onnx_info(path).has_min_confidence_input
    with Segmenter.from_onnx(path, backend="onnxruntime", intra_op_threads=1) as outside:
        for image in camvid_images[:2]:
            a = in_graph.predict(image, min_confidence=0.5)
            assert (a == UNLABELLED).any()
            assert np.array_equal(a, outside.predict(image, min_confidence=0.5))


class RecordingSession:
    """The real ONNX Runtime session, with each call's feed recorded."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, names, feed):
        self.feeds.append(dict(feed))
        return self.session.run(names, feed)


def test_class_ids_only_skip_the_graph_confidence_branch(segmenter_of, shipped_checkpoint,
                                                          camvid_images):
    """ONNX Runtime runs every node whatever is fetched, so the graph's confidence branch sits
    behind an If: a class-ids-only call feeds SKIP_CONFIDENCE, gets the same ids and no
    confidence computed (the branch's zeros come back)."""
    seg = segmenter_of(shipped_checkpoint, **ORT, head="fast", io_binding=False)
    graph = onnx.load(str(seg.backend.info.path)).graph
    assert "If" in [node.op_type for node in graph.node]
    session = seg.backend.session
    recorder = seg.backend.session = RecordingSession(session)
    try:
        image = camvid_images[1]
        ids_only = seg.predict_detailed(image, confidence=False).masks[0]
        assert float(recorder.feeds[-1][MIN_CONFIDENCE_INPUT][0]) == SKIP_CONFIDENCE
        full = seg.predict_detailed(image, confidence=True)
        assert float(recorder.feeds[-1][MIN_CONFIDENCE_INPUT][0]) == 0.0
    finally:
        seg.backend.session = session
    assert np.array_equal(ids_only, full.masks[0]) and len(np.unique(ids_only)) >= 4
    assert full.confidences[0].min() > 0.1  # top-class probabilities of 11 classes
    batch = pp.preprocess_numpy([image], [pp.plan_placement(image.shape[:2], INPUT_SIZE,
                                                            "stretch")],
                                INPUT_SIZE, seg.meta["mean"], seg.meta["std"])
    skipped = session.run(None, {"images": batch, MIN_CONFIDENCE_INPUT:
                                 np.array([SKIP_CONFIDENCE], np.float32)})
    computed = session.run(None, {"images": batch, MIN_CONFIDENCE_INPUT: np.zeros(1, np.float32)})
    assert np.array_equal(skipped[0], computed[0])
    assert not skipped[1].any() and computed[1].min() > 0.1


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "high", None])
def test_min_confidence_outside_0_1_is_rejected_with_the_range(segmenter_of, shipped_checkpoint,
                                                               camvid_images, bad):
    seg = segmenter_of(shipped_checkpoint, **ORT, head="fast")
    with pytest.raises(ValueError, match=r"min_confidence must be in \[0, 1\]"):
        seg.predict(camvid_images[0], min_confidence=bad)
    assert check_min_confidence(1) == 1.0 and check_min_confidence(0.25) == 0.25


def test_one_nearest_resize_from_any_head_resolution():
    """map_indices composes the letterbox crop, the network-to-head scale and the resize to the
    source size into one gather; at full resolution it is the crop + nearest_indices of before,
    and at 1/2 it equals the full-resolution restore of the map upsampled x2 by repetition."""
    place = pp.plan_placement((300, 500), (240, 320), "letterbox")
    full = np.arange(240 * 320, dtype=np.int64).reshape(240, 320)
    crop = full[place.top:place.top + place.height, place.left:place.left + place.width]
    rows = pp.nearest_indices(place.height, place.source_height)
    cols = pp.nearest_indices(place.width, place.source_width)
    assert np.array_equal(pp.restore_numpy(full, place), crop[rows][:, cols])
    half = np.arange(120 * 160, dtype=np.int64).reshape(120, 160)
    doubled = half.repeat(2, axis=0).repeat(2, axis=1)
    once = pp.restore_numpy(half, place, (240, 320))
    assert once.shape == (300, 500)
    assert np.array_equal(once, pp.restore_numpy(doubled, place))
    on_torch = pp.restore_torch(torch.from_numpy(half), place, (240, 320))
    assert np.array_equal(once, on_torch.numpy())


def test_invalid_option_combinations_name_the_parameter_and_the_choices(shipped_checkpoint):
    cases = [
        ({"head": "quick"}, r"head must be one of \('fast', 'exact'\)"),
        ({"ort_optimization": "max"}, "ort_optimization must be one of " + str(ORT_OPTIMIZATIONS)
         .replace("(", r"\(").replace(")", r"\)")),
        ({"compile_mode": "fastest"}, "compile_mode must be None .eager. or one of"),
        ({"backend": "onnxruntime", "compile_mode": "default"},
         "compile_mode 'default' needs backend 'torch'"),
        ({"backend": "torch", "compile_mode": "reduce-overhead", "cuda_graphs": True},
         "cuda_graphs=True and compile_mode cannot be combined"),
        ({"precision": "fp8"}, "precision must be one of"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            RuntimeOptions(**options)
    assert set(COMPILE_MODES) >= {"reduce-overhead", "max-autotune-no-cudagraphs"}
    # auto resolves to ONNX Runtime on this CPU machine: compile_mode is refused by name there
    with pytest.raises(ValueError, match="compile_mode 'default' needs the torch backend"):
        make_backend(shipped_checkpoint, RuntimeOptions(compile_mode="default", device="cpu"))
    with pytest.raises(ValueError, match=r"backend 'onnxruntime' supports precision \('fp32',\)"):
        make_backend(shipped_checkpoint, RuntimeOptions(backend="onnxruntime", precision="bf16"))
