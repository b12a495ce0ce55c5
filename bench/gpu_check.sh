#!/usr/bin/env bash
# One-call GPU check for a lent H100/H200 machine (Python 3.12, torch CUDA, onnxruntime, no
# TensorRT, no network, only the repository copied over). Under 9 minutes (every step is cut to
# end by $GPU_CHECK_DEADLINE, default: 8.5 minutes after the start). Writes to $OUT:
#   env.json parity.json gpu_bench.json gpu_compile.json gpu_tests.txt gpu_tests.xml
#   gpu_check.md gpu_check.log
#
# Usage (on the GPU machine, from the repository root):
#   DFANET_GPU_IMAGES=gpu_payload/camvid bash bench/gpu_check.sh     # or: bash bench/gpu_check.sh DIR
#
# CamVid is not in the repository and ../shared does not exist there, so the caller carries a few
# images. Before the call, on the development machine (gpu_payload/ is gitignored: never committed):
#   bash bench/gpu_check.sh pack [gpu_payload/camvid] [8]
# and pass "gpu_payload/camvid" in the run tool's `carry` list.
#
# Steps (each time-boxed; a failing step is recorded and the next one still runs):
#   1. env      python/torch/CUDA/GPU, which modules import (tensorrt, onnxruntime, ...)
#   2. parity   torch CUDA fp32, fp16, fp16+CUDA graphs, letterbox vs CPU fp32 masks (>= 99.5 %)
#   3. bench    dfanet_a/dfanet_b at 1024x1024 and 512x1024, batch 1 and 4: torch CUDA fp32
#               (baseline), fp16, fp16 + CUDA graphs, TensorRT fp16 when it imports and runs here
#   4. compile  bench/gpu_compile.py: torch.compile (inductor) modes vs eager and CUDA graphs,
#               fp16: kernels per frame (torch.profiler), A 1024x1024 batch 1 latency, B
#               512x1024 batch 4 frames/s, compile seconds (raw rows in gpu_compile.json)
#   5. tests    pytest -m gpu (GPU-marked tests of every area)
#   6. report   gpu_check.md
# GPU_CHECK_DEADLINE=<epoch seconds> cuts (or skips) every step to end before it.
set -u -o pipefail

cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == "pack" ]]; then
    dest=${2:-gpu_payload/camvid}
    count=${3:-8}
    src=${DFANET_SHARED_DIR:-$REPO_ROOT/../shared}/data/camvid
    mkdir -p "$dest/test" "$dest/testannot"
    for image in $(ls "$src/test" | sort | head -n "$count"); do
        cp "$src/test/$image" "$dest/test/" && cp "$src/testannot/$image" "$dest/testannot/"
    done
    echo "packed $(ls "$dest/test" | wc -l) CamVid test images (+labels) into $dest;" \
         "carry it with the run call (it must stay gitignored)"
    exit 0
fi

IMAGES=${1:-${DFANET_GPU_IMAGES:-gpu_payload/camvid}}
OUT=${OUT:-$REPO_ROOT/gpu_payload/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
started=$(date +%s)
echo "== dfanet GPU check: $(date -u +%FT%TZ), images: $IMAGES, out: $OUT"

if [[ ! -d "$IMAGES" ]]; then
    echo "ERROR: image folder $IMAGES not found: pack it with 'bash bench/gpu_check.sh pack'" \
         "and carry it"
    exit 2
fi

# The conftest reads CamVid from $DFANET_SHARED_DIR/data/camvid/{train,test,testannot}: lay the
# carried images out that way (train is only checked for existence).
SHARED=$(mktemp -d)
mkdir -p "$SHARED/data/camvid"
if [[ -d "$IMAGES/test" ]]; then
    ln -s "$(cd "$IMAGES" && pwd)/test" "$SHARED/data/camvid/test"
    ln -s "$(cd "$IMAGES" && pwd)/testannot" "$SHARED/data/camvid/testannot"
else
    ln -s "$(cd "$IMAGES" && pwd)" "$SHARED/data/camvid/test"
fi
ln -s "$SHARED/data/camvid/test" "$SHARED/data/camvid/train"
export DFANET_SHARED_DIR="$SHARED"
export DFANET_CACHE_DIR="$(mktemp -d)"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

# GPU_CHECK_DEADLINE (epoch seconds): no step runs past it, so the check fits a device call
# (at most ~9 minutes) or what is left of one that trained first (training/gpu_train.sh).
DEADLINE=${GPU_CHECK_DEADLINE:-$(( started + 510 ))}

run_step() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    if (( DEADLINE > 0 )); then
        local left=$(( DEADLINE - t0 - 12 ))
        if (( left < 10 )); then
            echo "== [$name] skipped: the call's deadline is ${left}s away"
            FAILED+=("$name(skipped)")
            return 0
        fi
        (( left < limit )) && limit=$left
    fi
    echo "== [$name] (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== [$name] rc=$rc in $(( $(date +%s) - t0 ))s"
    [[ $rc -eq 0 ]] || FAILED+=("$name(rc=$rc)")
    return 0
}
FAILED=()

run_step env 45 "$PYTHON" bench/gpu_check.py env --out "$OUT"
run_step parity 100 "$PYTHON" bench/gpu_check.py parity --out "$OUT" --images "$IMAGES"
run_step bench 120 "$PYTHON" bench/backend_latency.py \
    --variants dfanet_a dfanet_b --sizes 1024x1024 512x1024 --batches 1 4 \
    --backends torch-cuda torch-fp16 torch-fp16-graphs tensorrt-fp16 --baseline torch-cuda \
    --warmup 5 --min-iters 20 --max-iters 200 --budget-s 2 --settle-ms 0 \
    --json "$OUT/gpu_bench.json"
# Compilation leaves 100 s for the tests and the report; gpu_compile.py skips a configuration
# that cannot finish before its own --deadline and writes its JSON after every row.
run_step compile 270 "$PYTHON" bench/gpu_compile.py --out "$OUT" --precision fp16 \
    --cases dfanet_a:1024x1024:1 dfanet_b:512x1024:4 \
    --configs eager graphs reduce-overhead max-autotune-no-cudagraphs \
    --images "$IMAGES" --deadline $(( DEADLINE - 100 ))
# The ROS and bag test modules import rclpy/rosbags (absent on the GPU image) and hold no GPU
# tests: leave them out rather than report collection errors.
run_step tests 90 "$PYTHON" -m pytest -m "gpu and not slow" test/ -q -rs -p no:cacheprovider \
    --ignore-glob 'test/test_ros_*' --ignore-glob 'test/test_bag_*' \
    --continue-on-collection-errors --junitxml "$OUT/gpu_tests.xml" \
    -o "junit_family=xunit2" > "$OUT/gpu_tests.txt" 2>&1
tail -n 25 "$OUT/gpu_tests.txt"
run_step report 20 "$PYTHON" bench/gpu_check.py report --out "$OUT" > /dev/null

rm -rf "$SHARED" "$DFANET_CACHE_DIR"
echo "== done in $(( $(date +%s) - started ))s; results in $OUT:"
ls -l "$OUT"
if (( ${#FAILED[@]} )); then
    echo "== steps that failed or timed out: ${FAILED[*]} (see gpu_check.log)"
    exit 1
fi
