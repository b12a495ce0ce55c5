"""How a model runs, as one frozen object: :class:`RuntimeOptions` (backend, precision, device,
sizes, threads, caches) with the TensorRT build settings nested in :class:`TensorRTOptions`.

The choices (backends, precisions, resize modes) are defined here once; the Segmenter, the
benchmark, the node's parameters and every command line take them from this module. No torch
import: the ROS parameter layer validates against it before any model code loads.

    options = RuntimeOptions(backend="onnxruntime", input_size=(360, 480), intra_op_threads=2)
    segmenter = Segmenter.load("weights/dfanet_a_camvid.safetensors", options)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ``auto`` picks TensorRT, then PyTorch on CUDA, then ONNX Runtime (see backends.resolve_backend).
BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
RESIZE_MODES = ("stretch", "letterbox")
#: What each concrete backend computes in.
BACKEND_PRECISIONS = {
    "onnxruntime": ("fp32",),
    "torch": ("fp32", "fp16", "bf16"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
_PRECISION_HINTS = {
    "onnxruntime": "use backend='torch' on CUDA or 'tensorrt' for fp16/int8 (ONNX Runtime int8 "
    "is not offered: measured slower than fp32 on this CPU, AMX included, and below the "
    "accuracy bar; docs/benchmarks.md)",
    "torch": "fp16 needs CUDA; bf16 runs on CUDA and the CPU",
}
#: Output heads (how class ids and confidence come out of the logits, see deploy.export):
#: ``fast`` from the decoder's 1/4-resolution logits upsampled x2 (bilinear), then argmax;
#: ``exact`` the model's own full-resolution bilinear logits, then argmax. Either way the
#: Segmenter maps the head's output to each image's size with one nearest-neighbour resize.
HEADS = ("fast", "exact")
#: ONNX Runtime graph optimization levels (``all`` adds the blocked NCHWc layout).
ORT_OPTIMIZATIONS = ("all", "extended", "basic")
#: torch.compile modes of the torch backend (inductor); None runs eager.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


@dataclass(frozen=True)
class TensorRTOptions:
    """What shapes a TensorRT engine besides the ONNX and the precision (all of it enters the
    engine cache key, see tensorrt.cache)."""

    #: Builder scratch memory limit, MiB.
    workspace_mib: int = 2048
    #: INT8: a folder of images, a .txt list of image paths, or a sequence of paths.
    calibration_images: str | Path | tuple[Path, ...] | None = None
    #: INT8 calibration cache (default: beside the engine in the engine cache).
    calibration_cache: Path | None = None
    #: Rebuild even when a matching engine is cached.
    force_rebuild: bool = False
    #: Show the build's progress bar.
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workspace_mib <= 0:
            raise ValueError(f"workspace_mib must be positive, got {self.workspace_mib}")
        images = self.calibration_images
        if images is not None and not isinstance(images, (str, os.PathLike)):
            object.__setattr__(self, "calibration_images", tuple(Path(p) for p in images))
        if self.calibration_cache is not None:
            object.__setattr__(self, "calibration_cache", Path(self.calibration_cache))


@dataclass(frozen=True)
class RuntimeOptions:
    """Everything that decides how a checkpoint or ONNX file runs. Defaults: the best backend of
    this machine, the source's own precision and input size."""

    backend: str = "auto"
    #: None: fp32 for a checkpoint, the export precision for an ONNX file.
    precision: str | None = None
    #: 'cpu', 'cuda' or 'cuda:N' (a torch.device is accepted); None: CUDA when there is a GPU.
    device: str | None = None
    #: Network input (H, W); None: the checkpoint's ``meta['input_size']`` (an ONNX file fixes
    #: its own).
    input_size: tuple[int, int] | None = None
    #: Largest batch per inference call; None: 1 for a checkpoint, an ONNX file's own batch.
    max_batch_size: int | None = None
    #: How images are fitted to the network input: 'stretch' or 'letterbox'.
    resize_mode: str = "stretch"
    #: ONNX Runtime intra-op threads; None: the library default.
    intra_op_threads: int | None = None
    #: Output head: 'fast' (class ids from the decoder's 1/4-resolution logits) or 'exact'
    #: (full-resolution logits, then argmax); see :data:`HEADS`.
    head: str = "fast"
    #: ONNX Runtime graph optimization level, one of :data:`ORT_OPTIMIZATIONS`.
    ort_optimization: str = "all"
    #: ONNX Runtime worker threads busy-wait for work between operators and between runs:
    #: faster in a tight loop, but the spinning takes CPU from whatever runs beside it.
    ort_spinning: bool = False
    #: ONNX Runtime: bind the input in place and write outputs into preallocated buffers
    #: (``run_with_iobinding``). Off by default: it measured no faster than ``run`` here (the
    #: input is already a reused contiguous buffer and the fast head's outputs are small).
    io_binding: bool = False
    #: PyTorch on CUDA: capture CUDA graphs; channels_last memory format (None: on for CUDA).
    cuda_graphs: bool = False
    channels_last: bool | None = None
    #: torch backend: ``torch.compile`` (inductor) mode, one of :data:`COMPILE_MODES`; None:
    #: eager. Compiled at load time for each batch size up to ``max_batch_size`` (logged).
    compile_mode: str | None = None
    #: Where the checkpoint's ONNX export and the TensorRT engines are cached (None: the
    #: default cache folder, see dfanet_core.files.default_cache_dir).
    onnx_cache_dir: Path | None = None
    engine_cache_dir: Path | None = None
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be 'auto' or one of {BACKENDS[1:]}, got {self.backend!r}"
            )
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}"
            )
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(
                f"intra_op_threads must be >= 1 (None: the default), got {self.intra_op_threads}"
            )
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.ort_optimization not in ORT_OPTIMIZATIONS:
            raise ValueError(
                f"ort_optimization must be one of {ORT_OPTIMIZATIONS}, got "
                f"{self.ort_optimization!r}"
            )
        if self.compile_mode is not None:
            if self.compile_mode not in COMPILE_MODES:
                raise ValueError(
                    f"compile_mode must be None (eager) or one of {COMPILE_MODES}, got "
                    f"{self.compile_mode!r}"
                )
            if self.backend not in ("auto", "torch"):
                raise ValueError(
                    f"compile_mode {self.compile_mode!r} needs backend 'torch' (or 'auto' on a "
                    f"CUDA machine), got backend {self.backend!r}"
                )
            if self.cuda_graphs:
                raise ValueError(
                    "cuda_graphs=True and compile_mode cannot be combined: compile_mode "
                    "'reduce-overhead' captures CUDA graphs itself"
                )
        if self.input_size is not None:
            object.__setattr__(self, "input_size", check_input_size(self.input_size))
        if self.device is not None:
            object.__setattr__(self, "device", str(self.device))
        for name in ("onnx_cache_dir", "engine_cache_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))

    #: Flat keyword names (Segmenter.from_checkpoint's) that belong to the nested TensorRT options.
    TENSORRT_KEYWORDS = ("workspace_mib", "calibration_images", "calibration_cache",
                         "force_rebuild")

    @classmethod
    def from_keywords(cls, **keywords: Any) -> RuntimeOptions:
        """Options from the flat keyword arguments of ``Segmenter.from_checkpoint`` (the TensorRT
        ones go into :attr:`tensorrt`); TypeError names an unknown keyword and the valid ones."""
        return cls().replace(**keywords)

    def replace(self, **changes: Any) -> RuntimeOptions:
        """A copy with ``changes`` (flat TensorRT keywords accepted)."""
        tensorrt = {k: changes.pop(k) for k in self.TENSORRT_KEYWORDS if k in changes}
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            valid = sorted(known - {"tensorrt"}) + list(self.TENSORRT_KEYWORDS)
            raise TypeError(f"unknown runtime option(s) {unknown}; valid: {', '.join(valid)}")
        if tensorrt:
            changes["tensorrt"] = dataclasses.replace(changes.get("tensorrt", self.tensorrt),
                                                      **tensorrt)
        return dataclasses.replace(self, **changes)

    def require_precision(self, backend: str, default: str, allowed: Sequence[str]) -> str:
        """The precision to run ``backend`` in (``default`` when unset); ValueError naming what
        ``backend`` supports otherwise."""
        precision = self.precision or default
        if precision not in allowed:
            hint = _PRECISION_HINTS.get(backend, "")
            raise ValueError(
                f"backend {backend!r} supports precision {tuple(dict.fromkeys(allowed))}, got "
                f"{precision!r}" + (f"; {hint}" if hint else "")
            )
        return precision


def check_min_confidence(value: float) -> float:
    """``value`` as a float in [0, 1] (0: off); ValueError naming ``min_confidence`` otherwise."""
    try:
        checked = float(value)
    except (TypeError, ValueError):
        checked = float("nan")
    if not 0.0 <= checked <= 1.0:  # also rejects NaN
        raise ValueError(
            f"min_confidence must be in [0, 1] (a probability; 0 = off), got {value!r}"
        )
    return checked


def check_input_size(size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` as ints, both >= 32 (the network strides); ValueError otherwise."""
    try:
        checked = tuple(int(v) for v in size)
    except (TypeError, ValueError):
        checked = ()
    if len(checked) != 2 or min(checked) < 32:
        raise ValueError(f"input_size must be (H, W) with both >= 32, got {size}")
    return checked  # type: ignore[return-value]


# -- command lines ------------------------------------------------------------------------------
def add_runtime_arguments(parser: argparse.ArgumentParser, *, default_backend: str = "auto",
                          threads_help: str = "ONNX Runtime intra-op threads (default: the "
                          "library's)") -> None:
    """The runtime options every command line shares: --backend, --precision, --input-size,
    --device, --threads, --resize-mode, --head, --ort-optimization, --ort-spinning,
    --io-binding, --compile-mode, --cache-dir (read back with :func:`options_from_args`)."""
    group = parser.add_argument_group("runtime (dfanet_core.deploy.options.RuntimeOptions)")
    group.add_argument("--backend", choices=BACKENDS, default=default_backend,
                       help=f"inference backend (default {default_backend})")
    group.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="numeric precision (default: fp32, or an ONNX file's own)")
    group.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="network input size (default: the checkpoint's)")
    group.add_argument("--device", default=None,
                       help="cpu, cuda or cuda:N (default: cuda when there is a GPU)")
    group.add_argument("--threads", type=int, default=None, help=threads_help)
    group.add_argument("--resize-mode", choices=RESIZE_MODES, default="stretch",
                       help="how images are fitted to the network input (default stretch)")
    group.add_argument("--head", choices=HEADS, default="fast",
                       help="output head: fast (class ids from the decoder's 1/4-resolution "
                       "logits, x2) or exact (full-resolution logits, then argmax); default fast")
    group.add_argument("--ort-optimization", choices=ORT_OPTIMIZATIONS, default="all",
                       help="ONNX Runtime graph optimization level (default all)")
    group.add_argument("--ort-spinning", choices=("on", "off"), default="off",
                       help="ONNX Runtime worker threads busy-wait between operators/runs "
                       "(default off: see docs/benchmarks.md)")
    group.add_argument("--io-binding", action="store_true",
                       help="ONNX Runtime: run_with_iobinding into preallocated buffers "
                       "(default: plain run(), measured as fast)")
    group.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                       help="torch backend: torch.compile (inductor) mode (default: eager)")
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="folder for ONNX exports and TensorRT engines (default: "
                       "$DFANET_CACHE_DIR, else ~/.cache/dfanet)")


def options_from_args(args: argparse.Namespace, **overrides: Any) -> RuntimeOptions:
    """The :class:`RuntimeOptions` of arguments added by :func:`add_runtime_arguments`."""
    cache = args.cache_dir
    values: dict[str, Any] = {
        "backend": args.backend,
        "precision": args.precision,
        "input_size": tuple(args.input_size) if args.input_size else None,
        "device": args.device,
        "intra_op_threads": args.threads or None,
        "resize_mode": args.resize_mode,
        "head": args.head,
        "ort_optimization": args.ort_optimization,
        "ort_spinning": args.ort_spinning == "on",
        "io_binding": args.io_binding,
        "compile_mode": args.compile_mode,
        "onnx_cache_dir": cache / "onnx" if cache else None,
        "engine_cache_dir": cache / "engines" if cache else None,
    }
    values.update(overrides)
    return RuntimeOptions(**values)
