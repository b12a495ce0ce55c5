"""Atomic file writes, content hashes and cache folders for export, engine and benchmark code.

Every file that a later run trusts (ONNX exports, engines and their sidecars, timing and
calibration
caches, reports) is written to a temporary file in the destination folder and renamed over the
target,
so a killed process leaves the old file or none, never a half-written one that later loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..imaging import atomic_write_bytes

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "default_cache_dir",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    For writers that want a file name rather than bytes (``torch.onnx.export``, ``onnx.save``). On
    an
    exception the temporary file is removed; a killed process leaves only a ``.<name>.*.tmp`` file,
    which nothing loads.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
