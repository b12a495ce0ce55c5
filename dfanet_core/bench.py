"""Moved: the backend latency benchmark is ``bench/backend_latency.py`` (benchmarks live in
``bench/``). ``python -m dfanet_core.bench ARGS`` still runs it, from a source checkout."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

from .paths import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "backend_latency.py"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bench/backend_latency.py`` with ``argv`` (default: this command's arguments)."""
    if not SCRIPT.is_file():
        sys.stderr.write(f"the benchmark lives in a source checkout ({SCRIPT} not found)\n")
        return 2
    sys.argv = [str(SCRIPT), *(sys.argv[1:] if argv is None else argv)]
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
