"""vision_msgs (LabelInfo, VisionClass), as scripts/build_vision_msgs.sh generates it into .venv
from third_party/vision_msgs (or as a ROS 2 install provides it): the type hashes are those of a
real ROS install, and a latched LabelInfo reaches a subscriber process that starts after the
publisher. Real rclpy + Fast DDS, no mocks.

This file is also the program of the two peer processes (``python test_vision_msgs.py publish
TOPIC`` / ``... subscribe TOPIC``).
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

MSG_DIR = Path(__file__).resolve().parent.parent / "third_party" / "vision_msgs" / "msg"

# RIHS01 type hashes of upstream vision_msgs 4.1.x, as rosidl generated them on a ROS 2 install
# (the constants in an upstream build's label_info__description.c / vision_class__description.c;
# design.md: "RIHS01_3d37df40...0783").
UPSTREAM_HASHES = {
    "vision_msgs/msg/LabelInfo":
        "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "vision_msgs/msg/VisionClass":
        "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
}
# sha256 of the upstream .msg files (LabelInfo.msg: 1274 bytes, with a trailing space after
# `class_map`; VisionClass.msg: 461 bytes), see third_party/vision_msgs/README.md.
UPSTREAM_MSG_SHA256 = {
    "LabelInfo.msg": "96cf2fa183f8f20a7356fd18163d2a8e875306c799f3fadec08169e5e487f3aa",
    "VisionClass.msg": "ae82ce087350e3ee1c0f0f8bb8f6e6c2e08f94dea6d984dec579fd72663bdb72",
}

PUBLISHED = "LABEL_INFO_PUBLISHED"
SAMPLE = {
    "frame_id": "camera_front",
    "stamp": [1_700_000_000, 123_456_789],
    # 65535 is vision_msgs' UNLABELED id for uint16 class ids; a non-ASCII name checks UTF-8
    "class_map": [[0, "Sky"], [3, "Road"], [10, "Straße"], [65535, "UNLABELED"]],
    "threshold": 0.25,  # exact in float32
}


@pytest.fixture(scope="module")
def vision_msgs_module():
    try:
        import vision_msgs.msg
    except ImportError as exc:
        pytest.fail(
            f"vision_msgs does not import ({exc}): run scripts/setup_env.sh (it runs "
            "scripts/build_vision_msgs.sh), or source a ROS 2 install that provides it"
        )
    return vision_msgs.msg


def test_message_files_are_upstream_bytes():
    for name, digest in UPSTREAM_MSG_SHA256.items():
        data = (MSG_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, (
            f"{MSG_DIR / name} differs from upstream vision_msgs (whitespace or end-of-line "
            "changes alter the bytes; restore the upstream file)"
        )


def _individual(description) -> dict:
    """A type_description_interfaces/IndividualTypeDescription as the dict rosidl hashes."""
    return {
        "type_name": description.type_name,
        "fields": [
            {
                "name": field.name,
                "type": {
                    "type_id": field.type.type_id,
                    "capacity": field.type.capacity,
                    "string_capacity": field.type.string_capacity,
                    "nested_type_name": field.type.nested_type_name,
                },
                "default_value": field.default_value,
            }
            for field in description.fields
        ],
    }


def test_type_hashes_match_a_ros_install(vision_msgs_module, ros_domain_env, monkeypatch):
    """The hash the middleware announces for each type (from the compiled type support) is
    upstream's, and so is the hash recomputed from the type description the library serves
    (``~/get_type_description``), whose embedded sources are this repository's .msg files."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rosidl_generator_type_description import calculate_type_hash
    from type_description_interfaces.srv import GetTypeDescription

    for key in ("ROS_DOMAIN_ID", "ROS_LOG_DIR", "HOME"):  # rclpy needs ROS_LOG_DIR or HOME
        if key in ros_domain_env:
            monkeypatch.setenv(key, ros_domain_env[key])
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "OFF")  # this process only

    types = {
        "vision_msgs/msg/LabelInfo": (vision_msgs_module.LabelInfo, "LabelInfo.msg"),
        "vision_msgs/msg/VisionClass": (vision_msgs_module.VisionClass, "VisionClass.msg"),
    }
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("vision_msgs_hash_probe", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        client = node.create_client(
            GetTypeDescription, "/vision_msgs_hash_probe/get_type_description"
        )
        assert client.wait_for_service(timeout_sec=30.0), "no ~/get_type_description service"
        for type_name, (msg_type, msg_file) in types.items():
            topic = "/hash_probe/" + msg_file.removesuffix(".msg").lower()
            node.create_publisher(msg_type, topic, 1)
            (info,) = node.get_publishers_info_by_topic(topic)
            assert info.topic_type == type_name
            announced = str(info.topic_type_hash)
            assert announced == UPSTREAM_HASHES[type_name], f"{type_name}: {announced}"

            request = GetTypeDescription.Request(
                type_name=type_name, type_hash=announced, include_type_sources=True
            )
            future = client.call_async(request)
            executor.spin_until_future_complete(future, timeout_sec=30.0)
            response = future.result()
            assert response is not None, f"no answer from get_type_description for {type_name}"
            assert response.successful, response.failure_reason
            full = response.type_description
            recomputed = calculate_type_hash({
                "type_description": _individual(full.type_description),
                "referenced_type_descriptions": [
                    _individual(t) for t in full.referenced_type_descriptions
                ],
            })
            assert recomputed == UPSTREAM_HASHES[type_name]
            sources = {s.type_name: s for s in response.type_sources}
            assert sources[type_name].encoding == "msg"
            # rosidl embeds the .msg text without its final newline
            expected = (MSG_DIR / msg_file).read_text(encoding="utf-8").rstrip("\n")
            assert sources[type_name].raw_file_contents.rstrip("\n") == expected
        executor.remove_node(node)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def _wait_for_line(process: subprocess.Popen, marker: str, timeout_s: float) -> list[str]:
    """Lines of ``process``'s stdout up to the one equal to ``marker`` (AssertionError when the
    process ends or ``timeout_s`` passes first)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} within {timeout_s} s; stdout so far: {lines}"
            if not selector.select(timeout=left):
                continue
            line = process.stdout.readline()
            assert line, f"publisher ended (code {process.wait()}) before {marker!r}: {lines}"
            lines.append(line.rstrip("\n"))
            if lines[-1] == marker:
                return lines


def test_latched_label_info_reaches_a_late_subscriber_process(
    vision_msgs_module, ros_domain_env, tmp_path
):
    topic = "/segmentation/label_info"
    env = dict(ros_domain_env)  # this test's own ROS_DOMAIN_ID, ROS_LOG_DIR or HOME
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # never beyond this machine
    command = [sys.executable, str(Path(__file__).resolve())]
    publisher_log = tmp_path / "publisher.log"
    with open(publisher_log, "w") as log:
        publisher = subprocess.Popen(
            command + ["publish", topic], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
    try:
        _wait_for_line(publisher, PUBLISHED, timeout_s=60.0)
        # The subscriber's process starts only now, after the one message was published.
        subscriber = subprocess.run(
            command + ["subscribe", topic, "60"], env=env, capture_output=True, text=True,
            timeout=120,
        )
        assert subscriber.returncode == 0, (
            f"subscriber failed ({subscriber.returncode}):\n{subscriber.stdout}\n"
            f"{subscriber.stderr}\npublisher log:\n{publisher_log.read_text()}"
        )
        received = json.loads(subscriber.stdout.strip().splitlines()[-1])
    finally:
        publisher.stdin.close()  # tells the publisher to finish
        try:
            publisher_code = publisher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            publisher.kill()
            publisher_code = publisher.wait()
        publisher.stdout.close()
    assert publisher_code == 0, publisher_log.read_text()

    assert received["messages"] == [SAMPLE]
    (endpoint,) = received["publishers"]
    assert endpoint["node"] == "vision_msgs_latched_publisher"
    assert endpoint["type"] == "vision_msgs/msg/LabelInfo"
    assert endpoint["type_hash"] == UPSTREAM_HASHES["vision_msgs/msg/LabelInfo"]
    assert endpoint["reliability"] == "RELIABLE"
    assert endpoint["durability"] == "TRANSIENT_LOCAL"


# -- the peer processes -------------------------------------------------------------------------
def _latched_qos():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def _publish(topic: str) -> int:
    """Publish SAMPLE once on a latched topic, say so on stdout, and keep the publisher (whose
    middleware serves late subscribers) until stdin closes."""
    import rclpy
    from vision_msgs.msg import LabelInfo, VisionClass

    rclpy.init()
    node = rclpy.create_node("vision_msgs_latched_publisher")
    publisher = node.create_publisher(LabelInfo, topic, _latched_qos())
    msg = LabelInfo(threshold=SAMPLE["threshold"])
    msg.header.frame_id = SAMPLE["frame_id"]
    msg.header.stamp.sec, msg.header.stamp.nanosec = SAMPLE["stamp"]
    msg.class_map = [VisionClass(class_id=i, class_name=n) for i, n in SAMPLE["class_map"]]
    publisher.publish(msg)
    print(PUBLISHED, flush=True)
    sys.stdin.read()
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _subscribe(topic: str, timeout_s: float) -> int:
    """Wait (message-driven, up to ``timeout_s``) for the latched LabelInfo and for its publisher
    in the graph; print what arrived as one JSON line."""
    import rclpy
    from vision_msgs.msg import LabelInfo

    rclpy.init()
    node = rclpy.create_node("vision_msgs_late_subscriber")
    messages: list = []
    node.create_subscription(LabelInfo, topic, messages.append, _latched_qos())
    deadline = time.monotonic() + timeout_s
    publishers: list = []

    def publisher_known() -> bool:  # in the graph, with its node name (ros_discovery_info)
        return bool(publishers) and "_NODE_NAME_UNKNOWN_" not in {p.node_name for p in publishers}

    while time.monotonic() < deadline and not (messages and publisher_known()):
        rclpy.spin_once(node, timeout_sec=0.5)
        publishers = node.get_publishers_info_by_topic(topic)
    if not messages:
        print(f"no LabelInfo on {topic} within {timeout_s} s "
              f"(publishers seen: {len(publishers)})", file=sys.stderr)
        return 3
    report = {
        "messages": [
            {
                "frame_id": m.header.frame_id,
                "stamp": [m.header.stamp.sec, m.header.stamp.nanosec],
                "class_map": [[c.class_id, c.class_name] for c in m.class_map],
                "threshold": m.threshold,
            }
            for m in messages
        ],
        "publishers": [
            {
                "node": p.node_name,
                "type": p.topic_type,
                "type_hash": str(p.topic_type_hash),
                "reliability": p.qos_profile.reliability.name,
                "durability": p.qos_profile.durability.name,
            }
            for p in publishers
        ],
    }
    print(json.dumps(report), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    role, topic_arg = sys.argv[1], sys.argv[2]
    os.environ.setdefault("ROS_LOG_DIR", os.path.join(os.environ.get("HOME", "/tmp"), ".ros"))
    if role == "publish":
        sys.exit(_publish(topic_arg))
    sys.exit(_subscribe(topic_arg, float(sys.argv[3])))
