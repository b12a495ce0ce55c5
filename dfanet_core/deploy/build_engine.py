"""Build (or refresh) a TensorRT engine from a dfanet ONNX, offline, with progress and timing.

    python -m dfanet_core.deploy.build_engine --onnx model.onnx --precision fp16 \
        [--out model.fp16.engine] [--workspace-mib 2048] [--max-batch-size 4] \
        [--timing-cache timing.cache] [--calibration-images DIR|list.txt] [--force]

The engine is reused when its sidecar key (ONNX sha256, TensorRT version, GPU, precision, input
shape, workspace) matches; ``--force`` rebuilds anyway. Exit codes: 0 ok, 2 bad input or build
error,
3 TensorRT not installed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .tensorrt.api import TensorRTUnavailableError, load_tensorrt
from .tensorrt.builder import (
    PRECISIONS,
    BuildOptions,
    EngineBuildError,
    resolve_calibration_images,
)
from .tensorrt.cache import get_or_build_engine

LOG = logging.getLogger("dfanet_core.deploy.build_engine")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dfanet_core.deploy.build_engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--onnx", required=True, type=Path, help="input ONNX file")
    parser.add_argument(
        "--out", type=Path, help="engine file (default: <onnx>.<precision>.engine)"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--workspace-mib", type=int, default=2048, help="builder workspace limit")
    parser.add_argument(
        "--max-batch-size", type=int, default=1, help="profile max batch for a dynamic-batch ONNX"
    )
    parser.add_argument("--opt-batch-size", type=int, help="profile opt batch (default: max)")
    parser.add_argument(
        "--timing-cache",
        type=Path,
        help="timing cache file, read and updated (default: beside the engine)",
    )
    parser.add_argument("--no-timing-cache", action="store_true")
    parser.add_argument(
        "--calibration-images",
        type=Path,
        help="INT8: folder of images or .txt list of image paths",
    )
    parser.add_argument(
        "--calibration-cache",
        type=Path,
        help="INT8 calibration cache (default: beside the engine)",
    )
    parser.add_argument("--calibration-max-images", type=int, default=256)
    parser.add_argument("--optimization-level", type=int, help="builder optimization level 0-5")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 layers")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def options_from_args(args: argparse.Namespace, engine_path: Path) -> BuildOptions:
    timing = (
        None
        if args.no_timing_cache
        else (args.timing_cache or engine_path.with_name("timing.cache"))
    )
    images = (
        resolve_calibration_images(args.calibration_images) if args.calibration_images else None
    )
    calibration_cache = None
    if args.precision == "int8":
        calibration_cache = args.calibration_cache or engine_path.with_suffix(".calibration.cache")
    return BuildOptions(
        precision=args.precision,
        workspace_mib=args.workspace_mib,
        max_batch_size=args.max_batch_size,
        opt_batch_size=args.opt_batch_size,
        timing_cache=timing,
        calibration_images=images,
        calibration_cache=calibration_cache,
        calibration_max_images=args.calibration_max_images,
        builder_optimization_level=args.optimization_level,
        tf32=args.tf32,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    engine_path = args.out or args.onnx.with_name(f"{args.onnx.stem}.{args.precision}.engine")
    started = time.perf_counter()
    try:
        info = load_tensorrt()
        LOG.info("using %s", info.version_string)
        options = options_from_args(args, engine_path)
        data, built = get_or_build_engine(
            args.onnx, engine_path, options, force=args.force, progress=not args.quiet, info=info
        )
    except TensorRTUnavailableError as exc:
        LOG.error("%s", exc)
        return 3
    except (EngineBuildError, FileNotFoundError, ValueError, RuntimeError) as exc:
        LOG.error("%s", exc)
        return 2
    LOG.info(
        "%s %s (%.1f MB) in %.1f s",
        "built" if built else "reused (cache key matches)",
        engine_path,
        len(data) / 1e6,
        time.perf_counter() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
