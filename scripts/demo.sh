#!/usr/bin/env bash
# Quick-start command 1: set up .venv and run the main job (see README "Quick start").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export HOME="${HOME:-$ROOT}"
.venv/bin/python -m dfanet_core.profile --models dfanet_a dfanet_b --latency-runs 1
exec .venv/bin/python -m dfanet_core.segment_image "$@"
