#!/usr/bin/env bash
# The whole pipeline on a generated dataset, small enough for a laptop CPU (about 10 minutes on 2 cores):
# synthetic videos -> frames -> LMDB -> dense C3D -> ADMM (KGRC 3.04x profile) -> masked retraining -> report.
# Writes checkpoints/demo/summary.json. Sizes can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-checkpoints/demo}
DATA=${DATA:-data/demo}
CLASSES=${CLASSES:-5}
VIDEOS=${VIDEOS:-20}          # per class
FRAMES=${FRAMES:-40}          # per video (25 fps)
PROFILE=${PROFILE:-c3d_kgrc_3.04x}
DENSE_EPOCHS=${DENSE_EPOCHS:-12}
ADMM_EPOCHS=${ADMM_EPOCHS:-2}   # per rho stage (3 stages)
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-10}
SMALL=(--arch c3d --width-mult 0.25 --clip-len 8 --crop-size 56 --short-side 64 --batch-size 8
       --workers 2 --dataset synthetic --data-location "$DATA/lmdb" --save-dir "$OUT" --test-clips 2
       --optimizer adam --weight-decay 0)
start=$(date +%s)

[ -d "$DATA/raw/UCF-101" ] || python datasets/make_synthetic.py --out "$DATA/raw" --classes "$CLASSES" \
  --videos-per-class "$VIDEOS" --frames "$FRAMES" --seed 0
python datasets/extract_videos.py --dataset ucf101 --videos "$DATA/raw/UCF-101" \
  --splits "$DATA/raw/ucfTrainTestlist" --out "$DATA/frames" --short-side 64
python datasets/create_lmdb.py --frames "$DATA/frames" --out "$DATA/lmdb"

python opt_main.py --train "${SMALL[@]}" --name dense --epochs "$DENSE_EPOCHS" --lr 1e-3 --warmup \
  --warmup-epochs 2 --resume auto
python opt_main.py --admm "${SMALL[@]}" --name admm --config-file "$PROFILE" --load-path "$OUT/dense/dense.pth" \
  --epochs "$ADMM_EPOCHS" --rho-num 3 --rho 1e-3 --admm-epochs 1 --lr 2e-4 --resume auto
python opt_main.py --masked-retrain "${SMALL[@]}" --name retrain --config-file "$PROFILE" \
  --load-path "$OUT/admm/admm.pth" --epochs "$RETRAIN_EPOCHS" --lr 3e-4 --warmup --warmup-epochs 1 \
  --distill --teacher-path "$OUT/dense/dense.pth" --kd-off-epochs 2 --resume auto
python opt_main.py --report --arch c3d --width-mult 0.25 --clip-len 8 --crop-size 56 --config-file "$PROFILE" \
  --resume "$OUT/retrain/retrained.pth" --report-json "$OUT/report.json"
python opt_main.py --plots --arch c3d --resume "$OUT/retrain/retrained.pth"

python - "$OUT" "$start" <<'PY'
import json, sys, time
out, start = sys.argv[1], int(sys.argv[2])
dense = json.load(open(f"{out}/dense/result.json"))
admm = json.load(open(f"{out}/admm/result.json"))
pruned = json.load(open(f"{out}/retrain/result.json"))
report = json.load(open(f"{out}/report.json"))
summary = {
    "dense_top1": dense["video_top1"], "admm_top1_before_prune": admm["video_top1_before_prune"],
    "admm_top1_after_prune": admm["video_top1"], "pruned_top1": pruned["video_top1"],
    "dense_clip_top1": dense["clip_top1"], "pruned_clip_top1": pruned["clip_top1"],
    "reduction": report["reduction"], "macs_dense": report["macs_dense"], "macs_pruned": report["macs_pruned"],
    "dense_checkpoint": dense["checkpoint"], "admm_checkpoint": admm["checkpoint"],
    "pruned_checkpoint": pruned["checkpoint"], "load_errors": pruned["load_errors"],
    "wall_seconds": int(time.time()) - start,
}
summary["chance"] = 1 / report["layers"][-1]["shape"][0]
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
