"""segment_node as planners and costmaps consume it (issue 12), end to end: the node runs as its
own process on real rclpy + Fast DDS, this process publishes real CamVid frames (and camera_info)
and checks what comes back: vision_msgs/LabelInfo, camera_info pairing, unknown pixels
(min_confidence), live parameters and model reloads, the lifecycle through the real
lifecycle_msgs services, lazy mode, the PNG mask, QoS overrides and the Fast DDS profile.

Every test has its own ROS domain with localhost-only discovery (ros_env); waits end on messages
(a mask, a diagnostic status, a service response), with generous deadlines as safety nets."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfanet_ros import diagnostics as diag
from dfanet_ros.graph import NodeError, NodeProcess
from dfanet_ros.testing import SegmentationClient

pytestmark = pytest.mark.timeout(420)


def node_params(checkpoint: Path, **overrides) -> dict:
    params = {"checkpoint": str(checkpoint), "backend": "onnxruntime",
              "diagnostics_period_s": 0.25, "output_depth": 10}
    params.update(overrides)
    return params


def values(status: diag.Status) -> dict[str, str]:
    return diag.values_dict(status)


def arrives(client: SegmentationClient, store: dict, stamp: int, timeout_s: float = 1.0) -> bool:
    """True when an output of ``stamp`` (published right after its mask) reaches ``store``."""
    try:
        client.wait_for(lambda: stamp in store, timeout_s, "an output")
    except NodeError:
        return False
    return True


def first_output(client: SegmentationClient, node: NodeProcess, rgb: np.ndarray, store: dict,
                 before_publish=None) -> int:
    """Publish ``rgb`` until an on-demand output of the frame arrives in ``store`` (the node
    discovers a new subscriber within a few frames); returns the frame's stamp."""
    for _ in range(40):
        stamp = client.next_stamp()
        if before_publish is not None:
            before_publish(stamp)
        client.publish_image(rgb, stamp=stamp)
        client.wait_mask(stamp, node)
        if arrives(client, store, stamp):
            return stamp
    raise AssertionError("the on-demand output never arrived")


@pytest.fixture
def shipped_offline(segmenter_of, shipped_checkpoint):
    """The shipped weights (trained: confidences spread over 0..1) in ONNX Runtime."""
    return segmenter_of(shipped_checkpoint, backend="onnxruntime")


