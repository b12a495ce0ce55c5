#!/usr/bin/env bash
# Generate vision_msgs (LabelInfo, VisionClass; third_party/vision_msgs) with the PyPI ROS 2
# toolchain and install it into a virtualenv, so that `from vision_msgs.msg import LabelInfo`
# works without a ROS install.
#
#   scripts/build_vision_msgs.sh [VENV]     (default: <repo>/.venv)
#
# Idempotent and quiet: does nothing when the installed build matches the sources (a sha256 stamp
# of the message package, this script, the Python version and the ROS runtime wheels), or when
# vision_msgs already imports from outside VENV (a sourced ROS 2 install). Otherwise it installs
# the pinned build toolchain (third_party/vision_msgs/requirements-build.txt) into VENV,
# configures with CMake and the system C/C++ compiler, and installs into VENV itself (its lib/ is
# on the ROS wheels' library path). Build tree and log: VENV/build/vision_msgs/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$ROOT/scripts/build_vision_msgs.sh"
SRC="$ROOT/third_party/vision_msgs"
VENV_ARG="${1:-$ROOT/.venv}"
say() { echo "[vision_msgs] $*"; }
fail() { echo "[vision_msgs] error: $*" >&2; exit 1; }

[ -x "$VENV_ARG/bin/python" ] || fail "no virtualenv at $VENV_ARG (expected $VENV_ARG/bin/python)"
VENV="$(cd "$VENV_ARG" && pwd -P)"
PY="$VENV/bin/python"
# -I: ignore PYTHONPATH (a sourced ROS install) and the current directory
SITE="$("$PY" -I -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
STAMP="$VENV/.vision_msgs.sha256"
BUILD="$VENV/build/vision_msgs"

want_stamp() {
  {
    (cd "$SRC" && sha256sum CMakeLists.txt package.xml requirements-build.txt msg/*.msg)
    sha256sum < "$SCRIPT"
    "$PY" -I -c 'import sys; print(sys.version)'
    # the ROS runtime wheels the generated code is compiled against (name-version folders)
    (cd "$SITE" && ls -d ros_std_msgs-* ros_builtin_interfaces-* ros_rosidl_runtime_c-* \
      ros_rosidl_generator_py-* ros_rosidl_typesupport_*-* ros_rmw-* ros_fastcdr-* 2>/dev/null \
      || true)
  } | sha256sum | cut -d' ' -f1
}

up_to_date() {
  [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] && [ -f "$SITE/vision_msgs/msg/_label_info.py" ]
}

WANT="$(want_stamp)"
up_to_date && exit 0

# A ROS 2 install that provides vision_msgs (e.g. /opt/ros/kilted sourced): use it, build nothing.
if where="$(cd / && "$PY" -c 'import os, vision_msgs.msg as m
from vision_msgs.msg import LabelInfo, VisionClass
print(os.path.realpath(m.__file__))' 2>/dev/null)"; then
  case "$where" in
    "$VENV"/*) ;;  # our own earlier build: rebuild below
    *) exit 0 ;;
  esac
fi

# One build at a time per virtualenv (parallel set-ups wait, then find it done).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VENV/.vision_msgs.lock"
  flock 9
  up_to_date && exit 0
fi

# Everything the build needs from the system, named when absent.
missing=() apt=()
need() {  # need COMMAND DESCRIPTION DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 || { missing+=("$2"); apt+=("$3"); }
}
need cmake "cmake" cmake
need g++ "g++ (C++ compiler)" g++
need gcc "gcc (C compiler)" gcc
need make "make" make
pyinc="$("$PY" -I -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if [ ! -f "$pyinc/Python.h" ]; then
  pyver="$("$PY" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  missing+=("the Python headers (no $pyinc/Python.h)")
  apt+=("python${pyver}-dev")
fi
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # As root on Debian/Ubuntu (a fresh machine, CI): install them, as setup_env.sh does for venv.
  say "installing build tools: ${apt[*]}"
  if apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${apt[@]}" >/dev/null 2>&1
  then
    missing=() apt=()
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  {
    echo "[vision_msgs] error: cannot generate vision_msgs (LabelInfo, VisionClass) into $VENV:"
    printf '  missing: %s\n' "${missing[@]}"
    echo "  install them (Debian/Ubuntu: sudo apt-get install ${apt[*]}) and run again,"
    echo "  or source a ROS 2 install that provides vision_msgs (then nothing is built)"
  } >&2
  exit 1
fi
"$PY" -I -c 'import numpy' 2>/dev/null \
  || fail "numpy is not installed in $VENV (pip install -r requirements.txt first)"

say "generating LabelInfo, VisionClass into $VENV (first run: ~30 s)"
start=$SECONDS
# Remove what an earlier build installed (its manifest), then build from scratch.
# Directories left empty go too: an empty *.egg-info folder would break pip.
if [ -f "$BUILD/install_manifest.txt" ]; then
  while IFS= read -r installed; do
    case "$installed" in
      "$VENV"/*)
        rm -f -- "$installed"
        dir="$(dirname -- "$installed")"
        while [ "$dir" != "$VENV" ] && rmdir -- "$dir" 2>/dev/null; do
          dir="$(dirname -- "$dir")"
        done
        ;;
    esac
  done < "$BUILD/install_manifest.txt"
fi
rm -f "$STAMP"
rm -rf "$BUILD" "$VENV/share/vision_msgs" "$SITE/vision_msgs" "$SITE"/vision_msgs-*.egg-info
mkdir -p "$BUILD"
LOG="$BUILD/build.log"

run() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[vision_msgs] error: failed: $*" >&2
    echo "---- last lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

run "$PY" -m pip install --disable-pip-version-check -r "$SRC/requirements-build.txt"
# Only VENV's ROS: a sourced ROS install (without vision_msgs) must not mix into the build.
unset PYTHONPATH
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
export LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
run cmake -S "$SRC" -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_TESTING=OFF \
  -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DPython3_EXECUTABLE="$PY"
run cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)"
run cmake --install "$BUILD"

# The proof: it imports from VENV in a fresh interpreter.
where="$(cd / && "$PY" -c 'import os, vision_msgs.msg as m
from vision_msgs.msg import LabelInfo, VisionClass
print(os.path.realpath(m.__file__))' 2>>"$LOG")" \
  || { tail -n 20 "$LOG" >&2; fail "built, but vision_msgs does not import (log: $LOG)"; }
case "$where" in
  "$VENV"/*) ;;
  *) fail "built into $VENV, but Python imports vision_msgs from $where" ;;
esac
echo "$WANT" > "$STAMP"
say "done in $((SECONDS - start)) s"
