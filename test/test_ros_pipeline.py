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

from dfanet_ros import conversions, outputs
from dfanet_ros.params import config_from_values
from dfanet_ros.pipeline import (
    BackendFailure,
    BadFrame,
    CameraInfoCache,
    Frame,
    LatestSlot,
    LogThrottle,
    ModelHolder,
    Periodic,
    camera_info_resolution,
    colour_output,
    label_entries,
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
        def predict_detailed(self, images, channel_order="RGB", confidence=False, **options):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(BackendFailure, match="RuntimeError: CUDA error: an illegal memory"):
        segment_frame(Frame(raw_msg(rgb, "rgb8"), 0.0), FailingSegmenter(), compressed=False)


def test_min_confidence_reaches_the_segmenter(segmenter, rgb):
    """The threshold is the Segmenter's (computed on its device): the node passes it through."""
    frame = Frame(raw_msg(rgb, "rgb8"), time.monotonic())
    plain = segment_frame(frame, segmenter, compressed=False, confidence=True)
    threshold = float(np.median(plain.confidence))  # about half the pixels below it
    strict = segment_frame(frame, segmenter, compressed=False, min_confidence=threshold)
    np.testing.assert_array_equal(strict.mask, segmenter.predict(rgb, min_confidence=threshold))
    unknown = strict.mask == 255
    assert 0.2 < unknown.mean() < 0.8 and not (plain.mask == 255).any()
    np.testing.assert_array_equal(strict.mask[~unknown], plain.mask[~unknown])
    assert (plain.confidence[unknown] < threshold).all()


class _Model:
    """A stand-in Segmenter: remembers whether it was closed."""

    def __init__(self, name):
        self.name, self.closed = name, False

    def close(self):
        self.closed = True


def test_model_holder_keeps_the_old_model_serving_until_the_new_one_is_ready():
    gate, results = threading.Event(), []

    def load(config):
        if config == "broken":
            raise RuntimeError("corrupt checkpoint")
        if config == "slow":
            assert gate.wait(30)
        return _Model(config)

    holder = ModelHolder(load)
    first = holder.load("first")
    assert holder.loaded and holder.config == "first"
    assert holder.reload("slow", results.append)
    assert not holder.reload("other", results.append)  # one reload at a time
    with holder.using() as model:  # frames in the meantime: the old model
        assert model is first and holder.reloading
    gate.set()
    deadline = time.monotonic() + 30
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)  # the reload thread reports; polling a stand-in, no ROS graph here
    assert results == [None] and first.closed
    with holder.using() as model:
        assert model.name == "slow" and holder.config == "slow"
    assert holder.reload("broken", results.append)
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(results[1], RuntimeError)
    with holder.using() as model:  # a failed reload leaves the served model in place
        assert model.name == "slow" and not model.closed and holder.config == "slow"
    holder.close()
    assert model.closed and not holder.loaded


def _camera_info(stamp_ns, width=480, height=360, binning=0):
    stamp = SimpleNamespace(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp, frame_id="cam"), width=width,
                           height=height, binning_x=binning, binning_y=binning)


def test_camera_info_pairs_by_stamp_else_the_newest():
    cache = CameraInfoCache(size=2)
    assert cache.match(5) is None
    first, second, third = (_camera_info(t) for t in (10, 20, 30))
    for msg in (first, second, third):
        cache.add(msg)
    assert cache.match(20) is second and cache.match(10) is third  # 10 fell out: the newest
    assert cache.resolution == "480x360"
    assert camera_info_resolution(_camera_info(0, 1280, 960, binning=2)) == "640x480"
    assert camera_info_resolution(_camera_info(0, 0, 0)) == ""
    assert label_entries(["Sky", "Road"]) == [(0, "Sky"), (1, "Road")]


class _Publisher:
    def __init__(self, subscribers=0):
        self.subscribers, self.sent = subscribers, []

    def get_subscription_count(self):
        return self.subscribers

    def publish(self, msg):
        self.sent.append(msg)


def test_outputs_publish_the_mask_and_what_has_listeners(segmenter, rgb):
    from std_msgs.msg import Header

    result = segment_frame(Frame(raw_msg(rgb, "rgb8"), 0.0), segmenter, compressed=False)
    config = config_from_values({})
    pubs = {name: _Publisher() for name in outputs.FRAME_OUTPUTS}
    out = outputs.Outputs()
    for name, pub in pubs.items():
        out.offer(name, pub)
    assert out.listeners() == 0
    header = Header(frame_id="cam")
    assert out.publish(header, result, config, segmenter.palette, _camera_info(1)) == []
    (mask,) = pubs[outputs.MASK].sent  # the mask always: lazy mode is the node's decision
    assert mask.header is header and mask.encoding == "mono8"
    np.testing.assert_array_equal(conversions.image_to_numpy(mask), result.mask)
    for name in (outputs.COMPRESSED, outputs.COLOR, outputs.CAMERA_INFO):
        pubs[name].subscribers = 1
    assert out.listeners() == 3
    sent = out.publish(header, result, config, segmenter.palette, _camera_info(1))
    assert sent == [outputs.COMPRESSED, outputs.COLOR, outputs.CAMERA_INFO]
    png = pubs[outputs.COMPRESSED].sent[0]
    assert png.format == conversions.PNG_MASK_FORMAT and png.header is header
    decoded = cv2.imdecode(np.frombuffer(bytes(png.data), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, result.mask)
    assert pubs[outputs.CAMERA_INFO].sent[0].header is header
    # the mask buffer is reused from frame to frame (no allocation), and holds this frame
    first, second = pubs[outputs.MASK].sent[:2]
    assert first.data is second.data
    assert out.offer(outputs.COLOR, None) is pubs[outputs.COLOR]
    assert outputs.COLOR not in out.publish(header, result, config, segmenter.palette)


def test_periodic_calls_on_its_own_thread_reports_a_failure_once_and_stops():
    """The diagnostics reporter: runs while the calling thread is blocked (a model loading),
    survives its action failing (reported once per run of the same failure), stops for good."""
    calls, errors, threads = [], [], set()
    enough = threading.Event()

    def action():
        threads.add(threading.current_thread().name)
        calls.append(len(calls))
        if 2 <= len(calls) <= 4:
            raise RuntimeError("publisher gone")
        if len(calls) >= 6:
            enough.set()

    periodic = Periodic(0.01, action, errors.append)
    assert enough.wait(30.0)  # this thread blocks; the calls go on
    periodic.stop()
    stopped_at = len(calls)
    time.sleep(0.1)  # would be ~10 more calls
    assert len(calls) == stopped_at >= 6
    assert threads == {"dfanet-periodic"}
    assert errors == ["periodic action failed: RuntimeError: publisher gone"]
    with pytest.raises(ValueError, match="period_s must be > 0"):
        Periodic(0.0, action, errors.append)
