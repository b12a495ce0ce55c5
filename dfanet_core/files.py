"""Files: atomic writes, content hashes, cache folders, image listing and where the weights are.

Every file a later run trusts (checkpoints, ONNX exports, engines and their sidecars, timing and
calibration caches, reports, images) is written to a temporary file in the destination folder and
renamed over the target, so a killed process leaves the old file or none, never a half-written
one that later loads.

Default weights are looked up where an install puts them first (the ament share directory
``share/dfanet_ros/weights``, which ``colcon build`` fills from ``setup.py``'s ``data_files``),
then in the source tree's ``weights/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT

PACKAGE = "dfanet_ros"  # the ament package whose share directory holds the weights
WEIGHTS_SUFFIX = ".safetensors"
#: Image files every tool accepts (folders of frames, calibration images, datasets).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
_CHUNK = 1 << 20

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "default_cache_dir",
    "default_checkpoint",
    "list_images",
    "resolve_checkpoint",
    "sha256_bytes",
    "sha256_file",
    "weights_dirs",
]


# -- atomic writes ------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    For writers that want a file name rather than bytes (``onnx.save``, OpenCV's video writer,
    which picks the container from ``suffix``). On an exception the temporary file is removed; a
    killed process leaves only a hidden ``.<name>.*<suffix>`` file, which nothing loads. The
    result gets the permissions a plain ``open()`` would give it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)  # mkstemp creates 0600 files
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = True) -> Path:
    """Write ``obj`` as indented JSON (keys sorted unless told not to) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


# -- hashes and caches --------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def default_cache_dir(kind: str) -> Path:
    """Cache folder for ``kind`` ('onnx', 'engines'): ``$DFANET_CACHE_DIR/<kind>``, else
    ``$XDG_CACHE_HOME/dfanet/<kind>``, else ``~/.cache/dfanet/<kind>``."""
    root = os.environ.get("DFANET_CACHE_DIR")
    if root:
        return Path(root) / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dfanet" / kind


# -- image folders ------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike[str], suffixes: Sequence[str] = IMAGE_SUFFIXES,
                limit: int | None = None) -> list[Path]:
    """Image files of ``folder`` in name order (at most ``limit``); FileNotFoundError when the
    folder does not exist, ValueError when it holds no image."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"image folder {path} holds no images ({', '.join(suffixes)})")
    return files[:limit] if limit is not None else files


# -- weights ------------------------------------------------------------------------------------
def weights_dirs() -> list[Path]:
    """Where shipped weights may live, in lookup order: the ament share directory
    (``ament_index_python`` when it knows the package, else ``<prefix>/share/dfanet_ros/weights``
    of the install prefix this package was imported from), then the source tree's ``weights/``.
    Only existing folders are listed."""
    candidates: list[Path] = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "weights")
    except (ImportError, LookupError, OSError, ValueError):
        pass  # no ROS install, AMENT_PREFIX_PATH unset, or the package not in the index
    package_dir = Path(__file__).resolve().parent
    # <prefix>/lib/pythonX.Y/site-packages/dfanet_core -> <prefix>; sys.prefix for venv installs
    for prefix in (*package_dir.parents[2:5], Path(sys.prefix)):
        candidates.append(prefix / "share" / PACKAGE / "weights")
    candidates.append(REPO_ROOT / "weights")
    seen: list[Path] = []
    for folder in candidates:
        if folder.is_dir() and folder.resolve() not in [s.resolve() for s in seen]:
            seen.append(folder)
    return seen


def default_checkpoint() -> Path | None:
    """The shipped trained weights (``*.safetensors`` of the first folder of :func:`weights_dirs`
    that holds any, last name first), or None."""
    for folder in weights_dirs():
        candidates = sorted(folder.glob(f"*{WEIGHTS_SUFFIX}"))
        if candidates:
            return candidates[-1]
    return None


def resolve_checkpoint(given: str | os.PathLike[str] | None) -> Path:
    """``given`` when set (FileNotFoundError if it is not a file), else the shipped weights
    (FileNotFoundError naming the folders searched when there are none)."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"file not found: {path}")
        return path
    shipped = default_checkpoint()
    if shipped is None:
        searched = ", ".join(map(str, weights_dirs())) or f"share/{PACKAGE}/weights, weights/"
        raise FileNotFoundError(
            f"no checkpoint given and no shipped weights found (searched: {searched}); "
            "pass a checkpoint (.safetensors)"
        )
    return shipped
