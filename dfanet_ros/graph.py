"""ROS graph plumbing shared by the node, the rosbag tools, the demo and the tests: the
environment of a graph on this machine (:func:`ros_environment`), the node as a child process
(:class:`NodeProcess`), the one rclpy client pattern (:class:`RosClient`: its own context, node
and spinning thread) and the bridge from Python logging to a node's ROS logger.

Measured here (rmw_fastrtps, kilted): best-effort messages over ~0.5 MB between processes are
lost with Fast DDS's default transports (its shared-memory segment is 512 KB);
``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` does not help under
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``. The shipped Fast DDS profile
(``config/fastdds_profile.xml``, a 64 MiB segment) carries them; it must be loaded by the process
that publishes them, so :func:`ros_environment` names it for every process of a graph here
(docs/ros_interface.md, "QoS and transport").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dfanet_core.paths import REPO_ROOT  # where the packages are imported from

#: The variables that make up a ROS graph's environment (copied into this process by
#: :func:`apply_ros_environment`).
ROS_ENV_KEYS = (
    "ROS_DOMAIN_ID",
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "FASTDDS_BUILTIN_TRANSPORTS",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "RMW_IMPLEMENTATION",
    "ROS_LOG_DIR",
)
DISCOVERY_RANGES = ("LOCALHOST", "SUBNET", "OFF", "SYSTEM_DEFAULT")
NODE_MODULE = "dfanet_ros.segment_node"
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
PROFILE_NAME = "fastdds_profile.xml"  # under config/ (source tree) or share/dfanet_ros/config


def fastdds_profile() -> Path:
    """The shipped Fast DDS profile: the package's share directory when ament knows it, else the
    source tree's ``config/``."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("dfanet_ros")) / "config" / PROFILE_NAME
        if installed.is_file():
            return installed
    except (ImportError, LookupError, OSError, ValueError):
        pass
    return REPO_ROOT / "config" / PROFILE_NAME


