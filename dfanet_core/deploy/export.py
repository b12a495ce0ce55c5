"""ONNX export of a DFANet checkpoint: opset 18, one self-describing file, checked, parity-tested.

Two graph heads:
    ``logits``   images (N,3,H,W float32, normalized) -> logits (N,C,H,W float32). The plain model.
    ``classes``  images [, min_confidence] -> class_ids (N,h,w uint8) [+ confidence (N,h,w
                 float32, max softmax probability)]. Argmax and softmax run inside the graph, on
                 the inference device, so a runtime reads back one byte per pixel instead of C
                 floats; h x w is the head resolution (dfanet_core.deploy.heads: the input size
                 for ``full``, 1/2 for ``x2``). The Segmenter uses it.

The checkpoint meta (class names, palette, mean/std, input size, variant, ...) and the export
settings
are stored in the ONNX ``metadata_props`` (keys ``dfanet.<meta key>`` and ``dfanet.export.<key>``,
values JSON), so an ONNX file alone is enough to run the model.

    python -m dfanet_core.deploy.export --checkpoint C --input-size H W [--dynamic-batch] --out
    X.onnx
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint
from ..files import atomic_path, default_cache_dir, sha256_file
from ..models.fusion import fuse_conv_bn
from .cpu_layout import anchor_attention_outputs, pad_channels, split_lateral_concats
from .equalize import equalize_ranges
from .heads import (
    HEAD_RESOLUTIONS,
    MIN_CONFIDENCE_INPUT,
    ClassesHead,
    LogitsHead,
    check_head_resolution,
    head_logits,
)
from .preprocess import plan_placement, preprocess_numpy

LOG = logging.getLogger(__name__)

OPSET = 18
#: Bumped when the exported graph changes for the same checkpoint (invalidates cached exports).
#: 2: batch norm folded into the convolutions (fp16-safe); 3: head resolutions, min_confidence;
#: 4: the confidence branch behind an If (skipped for class ids only, heads.SKIP_CONFIDENCE).
EXPORT_FORMAT_VERSION = 4
HEADS = ("logits", "classes")
PRECISIONS = ("fp32", "fp16")
INPUT_NAME = "images"
META_PREFIX = "dfanet."
EXPORT_PREFIX = "dfanet.export."
#: Parity thresholds against PyTorch fp32 (the issue's acceptance numbers).
MAX_LOGIT_DIFF = 1e-3
MIN_ARGMAX_AGREEMENT = 0.999


class OnnxModelError(RuntimeError):
    """An ONNX file that is missing, corrupt, or not a dfanet export; the message names the file
    and the command that writes a good one."""


@dataclass(frozen=True)
class OnnxModelInfo:
    """What a dfanet ONNX file says about itself (from its graph and metadata_props)."""

    path: Path
    meta: dict[str, Any]
    export: dict[str, Any]
    input_name: str
    input_shape: tuple[int | str, ...]
    output_names: tuple[str, ...]
    #: Inputs after the image input (``min_confidence`` for graphs that threshold).
    extra_inputs: tuple[str, ...] = ()

    @property
    def input_size(self) -> tuple[int, int]:
        """Network input (H, W)."""
        return int(self.input_shape[2]), int(self.input_shape[3])

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    @property
    def precision(self) -> str:
        """Compute precision baked into the graph ('fp32' or 'fp16')."""
        return str(self.export.get("precision", "fp32"))

    @property
    def has_min_confidence_input(self) -> bool:
        return MIN_CONFIDENCE_INPUT in self.extra_inputs


@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch fp32 on the same preprocessed images."""

    images: int
    head: str
    max_abs_diff: float
    argmax_agreement: float
    details: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff < MAX_LOGIT_DIFF and self.argmax_agreement > MIN_ARGMAX_AGREEMENT


def _output_names(head: str, confidence: bool) -> list[str]:
    if head == "logits":
        return ["logits"]
    return ["class_ids", "confidence"] if confidence else ["class_ids"]