def test_label_info_camera_info_png_mask_and_qos_reports(ros_env, tmp_path,
                                                         calibrated_checkpoint,
                                                         reference_segmenter, camvid_images):
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile

    rgb = camvid_images[0]
    expected = reference_segmenter.predict(rgb)
    assert len(np.unique(expected)) > 3  # a mask with structure, not one class
    with NodeProcess(node_params(calibrated_checkpoint), ros_env, tmp_path) as node, \
            SegmentationClient() as client:
        client.wait_ready(node)
        # LabelInfo is latched: a subscriber created after it was published still gets it
        client.subscribe_label_info()
        label = client.wait_for(lambda: client.label_infos, 60.0, "label_info", node)[-1]
        assert [(c.class_id, c.class_name) for c in label.class_map] == list(
            enumerate(reference_segmenter.class_names))
        assert label.threshold == 0.0

        # camera_info comes back beside the mask, with the mask's stamp and frame (here the
        # camera stamps its camera_info 1 us earlier, in another frame: the mask's header wins)
        client.subscribe_camera_info()
        client.wait_for(lambda: client.camera_info_subscribers() > 0, 30.0, "camera_info sub",
                        node)
        stamp = first_output(client, node, rgb, client.camera_infos, before_publish=lambda s:
                             client.publish_camera_info(480, 360, s - 1000, frame_id="calib"))
        info, mask = client.camera_infos[stamp], client.masks[stamp]
        assert (info.header.frame_id, mask.frame_id) == ("camera", "camera")
        assert stamp - 1000 not in client.camera_infos
        assert (info.width, info.height) == (480, 360) and info.k[2] == 240.0
        np.testing.assert_array_equal(mask.array, expected)

        # camera_info of another size: WARN, and masks keep coming
        sent = time.monotonic()
        stamp = client.next_stamp()
        client.publish_camera_info(640, 480, stamp)
        client.publish_image(rgb, stamp=stamp)
        np.testing.assert_array_equal(client.wait_mask(stamp, node).array, expected)
        status = client.wait_status(lambda s: "camera_info describes" in s.message, node,
                                    after=sent)
        assert status.level == diag.WARN
        assert "camera_info describes 640x480 images but the images are 480x360" in status.message
        assert values(status)["camera_info_resolution"] == "640x480"

        # the PNG mask decodes to the raw mask, pixel for pixel
        client.subscribe_compressed_mask()
        stamp = first_output(client, node, rgb, client.compressed_masks)
        png = client.compressed_masks[stamp]
        assert png.format.startswith("mono8; png compressed") and png.header.frame_id == "camera"
        decoded = cv2.imdecode(np.frombuffer(bytes(png.data), np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decoded, client.masks[stamp].array)

        # a LabelInfo subscriber the latched publisher cannot serve is reported, with the policy
        sent = time.monotonic()
        client.subscribe_label_info(QoSProfile(depth=1, deadline=Duration(seconds=1)))
        status = client.wait_status(lambda s: "label_info" in s.message, node, after=sent)
        assert status.level == diag.ERROR
        assert ("incompatible QoS with a subscriber on /segmentation/label_info: policy DEADLINE"
                in status.message)
        assert node.alive()


def test_min_confidence_and_live_parameters(ros_env, tmp_path, shipped_checkpoint,
                                            shipped_offline, camvid_images):
    rgb = camvid_images[1]
    with NodeProcess(node_params(shipped_checkpoint), ros_env, tmp_path) as node, \
            SegmentationClient() as client:
        client.wait_ready(node)
        client.subscribe_label_info()
        mask = client.wait_mask(client.publish_image(rgb), node).array
        assert not (mask == 255).any()  # min_confidence 0: every pixel has a class
        np.testing.assert_array_equal(mask, shipped_offline.predict(rgb))

        # a live change applies from the next frame: unknown pixels (255) on a real frame
        (result,) = client.set_parameters({"min_confidence": 0.6})
        assert result.successful, result.reason
        mask = client.wait_mask(client.publish_image(rgb), node).array
        unknown = mask == 255
        assert 0.01 < unknown.mean() < 0.99, unknown.mean()
        np.testing.assert_array_equal(mask, shipped_offline.predict(rgb, min_confidence=0.6))
        label = client.wait_for(lambda: [m for m in client.label_infos
                                         if abs(m.threshold - 0.6) < 1e-6], 30.0,
                                "label_info with threshold 0.6", node)[-1]
        assert len(label.class_map) == shipped_offline.num_classes
        status = client.wait_status(lambda s: values(s)["min_confidence"] == "0.6", node)
        assert status.level == diag.OK

        # invalid values are refused with their reason (the range, the choices, read-only)
        refused = {
            "min_confidence": (1.5, "Min: 0.0, Max: 1.0"),
            "png_compression_level": (12, "Min: 0, Max: 9"),
            "color_mode": ("heat", "parameter 'color_mode': invalid value 'heat'; allowed: mask, "
                           "overlay"),
            "input_qos": ("DEFAULT", "read-only parameter: input_qos"),
            "class_names": (["a"], "set by the node from the model"),
            "checkpoint": ("/nonexistent/model.safetensors",
                           "parameter 'checkpoint': file not found"),
        }
        for name, (value, reason) in refused.items():
            (result,) = client.set_parameters({name: value})
            assert not result.successful and reason in result.reason, (name, result.reason)
        assert client.get_parameters(["min_confidence", "color_mode"]) == [0.6, "mask"]
        # the refused values changed nothing: the next mask is the 0.6 one
        np.testing.assert_array_equal(client.wait_mask(client.publish_image(rgb), node).array,
                                      shipped_offline.predict(rgb, min_confidence=0.6))

        (result,) = client.set_parameters({"min_confidence": 0.0})
        assert result.successful
        assert not (client.wait_mask(client.publish_image(rgb), node).array == 255).any()
        assert node.alive()


def test_model_reload_serves_the_old_model_until_the_new_one_is_ready(
        ros_env, tmp_path, shipped_checkpoint, calibrated_checkpoint, shipped_offline,
        reference_segmenter, camvid_images):
    rgb = camvid_images[2]
    shipped_mask, calibrated_mask = shipped_offline.predict(rgb), reference_segmenter.predict(rgb)
    assert not np.array_equal(shipped_mask, calibrated_mask)
    with NodeProcess(node_params(shipped_checkpoint), ros_env, tmp_path) as node, \
            SegmentationClient() as client:
        info = client.wait_ready(node)
        assert info["model"] == "dfanet_a"
        (result,) = client.set_parameters({"checkpoint": str(calibrated_checkpoint)})
        assert result.successful, result.reason
        # masks keep coming while the new model loads, from the old model, then from the new
        seen_new = False
        for _ in range(600):
            mask = client.wait_mask(client.publish_image(rgb), node).array
            if np.array_equal(mask, calibrated_mask):
                seen_new = True
                break
            np.testing.assert_array_equal(mask, shipped_mask)
        assert seen_new, "the reloaded model never served"
        client.wait_for(lambda: client.class_info["model"] == "dfanet_b", 60.0,
                        "class_info of the new model", node)

        # a model that fails to load: reported, the parameter goes back, the old model serves
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
        sent = time.monotonic()
        (result,) = client.set_parameters({"checkpoint": str(broken)})
        assert result.successful  # the file exists; loading it is what fails
        status = client.wait_status(lambda s: "model reload failed" in s.message, node,
                                    after=sent)
        assert status.level == diag.ERROR
        client.wait_status(lambda s: True, node)  # the revert follows the failure at once
        assert client.get_parameters(["checkpoint"]) == [str(calibrated_checkpoint)]
        np.testing.assert_array_equal(
            client.wait_mask(client.publish_image(rgb), node).array, calibrated_mask)
        assert "model reload failed, the previous model serves" in node.log_text()


def _transition_events(client: SegmentationClient, node_name: str = "/segment_node") -> list:
    from lifecycle_msgs.msg import TransitionEvent
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    events: list = []

    def on_event(msg):
        with client._cond:
            events.append(msg)
            client._cond.notify_all()

    client.node.create_subscription(TransitionEvent, f"{node_name}/transition_event", on_event,
                                    QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    return events


def test_lifecycle_through_the_real_services(ros_env, tmp_path, calibrated_checkpoint,
                                             reference_segmenter, camvid_images):
    rgb = camvid_images[0]
    expected = reference_segmenter.predict(rgb)
    missing = tmp_path / "not_yet.safetensors"
    params = node_params(missing, managed=True)
    with NodeProcess(params, ros_env, tmp_path) as node, SegmentationClient() as client:
        events = _transition_events(client)
        assert client.lifecycle_state() == "unconfigured"
        # a configure that fails (missing checkpoint): error processing, back to unconfigured,
        # the reason in the diagnostics, the process alive
        assert client.change_state("configure") is False
        assert client.lifecycle_state() == "unconfigured"
        client.wait_for(lambda: any(e.goal_state.label == "errorprocessing" for e in events),
                        30.0, "a transition to errorprocessing", node)
        status = client.wait_status(lambda s: s.level == diag.ERROR, node)
        assert "file not found" in status.message and str(missing) in status.message
        assert node.alive()

        # fixed while unconfigured: configure loads the model, inactive publishes nothing
        (result,) = client.set_parameters({"checkpoint": str(calibrated_checkpoint)})
        assert result.successful, result.reason
        assert client.change_state("configure") is True
        assert client.lifecycle_state() == "inactive"
        status = client.wait_status(lambda s: values(s)["state"] == "inactive", node)
        assert status.level == diag.OK and values(status)["frames_in"] == "0"
        assert client.input_subscribers() == 0 and client.class_info is None
        before = [client.publish_image(rgb) for _ in range(3)]

        # activate: subscribed, class info out, masks
        assert client.change_state("activate") is True
        client.wait_ready(node)
        stamp = client.publish_image(rgb)
        np.testing.assert_array_equal(client.wait_mask(stamp, node).array, expected)
        assert not set(before) & set(client.masks)

        # deactivate: no subscription, no inference, nothing published
        assert client.change_state("deactivate") is True
        masks_then = set(client.masks)
        client.wait_for(lambda: client.input_subscribers() == 0, 30.0, "unsubscribed", node)
        during = [client.publish_image(rgb) for _ in range(3)]
        status = client.wait_status(lambda s: values(s)["state"] == "inactive", node)
        frames_out = values(status)["frames_out"]
        assert frames_out == str(len(masks_then))

        # active again: the next frame is segmented; none of those sent while inactive was
        assert client.change_state("activate") is True
        client.wait_for(lambda: client.input_subscribers() > 0, 30.0, "subscribed", node)
        stamp = client.publish_image(rgb)
        client.wait_mask(stamp, node)
        assert not set(during) & set(client.masks)
        assert set(client.masks) - masks_then == {stamp}

        # cleanup frees the model; shutdown ends the process cleanly
        assert client.change_state("deactivate") and client.change_state("cleanup")
        assert client.lifecycle_state() == "unconfigured"
        status = client.wait_status(lambda s: values(s)["state"] == "unconfigured", node)
        assert values(status)["backend"] == "onnxruntime"
        assert client.change_state("shutdown") is True
        assert node.wait_exit(60.0) == 0


def test_lazy_mode_does_no_inference_without_subscribers(ros_env, tmp_path,
                                                         calibrated_checkpoint,
                                                         reference_segmenter, camvid_images):
    rgb = camvid_images[0]
    params = node_params(calibrated_checkpoint, input_qos="DEFAULT", input_depth=10)
    client = SegmentationClient(subscribe_mask=False, input_reliable=True, input_depth=10)
    with NodeProcess(params, ros_env, tmp_path) as node, client:
        client.wait_ready(node)
        for _ in range(3):  # reliable: each of the three reaches the node
            client.publish_image(rgb)
        status = client.wait_status(lambda s: int(values(s)["frames_in"]) >= 3, node)
        assert values(status)["frames_out"] == "0"
        assert values(status)["frames_idle"] == values(status)["frames_in"]
        assert status.level == diag.OK and status.message.startswith("idle: nobody subscribes")
        assert float(values(status)["inference_ms_p50"] or 0) == 0.0
        # a subscriber: segmenting again from the next frame
        client.subscribe_mask()
        for _ in range(40):
            stamp = client.publish_image(rgb)
            if arrives(client, client.masks, stamp, timeout_s=10.0):
                break
        np.testing.assert_array_equal(client.masks[stamp].array, reference_segmenter.predict(rgb))
        # lazy: false (live) segments with nobody listening (recording set-ups)
        client.subscribe_mask(False)
        (result,) = client.set_parameters({"lazy": False})
        assert result.successful
        status = client.wait_status(lambda s: True, node)
        out = int(values(status)["frames_out"])
        client.publish_image(rgb)
        status = client.wait_status(lambda s: int(values(s)["frames_out"]) > out, node)
        assert not values(status)["idle_reason"]


def test_qos_overrides_apply_to_the_input_and_the_outputs(ros_env, tmp_path,
                                                          calibrated_checkpoint, camvid_images):
    from rclpy.qos import ReliabilityPolicy

    params = node_params(calibrated_checkpoint, qos_overrides={
        "/image": {"subscription": {"reliability": "reliable", "depth": 3}},
        "/segmentation/mask": {"publisher": {"reliability": "best_effort"}}})
    with NodeProcess(params, ros_env, tmp_path) as node, \
            SegmentationClient(input_reliable=True) as client:
        client.wait_ready(node)
        (sub,) = client.node.get_subscriptions_info_by_topic("/image")
        assert sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        (pub,) = client.node.get_publishers_info_by_topic("/segmentation/mask")
        assert pub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        assert client.get_parameters(["qos_overrides./image.subscription.reliability",
                                      "qos_overrides./image.subscription.depth"]) == [
            "reliable", 3]
        assert "unknown parameter" not in node.log_text()


def test_fast_dds_profile_carries_best_effort_frames_over_half_a_megabyte(
        ros_env, tmp_path, calibrated_checkpoint, reference_segmenter, camvid_images):
    """The shipped profile (config/fastdds_profile.xml, which ros_environment names for every
    process here) is valid XML that Fast DDS accepts: a best-effort 2048x1024 rgb8 frame (6 MB)
    reaches a real node under localhost-only discovery, and its 2 MB mask comes back."""
    import xml.etree.ElementTree as ET

    from dfanet_ros.graph import fastdds_profile

    profile = Path(ros_env["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile == fastdds_profile() and ros_env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "FASTDDS_BUILTIN_TRANSPORTS" not in ros_env
    root = ET.parse(profile).getroot()
    segment = root.find(".//{http://www.eprosima.com}segment_size")
    assert int(segment.text) >= 6 * 2**20
    big = cv2.resize(camvid_images[0], (2048, 1024), interpolation=cv2.INTER_LINEAR)
    assert big.nbytes > 0.5 * 2**20
    with NodeProcess(node_params(calibrated_checkpoint), ros_env, tmp_path) as node, \
            SegmentationClient(input_reliable=False) as client:
        client.wait_ready(node)
        for _ in range(5):  # best effort: a frame may go while the reader is still matching
            stamp = client.publish_image(big)
            if arrives(client, client.masks, stamp, timeout_s=60.0):
                break
        mask = client.masks[stamp]  # KeyError: 5 of 5 frames lost (without the profile: all)
        assert (mask.height, mask.width) == (1024, 2048)
        np.testing.assert_array_equal(mask.array, reference_segmenter.predict(big))
        assert "XMLPARSER" not in node.log_text()
