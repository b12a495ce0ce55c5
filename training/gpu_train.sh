#!/usr/bin/env bash
# Train CamVid models inside one call of a lent GPU machine (H100/H200 with torch CUDA, no
# network, only the repository copied over), several variants side by side on the one GPU.
#
#   bash training/gpu_train.sh pack [DEST] [JPEG_QUALITY]      # on the development machine
#   bash training/gpu_train.sh bench DATA OUT RECIPE...       # on the GPU: iterations/s
#   bash training/gpu_train.sh run DATA MINUTES OUT "LABEL=RECIPE [flags]"...  # on the GPU
#
# pack: CamVid's train+val PNGs (119 MB) do not fit the 64 MiB a device call carries, so this
#   writes the images as JPEG (quality 98 by default: PSNR ~45 dB against the PNGs, ~77 kB per
#   image) and copies the label PNGs unchanged into DEST (default gpu_payload/camvid_train,
#   gitignored: CamVid is research-only data and is never committed; delete DEST after the call).
#   Test images are not packed: the test split is evaluated afterwards on the original PNGs.
# run: trains every SPEC at once on the one GPU. A SPEC is "LABEL=RECIPE [train.py flags]", e.g.
#   "a=camvid_a_scratch" "a_ohem=camvid_a_scratch --loss ohem" "b=camvid_b_scratch".
#   Each run keeps the decoded set on the GPU and augments there (training/train.py), uses
#   `--max-minutes MINUTES --fit-schedule` (the poly schedule is shortened if the measured speed
#   says it would not end in time) and no curve evaluation (the test split is not carried;
#   evaluate the weights afterwards on the original PNGs). Each run's folder, without the
#   resumable checkpoint.pth and the fp32 weights (a file brought back may hold at most
#   16 MiB, and at most 8 files come back), is packed into OUT/train_<LABEL>.tgz.
#   GPU_TRAIN_ARGS="..." appends flags to every run (a tiny smoke run on a CPU, say);
#   GPU_TRAIN_RUNS is the folder of the run folders (default runs/).
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
bench)
    # bench DATA OUT RECIPE...: iterations/s of each recipe alone (--benchmark-steps 100; the
    # timed steps report any host synchronisation as a warning), into OUT/benchmark.txt.
    data=$2 out=$3
    shift 3
    PYTHON=${PYTHON:-python3}
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
    mkdir -p "$out"
    for recipe in "$@"; do
        echo "== $recipe" | tee -a "$out/benchmark.txt"
        # shellcheck disable=SC2086
        "$PYTHON" training/train.py --recipe $recipe --data-root "$data" --eval-split "" \
            --benchmark-steps ${GPU_BENCH_STEPS:-100} ${GPU_TRAIN_ARGS:-} 2>&1 \
            | grep -vE "^\s*$" | tail -n 12 | tee -a "$out/benchmark.txt"
    done
    ;;
run)
    if (( $# < 5 )); then
        echo "usage: $0 run DATA MINUTES OUT \"LABEL=RECIPE [flags]\"..." >&2
        exit 2
    fi
    data=$2 minutes=$3 out=$4
    shift 4
    PYTHON=${PYTHON:-python3}
    export PYTHONUNBUFFERED=1
    # The GPU machine gets a bare copy of the tree (no editable install): import from it.
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
    runs=${GPU_TRAIN_RUNS:-runs}
    mkdir -p "$out" "$runs"
    echo "== $(date -u +%FT%TZ) training $# run(s) side by side for $minutes min each"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
    declare -A pids
    labels=()
    for spec in "$@"; do
        label=${spec%%=*}
        read -r -a words <<< "${spec#*=}"
        labels+=("$label")
        # shellcheck disable=SC2086
        "$PYTHON" training/train.py --recipe "${words[@]}" --data-root "$data" \
            --max-minutes "$minutes" --fit-schedule --eval-split "" --export-fp16 \
            --output-dir "$runs/gpu_$label" ${GPU_TRAIN_ARGS:-} \
            > "$runs/gpu_$label.console.log" 2>&1 &
        pids[$label]=$!
    done
    status=0
    for label in "${labels[@]}"; do
        wait "${pids[$label]}"
        rc=$?
        (( rc )) && status=1
        echo "== $label: rc=$rc"
        grep -E "time budget|stage|completed|rror" "$runs/gpu_$label.console.log" | tail -n 8
        cp "$runs/gpu_$label.console.log" "$runs/gpu_$label/" 2>/dev/null
        tar czf "$out/train_$label.tgz" --exclude checkpoint.pth --exclude final.safetensors \
            --exclude ema.safetensors -C "$runs" "gpu_$label"
    done
    echo "== $(date -u +%FT%TZ) training done"
    exit $status
    ;;
*)
    echo "usage: $0 pack [DEST] [JPEG_QUALITY] | bench DATA OUT RECIPE... |" \
         "run DATA MINUTES OUT \"LABEL=RECIPE [flags]\"..." >&2
    exit 2
    ;;
esac
