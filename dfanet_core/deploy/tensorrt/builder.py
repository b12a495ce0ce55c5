"""ONNX -> serialized TensorRT engine: parse (every parser error reported), configure precision,
workspace, optimization profile and timing cache, build with visible progress.

Precision rules (TensorRT 10 API; TensorRT for RTX differences in brackets):
    fp32  fp32 ONNX; TF32 off unless ``tf32=True``.
    fp16  an fp16 ONNX (``export --precision fp16``) builds a strongly typed network; an fp32 ONNX
          uses ``BuilderFlag.FP16`` [RTX: no such flag, every network is strongly typed: needs the
          fp16 ONNX].
    int8  an fp32 ONNX with ``BuilderFlag.INT8`` (+FP16 fallback) and an entropy calibrator over
          real images, cached [RTX: no implicit INT8/calibrator: a clear error].
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from tqdm import tqdm

from ...files import atomic_write_bytes
from ..options import PRECISIONS
from .api import TensorRTInfo, TrtLogger, load_tensorrt

LOG = logging.getLogger(__name__)

INT8_REQUIRES = "the full TensorRT 10 (`pip install tensorrt` from NVIDIA's index)"


class EngineBuildError(RuntimeError):
    """The engine could not be built (bad options, unsupported precision, builder failure)."""


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser rejected the model; ``errors`` lists every parser error."""

    def __init__(self, path: Path, errors: list[str]):
        self.path = path
        self.errors = errors
        listing = "\n".join(f"  [{i}] {e}" for i, e in enumerate(errors)) or "  (no details)"
        super().__init__(f"TensorRT could not parse {path} ({len(errors)} error(s)):\n{listing}")


@dataclass(frozen=True)
class BuildOptions:
    """Everything that shapes an engine besides the ONNX itself (all enters the cache key)."""

    precision: str = "fp32"
    #: Builder scratch memory limit (``MemoryPoolType.WORKSPACE``), MiB.
    workspace_mib: int = 2048
    #: Optimization profile for a dynamic-batch ONNX: batches 1..max_batch_size, tuned for opt.
    max_batch_size: int = 1
    opt_batch_size: int | None = None
    #: Persisted across builds (a no-op in TensorRT for RTX, still written).
    timing_cache: Path | None = None
    #: INT8: images (folder, .txt list of paths, or list) and the calibration cache file.
    calibration_images: tuple[Path, ...] | None = None
    calibration_cache: Path | None = None
    calibration_batch_size: int = 8
    calibration_max_images: int = 256
    builder_optimization_level: int | None = None
    tf32: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.workspace_mib <= 0:
            raise ValueError(f"workspace_mib must be positive, got {self.workspace_mib}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")


@dataclass(frozen=True)
class InputProfile:
    """The engine's input shape: min/opt/max (all equal for a static ONNX)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "min": list(self.min),
            "opt": list(self.opt),
            "max": list(self.max),
        }


def load_onnx_model(path: Path) -> onnx.ModelProto:
    """Load an ONNX graph (weights included) or raise FileNotFoundError / :class:`OnnxParseError`
    naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise OnnxParseError(
            path, [f"not a readable ONNX protobuf ({type(exc).__name__}: {exc})"]
        ) from None


def onnx_compute_precision(model: onnx.ModelProto) -> str:
    """'fp16' if the graph computes in half (dfanet export metadata, else fp16 initializers)."""
    for prop in model.metadata_props:
        if prop.key == "dfanet.export.precision":
            return prop.value.strip('"')
    fp16 = onnx.TensorProto.FLOAT16
    return "fp16" if any(init.data_type == fp16 for init in model.graph.initializer) else "fp32"


