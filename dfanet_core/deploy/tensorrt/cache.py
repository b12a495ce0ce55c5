"""Engine cache: a built engine is reused only when everything that shaped it still matches.

Each engine ``X.engine`` has a sidecar ``X.engine.json`` holding its :class:`EngineKey` (ONNX
sha256,
TensorRT module and version, GPU name and compute capability, precision, input profile, workspace,
INT8 calibration fingerprint, format version) and the engine file's own sha256. Loading compares
the
recorded key with the one computed now and the engine bytes with the recorded hash: any difference
rebuilds (with the reason logged). The engine is written first, the sidecar last, both atomically,
so
a build killed at any point leaves no engine/sidecar pair that validates.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...files import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from .api import TensorRTInfo, load_tensorrt
from .builder import BuildOptions, BuildResult, build_engine, input_profile, load_onnx_model

LOG = logging.getLogger(__name__)

#: Bumped when the sidecar layout or the build recipe changes (invalidates every cached engine).
CACHE_FORMAT_VERSION = 1


class EngineFileError(RuntimeError):
    """An engine file that is missing, corrupt or stale; the message names the file and the command
    that rebuilds it."""


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two keys equal <=> the engine can be reused."""

    onnx_sha256: str
    tensorrt: str
    gpu_name: str | None
    compute_capability: str | None
    precision: str
    input_profile: dict[str, Any]
    workspace_mib: int
    calibration: str | None = None
    format_version: int = CACHE_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """Human-readable fields that differ from a recorded key (empty: reusable)."""
        now = self.to_dict()
        return [
            f"{name}: {recorded.get(name)!r} -> {now[name]!r}"
            for name in now
            if _jsonable(recorded.get(name)) != _jsonable(now[name])
        ]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def current_gpu(device_index: int | None = None) -> tuple[str | None, str | None]:
    """(GPU name, 'major.minor') of the CUDA device engines are built for, or (None, None)."""
    try:
        import torch
    except ImportError:
        return None, None
    if not torch.cuda.is_available():
        return None, None
    index = torch.cuda.current_device() if device_index is None else device_index
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def compute_key(
    onnx_path: str | os.PathLike[str],
    options: BuildOptions,
    *,
    info: TensorRTInfo | None = None,
    device_index: int | None = None,
) -> EngineKey:
    """The key an engine built now from ``onnx_path`` with ``options`` would have."""
    info = info or load_tensorrt()
    path = Path(onnx_path)
    profile = input_profile(load_onnx_model(path), options)
    gpu_name, capability = current_gpu(device_index)
    return EngineKey(
        onnx_sha256=sha256_file(path),
        tensorrt=info.version_string,
        gpu_name=gpu_name,
        compute_capability=capability,
        precision=options.precision,
        input_profile=profile.to_dict(),
        workspace_mib=options.workspace_mib,
        calibration=_calibration_fingerprint(options),
    )


def _calibration_fingerprint(options: BuildOptions) -> str | None:
    if options.precision != "int8":
        return None
    if options.calibration_images:
        from .calibration import images_fingerprint

        return "images:" + images_fingerprint(list(options.calibration_images))
    if options.calibration_cache and Path(options.calibration_cache).is_file():
        return "cache:" + sha256_file(options.calibration_cache)
    return None


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``X.engine`` -> ``X.engine.json``."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def build_command(
    engine_path: str | os.PathLike[str], record: dict[str, Any] | None = None
) -> str:
    """The command that (re)builds ``engine_path`` (from the sidecar record when there is one)."""
    record = record or {}
    key = record.get("key", {})
    onnx_path = record.get("onnx_path", "<model.onnx>")
    precision = key.get("precision", "fp32")
    command = (
        f"python -m dfanet_core.deploy.build_engine --onnx {onnx_path} --precision {precision} "
        f"--out {engine_path}"
    )
    profile = key.get("input_profile") or {}
    if profile and profile.get("min") != profile.get("max"):
        command += f" --max-batch-size {profile['max'][0]}"
    if key.get("workspace_mib"):
        command += f" --workspace-mib {key['workspace_mib']}"
    return command


def _read_record(engine_path: Path) -> dict[str, Any] | None:
    sidecar = sidecar_path(engine_path)
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "key" in record else None


def read_engine_file(
    engine_path: str | os.PathLike[str], expected_key: EngineKey | None = None
) -> bytes:
    """Read an engine and check it against its sidecar; raise :class:`EngineFileError` naming the
    file and the rebuild command when it is missing, corrupt, or (with ``expected_key``) stale.

    An engine without a sidecar (built elsewhere, e.g. by trtexec) is accepted with a warning
    unless
    ``expected_key`` is given."""
    path = Path(engine_path)
    record = _read_record(path)
    if not path.is_file():
        raise EngineFileError(
            f"TensorRT engine not found: {path}; build it with: {build_command(path, record)}"
        )
    data = path.read_bytes()
    if record is None:
        if expected_key is not None:
            raise EngineFileError(
                f"{path} has no valid sidecar {sidecar_path(path).name} recording how it was "
                f"built; rebuild it with: {build_command(path)}"
            )
        LOG.warning(
            "%s has no sidecar %s: its build settings cannot be checked",
            path,
            sidecar_path(path).name,
        )
        return data
    if not data or sha256_bytes(data) != record.get("engine_sha256"):
        raise EngineFileError(
            f"{path} is corrupt or incomplete (its sha256 does not match "
            f"{sidecar_path(path).name}); rebuild it with: {build_command(path, record)}"
        )
    if expected_key is not None:
        changed = expected_key.differences(record["key"])
        if changed:
            raise EngineFileError(
                f"{path} was built for other settings ({'; '.join(changed)}); "
                f"rebuild it with: {build_command(path, record)}"
            )
    return data


def write_engine(
    engine_path: str | os.PathLike[str],
    result: BuildResult,
    key: EngineKey,
    onnx_path: str | os.PathLike[str],
) -> Path:
    """Write the engine, then its sidecar, each atomically (the sidecar vouches for the engine)."""
    path = Path(engine_path)
    atomic_write_bytes(path, result.engine)
    atomic_write_json(
        sidecar_path(path),
        {
            "key": key.to_dict(),
            "engine_sha256": sha256_bytes(result.engine),
            "engine_bytes": len(result.engine),
            "onnx_path": str(Path(onnx_path).resolve()),
            "strongly_typed": result.strongly_typed,
            "build_seconds": round(result.seconds, 3),
        },
    )
    return path


def get_or_build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    *,
    force: bool = False,
    progress: bool = False,
    info: TensorRTInfo | None = None,
) -> tuple[bytes, bool]:
    """Return ``(engine bytes, built)``: the cached engine when its key matches, else a fresh build
    written to ``engine_path`` (atomically, with its sidecar). ``force`` always rebuilds."""
    info = info or load_tensorrt()
    key = compute_key(onnx_path, options, info=info)
    path = Path(engine_path)
    if not force and path.is_file():
        try:
            data = read_engine_file(path, expected_key=key)
        except EngineFileError as exc:
            LOG.info("rebuilding: %s", exc)
        else:
            LOG.info("reusing engine %s", path)
            return data, False
    result = build_engine(onnx_path, options, progress=progress, info=info)
    write_engine(path, result, key, onnx_path)
    LOG.info(
        "wrote engine %s (%.1f MB, built in %.1f s)",
        path,
        len(result.engine) / 1e6,
        result.seconds,
    )
    return result.engine, True
