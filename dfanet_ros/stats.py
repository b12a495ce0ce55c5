"""Pipeline statistics: counters, windowed rates and windowed latency percentiles. No rclpy.

One :class:`PipelineStats` is shared by the subscription callback and the inference worker (it
locks internally); the diagnostics thread takes an immutable :class:`StatsSnapshot` from it. Time
is passed in (monotonic seconds) so the logic is testable without sleeping.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from dfanet_core.reports import LatencySummary

__all__ = ["LatencySummary", "LatencyWindow", "PipelineStats", "StatsSnapshot", "frame_latencies"]

# Latency stages, in pipeline order, and the derived totals (all in milliseconds):
#   decode .. publish  worker stages of one frame
#   processing_time    decode start -> mask published (worker only)
#   queue_wait         received by the callback -> picked up by the worker
#   node_latency       received by the callback -> mask published
#   pipeline_latency   header.stamp -> mask published (needs clocks in step with the camera)
STAGES: tuple[str, ...] = ("decode", "preprocess", "inference", "postprocess", "publish")
TOTALS: tuple[str, ...] = ("processing_time", "queue_wait", "node_latency", "pipeline_latency")


class LatencyWindow:
    """The last ``size`` latency samples (ms) and their summary (dfanet_core.reports)."""

    def __init__(self, size: int = 300) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._samples.append(float(value_ms))

    def summary(self) -> LatencySummary | None:
        """None while empty."""
        return LatencySummary.of(self._samples)


class EventWindow:
    """Times of events in the last ``window_s`` seconds: counts and rates over that window."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self._times: deque[float] = deque()
        self._first: float | None = None

    def add(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._times.append(now)
        self._expire(now)

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def rate(self, now: float) -> float:
        """Events per second over the window (over the time since the first event while that
        is shorter, so a stream that just started is not under-reported)."""
        if self._first is None:
            return 0.0
        span = min(self.window_s, now - self._first)
        return self.count(now) / span if span > 0 else 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._times and self._times[0] < horizon:
            self._times.popleft()


@dataclass(frozen=True)
class StatsSnapshot:
    """Everything the diagnostics need at one instant (counters are totals since start)."""

    uptime_s: float
    frames_in: int
    frames_out: int
    frames_dropped: int
    frames_idle: int
    bad_frames: int
    backend_errors: int
    messages_lost: int
    input_rate_hz: float
    output_rate_hz: float
    inputs_in_window: int
    drops_in_window: int
    failures_in_window: int
    last_failure: str | None
    seconds_since_input: float | None
    seconds_since_first_input: float | None
    rate_window_s: float
    latency: Mapping[str, LatencySummary] = field(default_factory=dict)
    extra_outputs: Mapping[str, int] = field(default_factory=dict)  # e.g. {'color': 12}

    @property
    def drop_ratio(self) -> float:
        """Dropped / received over the rate window (0 when nothing arrived)."""
        return self.drops_in_window / self.inputs_in_window if self.inputs_in_window else 0.0


class PipelineStats:
    """Thread-safe counters, rates and latencies of one segmentation pipeline."""

    def __init__(
        self,
        start_time: float,
        rate_window_s: float = 5.0,
        error_window_s: float = 5.0,
        latency_samples: int = 300,
    ) -> None:
        self._lock = threading.Lock()
        self._start = start_time
        self._inputs = EventWindow(rate_window_s)
        self._outputs = EventWindow(rate_window_s)
        self._drops = EventWindow(rate_window_s)
        self._failures = EventWindow(error_window_s)
        self._latency = {name: LatencyWindow(latency_samples) for name in STAGES + TOTALS}
        self._counts = dict.fromkeys(
            ("frames_in", "frames_out", "dropped", "idle", "bad", "backend", "lost"), 0
        )
        self._extra_outputs: dict[str, int] = {}
        self._last_failure: str | None = None
        self._last_input: float | None = None
        self._first_input: float | None = None

    def record_input(self, now: float) -> None:
        """A message arrived (good or bad)."""
        with self._lock:
            self._counts["frames_in"] += 1
            self._inputs.add(now)
            self._last_input = now
            if self._first_input is None:
                self._first_input = now

    def record_drop(self, now: float, count: int = 1) -> None:
        """Frames replaced in the single-slot buffer before the worker took them."""
        with self._lock:
            self._counts["dropped"] += count
            for _ in range(count):
                self._drops.add(now)

    def record_idle(self) -> None:
        """A frame arrived while nobody subscribed to any output (lazy mode): not segmented."""
        with self._lock:
            self._counts["idle"] += 1

    def set_error_window(self, window_s: float) -> None:
        """Failures keep the status ERROR this long from now on (a live parameter)."""
        with self._lock:
            self._failures.window_s = float(window_s)

    def record_lost(self, count: int) -> None:
        """Messages the middleware reports lost before they reached the callback."""
        with self._lock:
            self._counts["lost"] += count

    def record_bad_frame(self, now: float, reason: str) -> None:
        """A message that could not be decoded (encoding, size, corrupt data)."""
        self._record_failure(now, "bad", f"bad frame: {reason}")

    def record_backend_error(self, now: float, reason: str) -> None:
        """The Segmenter (or publishing) failed on a decodable frame."""
        self._record_failure(now, "backend", f"backend error: {reason}")

    def record_failure(self, now: float, reason: str) -> None:
        """Any other failure the diagnostics must show (incompatible QoS, ...)."""
        self._record_failure(now, None, reason)

    def record_output(self, now: float, latencies_ms: Mapping[str, float]) -> None:
        """A mask was published; ``latencies_ms`` holds any of STAGES + TOTALS."""
        with self._lock:
            self._counts["frames_out"] += 1
            self._outputs.add(now)
            for name, value in latencies_ms.items():
                self._latency[name].add(value)

    def record_extra_output(self, kind: str) -> None:
        """An optional output (colour, confidence) was published."""
        with self._lock:
            self._extra_outputs[kind] = self._extra_outputs.get(kind, 0) + 1

    def snapshot(self, now: float) -> StatsSnapshot:
        with self._lock:
            latency = {name: s for name, w in self._latency.items() if (s := w.summary())}
            return StatsSnapshot(
                uptime_s=now - self._start,
                frames_in=self._counts["frames_in"],
                frames_out=self._counts["frames_out"],
                frames_dropped=self._counts["dropped"],
                frames_idle=self._counts["idle"],
                bad_frames=self._counts["bad"],
                backend_errors=self._counts["backend"],
                messages_lost=self._counts["lost"],
                input_rate_hz=self._inputs.rate(now),
                output_rate_hz=self._outputs.rate(now),
                inputs_in_window=self._inputs.count(now),
                drops_in_window=self._drops.count(now),
                failures_in_window=self._failures.count(now),
                last_failure=self._last_failure,
                seconds_since_input=_age(now, self._last_input),
                seconds_since_first_input=_age(now, self._first_input),
                rate_window_s=self._inputs.window_s,
                latency=latency,
                extra_outputs=dict(self._extra_outputs),
            )

    def _record_failure(self, now: float, counter: str | None, reason: str) -> None:
        with self._lock:
            if counter:
                self._counts[counter] += 1
            self._failures.add(now)
            self._last_failure = reason


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else now - then


def frame_latencies(
    timings_ms: Mapping[str, float],
    received: float,
    started: float,
    done: float,
    stamp_ns: int,
    now_ns: int,
) -> dict[str, float]:
    """Every latency of one published frame, in ms, by the names of STAGES + TOTALS: the
    worker's stage ``timings_ms`` plus what the monotonic times (s) received -> started ->
    done and the clocks (ns) header stamp -> now give."""
    latencies = dict(timings_ms)
    latencies["publish"] = (done - started) * 1e3 - sum(timings_ms.values())
    latencies["processing_time"] = (done - started) * 1e3
    latencies["queue_wait"] = (started - received) * 1e3
    latencies["node_latency"] = (done - received) * 1e3
    latencies["pipeline_latency"] = (now_ns - stamp_ns) / 1e6
    return latencies
