#!/usr/bin/env bash
# Train CamVid models inside one call of a lent GPU machine (H100/H200 with torch CUDA, no
# network, only the repository copied over), several variants side by side on the one GPU.
#
#   bash training/gpu_train.sh pack [DEST] [JPEG_QUALITY]      # on the development machine
#   bash training/gpu_train.sh run DATA MINUTES OUT VARIANT...  # on the GPU machine
#
# pack: CamVid's train+val PNGs (119 MB) do not fit the 64 MiB a device call carries, so this
#   writes the images as JPEG (quality 98 by default: PSNR ~45 dB against the PNGs, ~77 kB per
#   image) and copies the label PNGs unchanged into DEST (default gpu_payload/camvid_train,
#   gitignored: CamVid is research-only data and is never committed; delete DEST after the call).
#   Test images are not packed: the test split is evaluated afterwards on the original PNGs.
# run: trains every VARIANT (dfanet_a, dfanet_b) at once with its recipe (training/recipes/
#   camvid_<a|b>.yaml: batch 48, LR 0.2, poly) plus a 100-iteration linear warm-up, bfloat16
#   autocast (float16 overflowed: NaN loss by iteration 22 on an H200) and channels_last, the
#   images cached in memory, the loader workers split between the runs, and `--max-minutes
#   MINUTES --fit-schedule` so that each poly schedule ends inside the budget. Each run's folder
#   (without the resumable checkpoint.pth and final.safetensors: a file brought back may hold at
#   most 16 MiB) is packed into OUT/train_<variant>.tgz (at most 8 files come back from a call).
#   GPU_TRAIN_ARGS="..." appends train.py flags (e.g. a tiny smoke run on a CPU); GPU_TRAIN_RUNS
#   is the folder of the run folders (default runs/, relative to the repository root).
set -u -o pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
pack)
    dest=${2:-gpu_payload/camvid_train}
    quality=${3:-98}
    src=${DFANET_SHARED_DIR:-$(pwd)/../shared}/data/camvid
    PYTHON=${PYTHON:-.venv/bin/python}
    "$PYTHON" - "$src" "$dest" "$quality" <<'EOF'
import sys
from pathlib import Path

import cv2

src, dest, quality = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
total = 0
for split in ("train", "val"):
    (dest / split).mkdir(parents=True, exist_ok=True)
    (dest / f"{split}annot").mkdir(parents=True, exist_ok=True)
    images = sorted((src / split).glob("*.png"))
    if not images:
        sys.exit(f"no CamVid images in {src / split}")
    for image in images:
        jpeg = dest / split / f"{image.stem}.jpg"
        if not cv2.imwrite(str(jpeg), cv2.imread(str(image)), [cv2.IMWRITE_JPEG_QUALITY, quality]):
            sys.exit(f"could not write {jpeg}")
        label = dest / f"{split}annot" / image.name
        label.write_bytes((src / f"{split}annot" / image.name).read_bytes())
        total += jpeg.stat().st_size + label.stat().st_size
    print(f"{split}: {len(images)} images")
print(f"packed into {dest}: {total / 2**20:.1f} MiB (JPEG quality {quality} + label PNGs)")
EOF
    ;;
run)
    if (( $# < 5 )); then
        echo "usage: $0 run DATA MINUTES OUT VARIANT..." >&2
        exit 2
    fi
    data=$2 minutes=$3 out=$4
    shift 4
    PYTHON=${PYTHON:-python3}
    export PYTHONUNBUFFERED=1
    cpus=$(nproc)
    workers=$(( (cpus - 2) / $# ))
    (( workers < 1 )) && workers=1
    runs=${GPU_TRAIN_RUNS:-runs}
    mkdir -p "$out" "$runs"
    echo "== $(date -u +%FT%TZ) training $* for $minutes min each, $workers loader workers each"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
    declare -A pids
    for variant in "$@"; do
        recipe=camvid_${variant#dfanet_}
        "$PYTHON" training/train.py --recipe "$recipe" --data-root "$data" --amp \
            --warmup-iters 100 --cache-images --workers "$workers" --iters 40000 \
            --max-minutes "$minutes" \
            --fit-schedule --eval-every 500 --ckpt-every 500 --print-freq 50 --export-fp16 \
            --output-dir "$runs/gpu_$variant" ${GPU_TRAIN_ARGS:-} \
            > "$runs/gpu_$variant.console.log" 2>&1 &
        pids[$variant]=$!
    done
    status=0
    for variant in "$@"; do
        wait "${pids[$variant]}"
        rc=$?
        (( rc )) && status=1
        echo "== $variant: rc=$rc"
        grep -E "time budget|val mIoU|done|rror" "$runs/gpu_$variant.console.log" | tail -n 8
        cp "$runs/gpu_$variant.console.log" "$runs/gpu_$variant/" 2>/dev/null
        tar czf "$out/train_$variant.tgz" --exclude checkpoint.pth --exclude final.safetensors \
            -C "$runs" "gpu_$variant"
    done
    echo "== $(date -u +%FT%TZ) training done"
    exit $status
    ;;
*)
    echo "usage: $0 pack [DEST] [JPEG_QUALITY] | run DATA MINUTES OUT VARIANT..." >&2
    exit 2
    ;;
esac
