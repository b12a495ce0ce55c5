"""QoS profiles from parameter strings, and readable QoS descriptions for logs and diagnostics.

Camera input defaults to the sensor-data preset (best effort, depth 1: a late frame is worth
nothing), outputs to reliable (REP-2003). Both are parameters because a QoS mismatch with a
camera driver means "no messages, no error" otherwise.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_policy_name_from_kind,
    qos_profile_sensor_data,
    qos_profile_system_default,
)
from rclpy.qos_overriding_options import QoSOverridingOptions

QOS_PRESETS: tuple[str, ...] = ("SENSOR_DATA", "DEFAULT", "SYSTEM_DEFAULT")
MAX_DEPTH = 1000
# preset -> (reliability, durability); the history is always keep-last of the given depth
_PRESET_POLICIES: dict[str, tuple[ReliabilityPolicy, DurabilityPolicy]] = {
    "SENSOR_DATA": (qos_profile_sensor_data.reliability, qos_profile_sensor_data.durability),
    "DEFAULT": (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE),
    "SYSTEM_DEFAULT": (qos_profile_system_default.reliability,
                       qos_profile_system_default.durability),
}


def make_qos(preset: str, depth: int) -> QoSProfile:
    """A keep-last profile of ``depth`` from a preset name (case-insensitive).

    SENSOR_DATA: best effort, volatile. DEFAULT: reliable, volatile. SYSTEM_DEFAULT: whatever
    the middleware defaults to. Raises ValueError naming the allowed values.
    """
    name = str(preset).upper()
    if name not in QOS_PRESETS:
        raise ValueError(f"unknown QoS preset {preset!r}; allowed: {', '.join(QOS_PRESETS)}")
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"QoS depth must be an integer in 1..{MAX_DEPTH}, got {depth!r}")
    reliability, durability = _PRESET_POLICIES[name]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=reliability,
        durability=durability,
    )


def latched_qos() -> QoSProfile:
    """Reliable + transient local, depth 1: late subscribers get the last message (class info)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def describe_qos(profile: QoSProfile) -> str:
    """'best_effort/volatile/keep_last(1)'-style summary for logs and diagnostics."""
    history = profile.history.name.lower()
    if profile.history == HistoryPolicy.KEEP_LAST:
        history = f"{history}({profile.depth})"
    return f"{profile.reliability.name.lower()}/{profile.durability.name.lower()}/{history}"


def overridable() -> QoSOverridingOptions:
    """History, depth and reliability of a topic overridable by read-only parameters
    ``qos_overrides.<resolved topic>.<publisher|subscription>.<policy>`` (rclpy's QoS overriding
    options), e.g. ``qos_overrides./camera/image_raw.subscription.reliability: reliable`` in a
    params file; they apply on top of the ``*_qos`` presets."""
    return QoSOverridingOptions.with_default_policies()


def incompatible_reason(event: object, whom: str, hint: str = "") -> str:
    """The sentence for an incompatible-QoS event (rclpy's QoSRequestedIncompatibleQoSInfo or
    offered counterpart): 'incompatible QoS with <whom>: policy <POLICY><hint>'."""
    policy = qos_policy_name_from_kind(event.last_policy_kind)
    return f"incompatible QoS with {whom}: policy {policy}{hint}"
