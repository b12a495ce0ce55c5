"""TensorRT engine building, caching and running (TensorRT 10 API; TensorRT for RTX accepted).

Importing this package does not import TensorRT; :func:`load_tensorrt` does, on first use.
"""

from .api import TensorRTInfo, TensorRTUnavailableError, load_tensorrt, tensorrt_available
from .builder import BuildOptions, BuildResult, EngineBuildError, OnnxParseError, build_engine
from .cache import EngineFileError, EngineKey, compute_key, get_or_build_engine, read_engine_file
from .runner import TensorRTRuntimeError, TrtRunner

__all__ = [
    "BuildOptions",
    "BuildResult",
    "EngineBuildError",
    "EngineFileError",
    "EngineKey",
    "OnnxParseError",
    "TensorRTInfo",
    "TensorRTRuntimeError",
    "TensorRTUnavailableError",
    "TrtRunner",
    "build_engine",
    "compute_key",
    "get_or_build_engine",
    "load_tensorrt",
    "read_engine_file",
    "tensorrt_available",
]