def input_profile(model: onnx.ModelProto, options: BuildOptions) -> InputProfile:
    """Input shape from the ONNX graph; a symbolic batch becomes 1..max_batch_size."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise EngineBuildError(
            f"expected one graph input, found {[i.name for i in inputs]}: export the classes "
            "head without --min-confidence-input (the tensorrt backend applies min_confidence "
            "on the GPU to the engine's outputs)"
        )
    graph_input = inputs[0]
    dims = [
        d.dim_value if d.HasField("dim_value") else -1
        for d in graph_input.type.tensor_type.shape.dim
    ]
    if any(d < 0 for d in dims[1:]):
        raise EngineBuildError(
            f"input {graph_input.name} {dims}: only the batch dimension may be dynamic; "
            "export with a fixed --input-size"
        )
    if dims[0] > 0:
        shape = tuple(dims)
        return InputProfile(graph_input.name, shape, shape, shape)
    opt = options.opt_batch_size or options.max_batch_size
    if not 1 <= opt <= options.max_batch_size:
        raise ValueError(f"opt_batch_size {opt} must be within 1..{options.max_batch_size}")
    rest = tuple(dims[1:])
    return InputProfile(
        graph_input.name, (1, *rest), (opt, *rest), (options.max_batch_size, *rest)
    )


def parse_onnx(
    info: TensorRTInfo, builder: object, path: Path, logger: object, strongly_typed: bool
) -> tuple[object, object]:
    """Parse ``path`` into a new network; raise :class:`OnnxParseError` listing every error.

    Returns ``(network, parser)``: the parser owns the weights memory, keep it alive while
    building.
    """
    trt = info.module
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            node = error.node()
            where = (
                f"node {node} ({error.node_operator()} {error.node_name()!r})" if node >= 0 else ""
            )
            errors.append(f"{error.code()}: {error.desc()} {where}".strip())
        raise OnnxParseError(path, errors)
    return network, parser


def _network_kind(info: TensorRTInfo, options: BuildOptions, onnx_precision: str) -> bool:
    """Decide strongly typed vs builder flags for the requested precision, or raise."""
    precision = options.precision
    if onnx_precision == "fp16" and precision != "fp16":
        raise EngineBuildError(
            f"the ONNX computes in fp16 but precision={precision!r} was asked for; "
            "build it with --precision fp16 or export an fp32 ONNX"
        )
    if precision == "fp16" and onnx_precision == "fp32" and not info.has_fp16_flag:
        raise EngineBuildError(
            f"{info.version_string} builds strongly typed networks only (no BuilderFlag.FP16): "
            "fp16 needs an fp16 ONNX; export one with `python -m dfanet_core.deploy.export "
            "--precision fp16 --head classes ...`"
        )
    if precision == "int8" and not info.has_int8_calibration:
        raise EngineBuildError(
            f"INT8 with an entropy calibrator is not available in {info.version_string} "
            f"(no IInt8EntropyCalibrator2/BuilderFlag.INT8); it needs {INT8_REQUIRES}"
        )
    return info.is_rtx or onnx_precision == "fp16"


@contextlib.contextmanager
def build_progress(info: TensorRTInfo, enabled: bool) -> Iterator[object | None]:
    """Show build progress: TensorRT's IProgressMonitor phases on a tqdm bar where available, and a
    heartbeat thread that refreshes the elapsed time every second (the only feedback on TensorRT
    versions without IProgressMonitor). Yields the monitor to attach, or None."""
    if not enabled:
        yield None
        return
    bar = tqdm(desc="building TensorRT engine", unit="step", dynamic_ncols=True, mininterval=0.5)
    lock = threading.Lock()
    stop = threading.Event()
    started = time.perf_counter()
    monitor = _make_monitor(info, bar, lock) if info.has_progress_monitor else None

    def heartbeat() -> None:
        beats = 0
        while not stop.wait(1.0):
            beats += 1
            with lock:
                bar.refresh()  # tqdm redraws the elapsed time
            if beats % 30 == 0:  # for logs that do not show the bar (services, CI)
                LOG.info("still building: %.0f s elapsed", time.perf_counter() - started)

    thread = threading.Thread(target=heartbeat, name="trt-build-heartbeat", daemon=True)
    thread.start()
    try:
        yield monitor
    finally:
        stop.set()
        thread.join()
        bar.close()
        LOG.info("engine build took %.1f s", time.perf_counter() - started)


def _make_monitor(info: TensorRTInfo, bar: tqdm, lock: threading.Lock) -> object:
    trt = info.module

    class _Monitor(trt.IProgressMonitor):
        """Top-level phase steps advance the bar; nested phases show as its postfix."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with lock:
                self.depth[phase_name] = (
                    0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
                )
                self.steps[phase_name] = num_steps
                if parent_phase is None:
                    bar.reset(total=num_steps)
                    bar.set_description(phase_name)
                else:
                    bar.set_postfix_str(f"{phase_name} 0/{num_steps}", refresh=False)
                LOG.debug("TensorRT phase %r (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with lock:
                if self.depth.get(phase_name) == 0:
                    bar.update(1)
                else:
                    # Redrawn by tqdm's next update or the heartbeat, not once per inner step.
                    bar.set_postfix_str(
                        f"{phase_name} {step + 1}/{self.steps.get(phase_name)}", refresh=False
                    )
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with lock:
                self.depth.pop(phase_name, None)

    return _Monitor()


def _apply_timing_cache(info: TensorRTInfo, config: object, path: Path | None) -> object | None:
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # RTX: "timing cache is a no-op"
        cache = config.create_timing_cache(data)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineBuildError(
                f"TensorRT rejected the timing cache {path}; delete it to rebuild"
            )
    if info.timing_cache_is_noop:
        LOG.info("%s ignores timing caches; %s is kept for API parity", info.version_string, path)
    LOG.info("timing cache %s (%s)", path, f"{len(data)} bytes loaded" if data else "new")
    return cache


def _save_timing_cache(config: object, path: Path | None) -> None:
    if path is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.get_timing_cache()
        if cache is None:
            return
        atomic_write_bytes(path, bytes(cache.serialize()))


@dataclass(frozen=True)
class BuildResult:
    engine: bytes
    profile: InputProfile
    tensorrt: str
    strongly_typed: bool
    seconds: float


def build_engine(
    onnx_path: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    *,
    progress: bool = False,
    info: TensorRTInfo | None = None,
) -> BuildResult:
    """Build a serialized engine from ``onnx_path``.

    Raises :class:`OnnxParseError` (every parser error), :class:`EngineBuildError` (an option this
    TensorRT does not support, builder failure) or :class:`~.api.TensorRTUnavailableError`."""
    info = info or load_tensorrt()
    trt = info.module
    path = Path(onnx_path)
    model = load_onnx_model(path)
    profile = input_profile(model, options)
    strongly_typed = _network_kind(info, options, onnx_compute_precision(model))
    del model

    logger = TrtLogger.create(info)
    builder = trt.Builder(logger)
    network, parser = parse_onnx(info, builder, path, logger, strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    _set_precision_flags(info, config, options, strongly_typed)
    if not profile.is_static:
        trt_profile = builder.create_optimization_profile()
        trt_profile.set_shape(profile.name, profile.min, profile.opt, profile.max)
        if config.add_optimization_profile(trt_profile) < 0:
            raise EngineBuildError(
                f"TensorRT rejected the optimization profile {profile.to_dict()}"
            )
    timing_cache = _apply_timing_cache(info, config, options.timing_cache)
    calibrator = _attach_calibrator(info, builder, config, options, profile, path)

    started = time.perf_counter()
    with build_progress(info, progress) as monitor:
        if monitor is not None:
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        details = "; ".join(logger.errors) or "see the TensorRT log above"
        raise EngineBuildError(f"TensorRT failed to build an engine from {path}: {details}")
    if timing_cache is not None:
        _save_timing_cache(config, options.timing_cache)
    del calibrator, parser
    return BuildResult(bytes(serialized), profile, info.version_string, strongly_typed, seconds)


def _set_precision_flags(
    info: TensorRTInfo, config: object, options: BuildOptions, strongly_typed: bool
) -> None:
    trt = info.module
    flag = trt.BuilderFlag
    if hasattr(flag, "TF32") and not options.tf32:
        config.clear_flag(flag.TF32)
    if strongly_typed:
        return
    if options.precision in ("fp16", "int8") and info.has_fp16_flag:
        config.set_flag(flag.FP16)
    if options.precision == "int8":
        config.set_flag(flag.INT8)


def _attach_calibrator(
    info: TensorRTInfo,
    builder: object,
    config: object,
    options: BuildOptions,
    profile: InputProfile,
    path: Path,
) -> object | None:
    if options.precision != "int8":
        return None
    from .calibration import make_entropy_calibrator

    calibrator = make_entropy_calibrator(info, options, profile, onnx_path=path)
    config.int8_calibrator = calibrator
    if not profile.is_static:  # calibration runs at one fixed shape: the opt batch
        calibration_profile = builder.create_optimization_profile()
        calibration_profile.set_shape(profile.name, profile.opt, profile.opt, profile.opt)
        if not config.set_calibration_profile(calibration_profile):
            raise EngineBuildError("TensorRT rejected the INT8 calibration profile")
    return calibrator


def resolve_calibration_images(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[Path, ...]:
    """A folder (its .png/.jpg files, sorted), a .txt file listing image paths (one a line,
    relative to the file), or a list of paths -> a tuple of existing image paths."""
    from .calibration import calibration_image_paths

    return tuple(calibration_image_paths(source))