def keep_large_buffers() -> bool:
    """Have glibc serve allocations up to 32 MiB from its heap and never give freed heap memory
    back, so that the camera-sized buffers every message needs (rclpy's copies of ``data``, Fast
    DDS's, the mask) are reused frame after frame instead of being mmapped and page-faulted in
    afresh each time. Measured here (6 MB best-effort frames, shared memory, kilted): publish ->
    subscriber callback p50 27 ms by default, 12 ms with this in both processes. Call it before
    the first large message; True where it took effect (False without glibc's mallopt)."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(
        mallopt(m_trim_threshold, 1 << 30))


def check_domain_id(domain_id: int, what: str = "ROS domain id") -> int:
    """``domain_id`` if it is a valid ROS 2 domain (0..232), else ValueError naming ``what``."""
    if not 0 <= domain_id <= 232:
        raise ValueError(f"{what} must be in 0..232, got {domain_id}")
    return domain_id


def process_domain_id() -> int:
    """A domain id (100..199) from this process's id, for a command that runs its own graph:
    parallel runs rarely share one."""
    return 100 + os.getpid() % 100


def ros_environment(
    domain_id: int | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    base: Mapping[str, str] | None = None,
    *,
    discovery_range: str | None = None,
    own_graph: bool = True,
) -> dict[str, str]:
    """The environment for this machine's processes of one ROS graph.

    What ``base`` (default: this process's environment) already sets is kept, so a command can
    join a graph that ``ros2 bag play`` or a launched node runs; the arguments given win
    (``domain_id``, ``discovery_range``). Filled in when missing: localhost-only discovery,
    the shipped Fast DDS profile (``FASTDDS_DEFAULT_PROFILES_FILE``: large messages through
    shared memory), rmw_fastrtps, a per-process domain id when this command owns the whole graph
    (``own_graph``) and none is set, and ``ROS_LOG_DIR=log_dir`` when the environment names no
    log place at all (rclpy needs ``ROS_LOG_DIR`` or ``HOME``).
    """
    env = dict(os.environ if base is None else base)
    if domain_id is None and "ROS_DOMAIN_ID" not in env and own_graph:
        domain_id = process_domain_id()
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(check_domain_id(domain_id, "--domain-id"))
    if discovery_range is not None:
        if discovery_range not in DISCOVERY_RANGES:
            raise ValueError(f"unknown discovery range {discovery_range!r}; allowed: "
                             f"{', '.join(DISCOVERY_RANGES)}")
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery_range
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault(PROFILE_VARIABLE, str(fastdds_profile()))
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if log_dir is not None and "ROS_LOG_DIR" not in env and "HOME" not in env:
        env["ROS_LOG_DIR"] = str(log_dir)
    return env


def apply_ros_environment(env: Mapping[str, str]) -> None:
    """Copy the ROS/DDS variables of ``env`` into this process (before rclpy creates a context)."""
    for key in ROS_ENV_KEYS + ("HOME",):
        if key in env:
            os.environ[key] = env[key]


class RosClient:
    """An rclpy node in this process on its own context, spun by its own thread: the pattern of
    every ROS client of the package (the test/demo client, the bag replay). Subclasses create
    their publishers and subscriptions on :attr:`node` in ``__init__`` and then call
    :meth:`start`. Use as a context manager, or call :meth:`close`.

    The environment (domain id, discovery range, transport) is read from ``os.environ`` when the
    context is created (see :func:`apply_ros_environment`).
    """

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        keep_large_buffers()
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)

    def start(self) -> None:
        """Start spinning (callbacks run on the spinning thread from now on)."""
        self._spinner.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while not self._stop.is_set() and self.context.ok():
                self._executor.spin_once(timeout_sec=0.05)
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        """Stop spinning, destroy the node and shut the context down."""
        self._stop.set()
        if self._spinner.is_alive():
            self._spinner.join(timeout=5.0)
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> RosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PythonLogBridge(logging.Handler):
    """Forwards the Python logging of ``logger_name`` (model loading, engine build progress) to a
    node's ROS logger, so it reaches /rosout and the launch screen."""

    def __init__(self, ros_logger: Any, logger_name: str) -> None:
        super().__init__(logging.INFO)
        self._ros_logger = ros_logger
        self._python_logger = logging.getLogger(logger_name)
        self._python_logger.addHandler(self)
        self._python_logger.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        message = f"[{record.name}] {record.getMessage()}"
        if record.levelno >= logging.ERROR:
            self._ros_logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._ros_logger.warning(message)
        else:
            self._ros_logger.info(message)

    def detach(self) -> None:
        self._python_logger.removeHandler(self)


class NodeError(RuntimeError):
    """A node did not start, died, or did not answer in time; the message has its log."""


def write_params_file(path: Path, params: Mapping[str, Any], node_key: str = "/**") -> Path:
    """A ROS 2 params YAML for ``params`` under ``node_key`` (``/**`` matches any node)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({node_key: {"ros__parameters": dict(params)}}))
    return path


class NodeProcess:
    """``python -m dfanet_ros.segment_node`` (or another node ``module``) in a child process,
    output to ``<workdir>/node.log``.

    ``params`` is a dict (written to a params file), the path of a params file, or None (no
    params file: parameters only as ``-p`` rules in ``extra_args``); ``remaps`` are
    ``from:=to`` pairs; ``namespace`` sets ``__ns``.
    """

    def __init__(
        self,
        params: Mapping[str, Any] | Path | None,
        env: Mapping[str, str],
        workdir: Path,
        *,
        namespace: str = "",
        remaps: Iterable[tuple[str, str]] = (),
        extra_args: Iterable[str] = (),
        module: str = NODE_MODULE,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = module.rsplit(".", 1)[-1]
        self.command = [sys.executable, "-m", module, "--ros-args"]
        if params is not None:
            params_file = (
                Path(params)
                if isinstance(params, (str, Path))
                else write_params_file(workdir / "params.yaml", params)
            )
            self.command += ["--params-file", str(params_file)]
        if namespace:
            self.command += ["-r", f"__ns:=/{namespace.strip('/')}"]
        for source, target in remaps:
            self.command += ["-r", f"{source}:={target}"]
        self.command += list(extra_args)
        self.log_path = workdir / "node.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        child_env = dict(env)
        # the child imports this very dfanet_ros/dfanet_core, installed or from a checkout
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
        )
        self.process = subprocess.Popen(
            self.command, env=child_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_alive(self) -> None:
        """NodeError with the log's end if the node has exited."""
        code = self.process.poll()
        if code is not None:
            raise NodeError(
                f"{self.name} exited with code {code} ({' '.join(self.command)}); "
                f"end of {self.log_path}:\n{self.log_tail()}"
            )

    def wait_exit(self, timeout_s: float) -> int:
        """The exit code, once the node ends by itself (NodeError after ``timeout_s``)."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise NodeError(
                f"{self.name} still running after {timeout_s} s; log:\n{self.log_tail()}"
            ) from None

    def rss_bytes(self) -> int:
        """Resident memory of the node process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise NodeError(f"no VmRSS for pid {self.pid}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGINT (clean rclpy shutdown), then SIGTERM, then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
                try:
                    self.process.wait(timeout=timeout_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
