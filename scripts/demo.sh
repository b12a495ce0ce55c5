#!/usr/bin/env bash
# Quick-start command 1: set up .venv and run the main job: the segmentation node (CPU, ONNX
# Runtime) fed by a replay of ../shared/data/bags/camvid_seq (or the bag / image folder given as
# argument); prints masks received, latency and rate, and writes overlay PNGs under outputs/demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export HOME="${HOME:-$ROOT}"
.venv/bin/python -m dfanet_core.profile --models dfanet_a dfanet_b --latency-runs 0
exec .venv/bin/python -m dfanet_ros.demo "$@"