def _wrap(
    model: nn.Module,
    head: str,
    confidence: bool,
    precision: str,
    resolution: str = "full",
    threshold_input: bool = False,
    cpu_layout: bool = False,
    equalize: bool = False,
) -> nn.Module:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    check_head_resolution(resolution)
    if precision not in PRECISIONS:
        raise ValueError(f"export precision must be one of {PRECISIONS}, got {precision!r}")
    # Batch norm folded into the convolutions: the graph's intermediate values then fit float16
    # (see dfanet_core.models.fusion), which TensorRT fp16 engines and fp16 exports need.
    model = fuse_conv_bn(model.cpu()).eval()
    if equalize:
        model = equalize_ranges(model)
    if cpu_layout:
        model = split_lateral_concats(pad_channels(anchor_attention_outputs(model)))
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = model.to(dtype)
    if head == "classes":
        return ClassesHead(model, confidence, dtype, resolution, threshold_input).eval()
    return LogitsHead(model, dtype).eval()


def _to_proto_dynamo(
    wrapped: nn.Module, example: tuple[torch.Tensor, ...], outputs: list[str],
    dynamic_batch: bool,
) -> onnx.ModelProto:
    dynamic_shapes: dict[str, Any] = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=1024)}}
    if len(example) > 1:
        dynamic_shapes[MIN_CONFIDENCE_INPUT] = None
    program = torch.onnx.export(
        wrapped,
        example,
        input_names=_input_names(example),
        output_names=outputs,
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        dynamic_shapes=dynamic_shapes if dynamic_batch else None,
        verbose=False,
    )
    return program.model_proto


def _to_proto_torchscript(
    wrapped: nn.Module, example: tuple[torch.Tensor, ...], outputs: list[str],
    dynamic_batch: bool,
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]} if dynamic_batch else None
    torch.onnx.export(
        wrapped,
        example,
        buffer,
        input_names=_input_names(example),
        output_names=outputs,
        opset_version=OPSET,
        dynamo=False,
        dynamic_axes=axes,
    )
    return onnx.load_from_string(buffer.getvalue())


def _input_names(example: tuple[torch.Tensor, ...]) -> list[str]:
    return [INPUT_NAME, MIN_CONFIDENCE_INPUT][: len(example)]


