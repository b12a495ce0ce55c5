"""dfanet_ros.pipeline: the single-slot hand-off and one frame through a real Segmenter, no ROS
graph (the messages are plain objects with the message fields). The Segmenter is the calibrated
checkpoint's (conftest): its masks change when the channel order is lost on the way."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dfanet_ros import conversions
from dfanet_ros.pipeline import (
    BackendFailure,
    BadFrame,
    Frame,
    LatestSlot,
    LogThrottle,
    colour_output,
    segment_frame,
)


def test_slot_keeps_only_the_newest_item():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken: dropped
    assert slot.take(timeout=0) == 2
    assert slot.take(timeout=0.01) is None


def test_slot_wakes_a_waiting_worker_and_close_releases_it():
    slot: LatestSlot[str] = LatestSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=30)))
    worker.start()
    slot.put("frame")
    worker.join(timeout=30)
    assert got == ["frame"]
    waiter = threading.Thread(target=lambda: got.append(slot.take(timeout=30)))
    waiter.start()
    slot.close()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and got == ["frame", None]


def test_log_throttle_counts_what_it_holds_back():
    throttle = LogThrottle(period_s=5.0)
    assert throttle.admit("bad frame", 0.0) == 0
    assert throttle.admit("bad frame", 1.0) is None
    assert throttle.admit("backend error", 1.0) == 0  # keys are independent
    assert throttle.admit("bad frame", 2.0) is None
    assert throttle.admit("bad frame", 5.5) == 2


@pytest.fixture
def segmenter(reference_segmenter):
    return reference_segmenter


@pytest.fixture
def rgb(camvid_images) -> np.ndarray:
    return camvid_images[0]


def raw_msg(pixels: np.ndarray, encoding: str):
    return SimpleNamespace(**conversions.numpy_to_image_fields(pixels, encoding))


def test_a_frame_gives_the_segmenter_mask_and_stage_timings(segmenter, rgb):
    result = segment_frame(Frame(raw_msg(rgb, "rgb8"), time.monotonic()), segmenter,
                           compressed=False, confidence=True)
    detailed = segmenter.predict_detailed([rgb], confidence=True)
    assert len(np.unique(detailed.masks[0])) >= 3  # a mask with structure, not one class
    np.testing.assert_array_equal(result.mask, detailed.masks[0])
    np.testing.assert_allclose(result.confidence, detailed.confidences[0], atol=1e-5)
    assert result.mask.shape == rgb.shape[:2] and result.channel_order == "RGB"
    assert set(result.timings_ms) == {"decode", "preprocess", "inference", "postprocess"}
    assert all(v >= 0 for v in result.timings_ms.values())

    swapped = np.ascontiguousarray(rgb[..., ::-1])
    bgr = segment_frame(Frame(raw_msg(swapped, "bgr8"), 0.0), segmenter, compressed=False)
    assert bgr.channel_order == "BGR" and bgr.confidence is None
    np.testing.assert_array_equal(bgr.mask, detailed.masks[0])
    # the order matters to this Segmenter: the same bytes read as RGB give another mask
    assert (segmenter.predict(swapped) != detailed.masks[0]).mean() > 0.05


def test_compressed_frames_and_colour_outputs(segmenter, rgb):
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    msg = SimpleNamespace(format="rgb8; png compressed bgr8", data=png.tobytes())
    result = segment_frame(Frame(msg, 0.0), segmenter, compressed=True)
    mask = segmenter.predict(rgb)
    np.testing.assert_array_equal(result.mask, mask)
    assert (segmenter.predict(rgb[..., ::-1].copy()) != mask).mean() > 0.05

    from dfanet_core.imaging import colorize, overlay

    np.testing.assert_array_equal(
        colour_output(result, segmenter.palette, "mask", 0.5), colorize(mask, segmenter.palette)
    )
    np.testing.assert_array_equal(  # decoded as BGR, blended over the RGB frame
        colour_output(result, segmenter.palette, "overlay", 0.3),
        overlay(rgb, mask, segmenter.palette, 0.3),
    )


def test_undecodable_frames_are_bad_frames(segmenter, rgb):
    msg = raw_msg(rgb, "rgb8")
    msg.encoding = "nv21"
    with pytest.raises(BadFrame, match="unsupported encoding 'nv21'"):
        segment_frame(Frame(msg, 0.0), segmenter, compressed=False)
    with pytest.raises(BadFrame, match="image too large"):
        segment_frame(Frame(raw_msg(rgb, "rgb8"), 0.0), segmenter, compressed=False,
                      max_pixels=1000)
    broken = SimpleNamespace(format="jpeg", data=b"\xff\xd8\xff\xe0" + bytes(100))
    with pytest.raises(BadFrame, match="corrupt jpeg data"):
        segment_frame(Frame(broken, 0.0), segmenter, compressed=True)


def test_a_failing_backend_is_a_backend_failure(rgb):
    class FailingSegmenter:  # stands in for a GPU that fails mid-run
        def predict_detailed(self, images, channel_order="RGB", confidence=False):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(BackendFailure, match="RuntimeError: CUDA error: an illegal memory"):
        segment_frame(Frame(raw_msg(rgb, "rgb8"), 0.0), FailingSegmenter(), compressed=False)
