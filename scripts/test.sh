#!/usr/bin/env bash
# Quick-start command 2: set up .venv and run the whole test suite (lint + pytest).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export HOME="${HOME:-$ROOT}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
echo "[test] ruff (ROS style: 99 columns)"
.venv/bin/ruff check .
echo "[test] pytest"
exec .venv/bin/python -m pytest "$@"
