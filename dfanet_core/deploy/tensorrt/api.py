"""Find the TensorRT Python module and describe what its API supports.

TensorRT 10 ships as ``tensorrt``; TensorRT for RTX (``pip install tensorrt-rtx-cu13``) ships as
``tensorrt_rtx`` with the same builder/runtime API minus a few features: every network is strongly
typed
(precision comes from the ONNX tensor types, there is no ``BuilderFlag.FP16``/``INT8``), there is
no INT8
calibrator and the timing cache is a no-op. Callers ask :class:`TensorRTInfo` instead of checking
names.
"""

from __future__ import annotations

import collections
import functools
import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

from packaging.version import Version

LOG = logging.getLogger(__name__)

#: Module names tried in order: the full TensorRT first, TensorRT for RTX second.
MODULE_NAMES = ("tensorrt", "tensorrt_rtx")
# : Oldest TensorRT with the name-based I/O API (``execute_async_v3`` etc.) this package is written
# for.
MIN_TENSORRT = Version("10.0")
#: TensorRT for RTX versions start at 1.0 and have the TensorRT 10 API.
MIN_TENSORRT_RTX = Version("1.0")

INSTALL_HINT = (
    "install TensorRT 10 (`pip install tensorrt` from NVIDIA's index, or JetPack/Debian packages) "
    "or TensorRT for RTX (`pip install tensorrt-rtx-cu13`)"
)


class TensorRTUnavailableError(ImportError):
    """No usable TensorRT Python module is installed."""


@dataclass(frozen=True)
class TensorRTInfo:
    """The imported TensorRT module and the features its API offers."""

    module: ModuleType
    module_name: str
    version: Version

    @property
    def is_rtx(self) -> bool:
        """TensorRT for RTX: strongly typed only, no INT8 calibration, no timing cache."""
        return self.module_name == "tensorrt_rtx"

    @property
    def version_string(self) -> str:
        """``<module>-<version>``: what an engine cache key records."""
        return f"{self.module_name}-{self.version}"

    @property
    def has_fp16_flag(self) -> bool:
        """Whether ``BuilderFlag.FP16`` exists (weakly typed networks with a precision flag)."""
        return hasattr(self.module.BuilderFlag, "FP16")

    @property
    def has_int8_calibration(self) -> bool:
        """Whether implicit INT8 with an entropy calibrator is available."""
        return hasattr(self.module, "IInt8EntropyCalibrator2") and hasattr(
            self.module.BuilderFlag, "INT8"
        )

    @property
    def has_progress_monitor(self) -> bool:
        """Whether ``IProgressMonitor`` exists (TensorRT >= 8.6)."""
        return hasattr(self.module, "IProgressMonitor")

    @property
    def timing_cache_is_noop(self) -> bool:
        """TensorRT for RTX keeps the timing cache API but ignores it."""
        return self.is_rtx


def _min_version(module_name: str) -> Version:
    return MIN_TENSORRT_RTX if module_name == "tensorrt_rtx" else MIN_TENSORRT


@functools.cache
def load_tensorrt() -> TensorRTInfo:
    """Import TensorRT (``tensorrt``, else ``tensorrt_rtx``) and check its version.

    Raises :class:`TensorRTUnavailableError` naming what to install when neither imports or the
    version
    is too old for the TensorRT 10 API.
    """
    problems = []
    for name in MODULE_NAMES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # not installed, or its shared libraries are missing
            problems.append(f"{name}: {exc}")
            continue
        version = Version(module.__version__)
        if version < _min_version(name):
            problems.append(f"{name} {version} is older than {_min_version(name)}")
            continue
        LOG.debug("using %s %s", name, version)
        return TensorRTInfo(module=module, module_name=name, version=version)
    raise TensorRTUnavailableError(
        f"no usable TensorRT Python module ({'; '.join(problems)}); {INSTALL_HINT}"
    )


def tensorrt_available() -> bool:
    """Whether :func:`load_tensorrt` succeeds."""
    try:
        load_tensorrt()
    except TensorRTUnavailableError:
        return False
    return True


def rtx_supports_device(info: TensorRTInfo, capability: tuple[int, int]) -> bool:
    """Whether TensorRT for RTX can build for and run on a GPU of this compute capability.

    TensorRT for RTX targets consumer/workstation GPUs (``ComputeCapability.SM75`` ... listed by
    the module);
    datacenter parts such as the H100 (SM90) are not among them. The full TensorRT supports every
    GPU it
    imports on, so this returns True for it.
    """
    if not info.is_rtx:
        return True
    members = info.module.ComputeCapability.__members__
    return f"SM{capability[0]}{capability[1]}" in members


class TrtLogger:
    """Factory for a TensorRT ``ILogger`` forwarding to :mod:`logging` (``dfanet.tensorrt``)."""

    @staticmethod
    def create(info: TensorRTInfo, min_severity: str = "WARNING") -> object:
        """An ``ILogger``; messages below ``min_severity`` are dropped before Python."""
        trt = info.module
        severity = trt.ILogger.Severity
        levels = {
            severity.INTERNAL_ERROR: logging.CRITICAL,
            severity.ERROR: logging.ERROR,
            severity.WARNING: logging.WARNING,
            severity.INFO: logging.INFO,
            severity.VERBOSE: logging.DEBUG,
        }
        threshold = int(getattr(severity, min_severity))
        trt_log = logging.getLogger("dfanet.tensorrt")

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: collections.deque[str] = collections.deque(maxlen=100)

            def log(self, sev: object, msg: str) -> None:
                if int(sev) <= int(severity.ERROR):
                    self.errors.append(msg)
                if int(sev) <= threshold:
                    trt_log.log(levels.get(sev, logging.INFO), "%s", msg)

        return _Logger()
