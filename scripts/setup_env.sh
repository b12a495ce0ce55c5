#!/usr/bin/env bash
# Create or update the project virtualenv at .venv/ with the pinned requirements.
# Idempotent: reinstalls only when requirements.txt or setup.py changed. Used by the quick-start
# scripts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "dfanet needs Python >= 3.10 (3.11 recommended); found: $("$PY" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian/Ubuntu ship venv separately; install it when we are allowed to.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      apt-get update -qq && apt-get install -y -qq "python${ver}-venv" || apt-get install -y -qq python3-venv
      rm -rf "$VENV"; "$PY" -m venv "$VENV"
    else
      echo "cannot create a virtualenv: install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
STAMP="$VENV/.requirements.sha256"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[setup] installing pinned requirements into $VENV (first run: ~2 minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt"
  # The project itself, editable: console scripts (segment_node, dfanet-bag-eval, ...) and
  # `python -m dfanet_core...` / `python training/train.py` work from any directory.
  if ! "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" >"$VENV/.editable.log" 2>&1; then
    cat "$VENV/.editable.log" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
# vision_msgs (LabelInfo, VisionClass) is not on PyPI: generate it into the venv. A no-op when
# up to date or when a ROS 2 install already provides it (scripts/build_vision_msgs.sh).
bash "$ROOT/scripts/build_vision_msgs.sh" "$VENV"