def _quiet_exporter_logs() -> list[tuple[logging.Logger, int]]:
    """The dynamo exporter warns about every missing torchvision op; keep our logs readable."""
    saved = []
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript")
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.ERROR)
    return saved


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    meta: dict[str, Any],
    input_size: Sequence[int],
    batch_size: int = 1,
    dynamic_batch: bool = False,
    head: str = "logits",
    confidence: bool = True,
    precision: str = "fp32",
    head_resolution: str = "full",
    min_confidence_input: bool = False,
    cpu_layout: bool = False,
    equalize: bool = False,
    exporter: str = "dynamo",
    extra_export_info: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` to a single-file opset-18 ONNX at ``path`` (atomically) and check it.

    ``input_size`` is (H, W); the batch is ``batch_size`` or, with ``dynamic_batch``, symbolic.
    The classes head computes its argmax at ``head_resolution`` (see deploy.heads); with
    ``min_confidence_input`` it takes a second input, the ``min_confidence`` threshold (float32
    [1]), and marks pixels below it 255 inside the graph. ``cpu_layout`` shapes the graph for ONNX
    Runtime's blocked CPU layout (dfanet_core.deploy.cpu_layout; same outputs). ``equalize``
    applies cross-layer range equalisation (dfanet_core.deploy.equalize; same outputs, weight
    ranges fit 8-bit grids: for INT8 builds).
    ``exporter`` 'dynamo' (default) falls back to the TorchScript exporter only if dynamo fails;
    the
    reason is logged and recorded as ``dfanet.export.exporter_fallback``. Returns the path.
    """
    height, width = (int(v) for v in input_size)
    if height < 32 or width < 32:
        raise ValueError(
            f"input_size must be at least 32x32 (the network strides), got {input_size}"
        )
    num_classes = int(meta.get("num_classes", 0))
    if head == "classes" and num_classes > 255:
        raise ValueError(f"the classes head writes uint8 ids; {num_classes} classes do not fit")
    if head != "classes" and (head_resolution != "full" or min_confidence_input):
        raise ValueError(
            "head_resolution and min_confidence_input belong to the classes head; the logits "
            "head is the plain model"
        )
    wrapped = _wrap(model, head, confidence, precision, head_resolution, min_confidence_input,
                    cpu_layout, equalize)
    outputs = _output_names(head, confidence)
    example: tuple[torch.Tensor, ...] = (torch.zeros(max(1, batch_size), 3, height, width),)
    if min_confidence_input:
        example += (torch.zeros(1),)
    info: dict[str, Any] = {
        "format_version": EXPORT_FORMAT_VERSION,
        "head": head,
        "head_resolution": head_resolution,
        "cpu_layout": cpu_layout,
        "equalized": equalize,
        "precision": precision,
        "input_size": [height, width],
        "batch_size": "dynamic" if dynamic_batch else int(batch_size),
        "opset": OPSET,
        "torch_version": torch.__version__,
        "exporter": exporter,
        **(extra_export_info or {}),
    }
    started = time.perf_counter()
    saved = _quiet_exporter_logs()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own pytree deprecation noise while tracing; nothing a caller can act on
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            if exporter == "dynamo":
                try:
                    proto = _to_proto_dynamo(wrapped, example, outputs, dynamic_batch)
                except Exception as exc:  # any exporter failure: record why and use TorchScript
                    LOG.warning("dynamo ONNX export failed (%s); using dynamo=False", exc)
                    info.update(exporter="torchscript", exporter_fallback=repr(exc)[:500])
                    proto = _to_proto_torchscript(wrapped, example, outputs, dynamic_batch)
            elif exporter == "torchscript":
                proto = _to_proto_torchscript(wrapped, example, outputs, dynamic_batch)
            else:
                raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    finally:
        for logger, level in saved:
            logger.setLevel(level)
    _set_metadata(proto, meta, info)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    LOG.info(
        "exported %s (%s head, %s, %.1f s)", path, head, precision, time.perf_counter() - started
    )
    return Path(path)


def _set_metadata(proto: onnx.ModelProto, meta: dict[str, Any], info: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"{META_PREFIX}{key}", json.dumps(value)
    for key, value in sorted(info.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"{EXPORT_PREFIX}{key}", json.dumps(value)
    proto.producer_name = "dfanet"
    proto.doc_string = (
        f"DFANet {meta.get('variant', '?')} ({info['head']} head, {info['precision']})"
    )


def export_command(path: str | os.PathLike[str], checkpoint: str = "<checkpoint>") -> str:
    """The command that writes a good ONNX at ``path`` (for error messages)."""
    return (
        f"python -m dfanet_core.deploy.export --checkpoint {checkpoint} "
        f"--input-size <H> <W> --out {path}"
    )


def read_onnx_info(path: str | os.PathLike[str]) -> OnnxModelInfo:
    """Read a dfanet ONNX file's interface and metadata; raise :class:`OnnxModelError` naming the
    file and the export command if it is missing, unreadable or lacks dfanet metadata."""
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"ONNX file not found: {path}; write it with: {export_command(path)}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, truncated file, ...
        raise OnnxModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
            f"re-export it with: {export_command(path)}"
        ) from None
    meta, export = {}, {}
    for prop in proto.metadata_props:
        target = export if prop.key.startswith(EXPORT_PREFIX) else meta
        prefix = EXPORT_PREFIX if target is export else META_PREFIX
        if prop.key.startswith(prefix):
            target[prop.key[len(prefix) :]] = json.loads(prop.value)
    if "num_classes" not in meta or "head" not in export:
        raise OnnxModelError(
            f"{path} has no dfanet metadata (not written by dfanet_core.deploy.export); "
            f"re-export it with: {export_command(path)}"
        )
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    graph_input = inputs[0]
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in graph_input.type.tensor_type.shape.dim
    )
    return OnnxModelInfo(
        path=path,
        meta=meta,
        export=export,
        input_name=graph_input.name,
        input_shape=dims,
        output_names=tuple(o.name for o in proto.graph.output),
        extra_inputs=tuple(i.name for i in inputs[1:]),
    )


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    input_size: Sequence[int] | None = None,
    **kwargs: Any,
) -> Path:
    """Load a checkpoint and :func:`export_onnx` it; ``input_size`` None uses meta['input_size'].
    The checkpoint's sha256 is recorded as ``dfanet.export.checkpoint_sha256``."""
    model, meta = load_checkpoint(checkpoint)
    size = tuple(input_size) if input_size is not None else tuple(meta["input_size"])
    extra = {"checkpoint_sha256": sha256_file(checkpoint), **kwargs.pop("extra_export_info", {})}
    return export_onnx(model, path, meta=meta, input_size=size, extra_export_info=extra, **kwargs)


def cached_onnx_export(
    checkpoint: str | os.PathLike[str],
    input_size: tuple[int, int],
    max_batch_size: int,
    precision: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    head_resolution: str = "full",
    min_confidence_input: bool = False,
    cpu_layout: bool = False,
) -> Path:
    """The checkpoint's classes-head ONNX (with confidence) for this input size, batch,
    precision, head resolution, threshold input and CPU layout: reused from ``cache_dir`` when
    present and readable, else exported there atomically. The file name is the cache key:
    checkpoint sha256, H x W, batch (1 or dynamic), precision, head resolution, ``-t`` for the
    ``min_confidence`` input, ``-c`` for the CPU layout, and the export format version."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir("onnx")
    digest = sha256_file(checkpoint)[:16]
    batch = "b1" if max_batch_size == 1 else "bdyn"
    flags = ("-t" if min_confidence_input else "") + ("-c" if cpu_layout else "")
    name = (
        f"dfanet-{digest}-{input_size[0]}x{input_size[1]}-{batch}-{precision}"
        f"-classes-{head_resolution}{flags}-v{EXPORT_FORMAT_VERSION}.onnx"
    )
    path = folder / name
    if path.is_file():
        try:
            read_onnx_info(path)
        except OnnxModelError as exc:
            LOG.warning("re-exporting: %s", exc)
        else:
            LOG.debug("reusing ONNX export %s", path)
            return path
    LOG.info("exporting %s to %s (first use of this checkpoint/size)", checkpoint, path)
    return export_checkpoint(
        checkpoint,
        path,
        input_size=input_size,
        dynamic_batch=max_batch_size > 1,
        head="classes",
        confidence=True,
        precision=precision,
        head_resolution=head_resolution,
        min_confidence_input=min_confidence_input,
        cpu_layout=cpu_layout,
    )


#: RuntimeOptions.ort_optimization -> onnxruntime.GraphOptimizationLevel member.
ORT_OPTIMIZATION_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
}


def onnxruntime_session(
    path: str | os.PathLike[str],
    intra_op_threads: int | None = None,
    *,
    optimization: str = "all",
    spinning: bool | None = None,
):
    """An ONNX Runtime CPU session: ``optimization`` 'all' (default: adds the blocked NCHWc
    layout), 'extended' or 'basic'; ``spinning`` True/False sets whether idle worker threads
    busy-wait (None: the library default, on). Raises ImportError naming the package if
    onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            f"the onnxruntime backend needs onnxruntime (`pip install onnxruntime`): {exc}"
        ) from None
    if optimization not in ORT_OPTIMIZATION_LEVELS:
        raise ValueError(
            f"ort_optimization must be one of {tuple(ORT_OPTIMIZATION_LEVELS)}, got "
            f"{optimization!r}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, ORT_OPTIMIZATION_LEVELS[optimization]
    )
    options.log_severity_level = 3
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    if spinning is not None:
        value = "1" if spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", value)
        options.add_session_config_entry("session.inter_op.allow_spinning", value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    onnx_path: str | os.PathLike[str],
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    intra_op_threads: int | None = None,
) -> ParityReport:
    """Run ONNX Runtime and PyTorch fp32 on the same images (RGB uint8, resized to the export's
    input size and normalized with its meta) and compare: max |logit diff| and argmax agreement for
    the logits head; class-id agreement and max |confidence diff| for the classes head (against
    PyTorch's logits at the head's resolution)."""
    info = read_onnx_info(onnx_path)
    if not images:
        raise ValueError("check_parity needs at least one image")
    session = onnxruntime_session(onnx_path, intra_op_threads)
    model = model.float().eval()
    diffs, agree, conf_diff, pixels = [], 0, 0.0, 0
    for image in images:
        place = plan_placement(image.shape[:2], info.input_size, "stretch")
        batch = preprocess_numpy(
            [image], [place], info.input_size, info.meta["mean"], info.meta["std"]
        )
        if not info.dynamic_batch and int(info.input_shape[0]) > 1:
            batch = np.repeat(batch, int(info.input_shape[0]), axis=0)
        feed = {info.input_name: batch}
        if info.has_min_confidence_input:
            feed[MIN_CONFIDENCE_INPUT] = np.zeros(1, np.float32)
        outputs = dict(zip(info.output_names, session.run(None, feed)))
        resolution = str(info.export.get("head_resolution", "full"))
        with torch.no_grad():
            reference = head_logits(model, torch.from_numpy(batch[:1]), resolution).numpy()
        ref_ids = reference.argmax(axis=1)
        if info.export["head"] == "logits":
            logits = outputs["logits"][:1]
            diffs.append(float(np.abs(logits - reference).max()))
            agree += int((logits.argmax(axis=1) == ref_ids).sum())
        else:
            agree += int((outputs["class_ids"][:1] == ref_ids).sum())
            if "confidence" in outputs:
                shifted = np.exp(reference - reference.max(axis=1, keepdims=True))
                ref_conf = 1.0 / shifted.sum(axis=1)
                conf_diff = max(
                    conf_diff, float(np.abs(outputs["confidence"][:1] - ref_conf).max())
                )
        pixels += ref_ids.size
    return ParityReport(
        images=len(images),
        head=info.export["head"],
        max_abs_diff=max(diffs) if diffs else conf_diff,
        argmax_agreement=agree / pixels,
        details={"max_confidence_diff": conf_diff} if info.export["head"] == "classes" else {},
    )


def _load_parity_images(folder: Path, count: int) -> list[np.ndarray]:
    from ..files import list_images
    from ..imaging import read_image

    return [read_image(p) for p in list_images(folder, limit=count)]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dfanet_core.deploy.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="dfanet .safetensors")
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="network input size (default: the checkpoint's meta input_size)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output .onnx file")
    parser.add_argument("--batch-size", type=int, default=1, help="static batch (default 1)")
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    parser.add_argument(
        "--head",
        choices=HEADS,
        default="logits",
        help="logits (plain model) or classes (argmax + confidence in the graph)",
    )
    parser.add_argument(
        "--no-confidence", action="store_true", help="classes head without the confidence output"
    )
    parser.add_argument(
        "--head-resolution",
        choices=HEAD_RESOLUTIONS,
        default="full",
        help="classes head: where the argmax runs (full: input size, exact; x2: the decoder's "
        "1/4 logits upsampled x2, RuntimeOptions head='fast'; decoder: at 1/4)",
    )
    parser.add_argument(
        "--min-confidence-input",
        action="store_true",
        help="classes head: add the min_confidence threshold input (pixels below it -> 255); "
        "ONNX Runtime only (the TensorRT builder takes one input)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="compute precision baked into the graph (fp16: for TensorRT for RTX)",
    )
    parser.add_argument(
        "--cpu-layout",
        action="store_true",
        help="shape the graph for ONNX Runtime's blocked CPU layout (same outputs; see "
        "dfanet_core.deploy.cpu_layout)",
    )
    parser.add_argument(
        "--equalize",
        action="store_true",
        help="cross-layer range equalisation (same outputs; for INT8 builds such as TensorRT "
        "--precision int8)",
    )
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument(
        "--parity-images",
        type=Path,
        help="folder of real images for the ONNX Runtime parity check",
    )
    parser.add_argument("--parity-count", type=int, default=4)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = export_checkpoint(
            args.checkpoint,
            args.out,
            input_size=args.input_size,
            batch_size=args.batch_size,
            dynamic_batch=args.dynamic_batch,
            head=args.head,
            confidence=not args.no_confidence,
            precision=args.precision,
            head_resolution=args.head_resolution,
            min_confidence_input=args.min_confidence_input,
            cpu_layout=args.cpu_layout,
            equalize=args.equalize,
            exporter=args.exporter,
        )
        info = read_onnx_info(path)
        LOG.info(
            "%s: input %s %s, outputs %s, exporter %s",
            path,
            info.input_name,
            info.input_shape,
            list(info.output_names),
            info.export["exporter"],
        )
        if args.parity_images is None:
            LOG.warning("no --parity-images: skipped the ONNX Runtime parity check")
            return 0
        if args.precision != "fp32":
            LOG.warning("parity is checked for fp32 exports only; skipped")
            return 0
        model, _ = load_checkpoint(args.checkpoint)
        report = check_parity(
            path, model, _load_parity_images(args.parity_images, args.parity_count)
        )
    except (CheckpointError, OnnxModelError, FileNotFoundError, ValueError) as exc:
        LOG.error("%s", exc)
        return 2
    LOG.info(
        "parity on %d images: max |diff| %.3g, argmax agreement %.5f -> %s",
        report.images,
        report.max_abs_diff,
        report.argmax_agreement,
        "PASS" if report.passed else "FAIL",
    )
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
