#!/usr/bin/env bash
# The demo's retrained model (scripts/demo.sh, same SEED) evaluated by the compact engine at each precision on the
# demo's test set: PyTorch fp32, compact fp32, bf16, and int8 calibrated on CLIPS training clips (min/max, then the
# 99.99th percentile; the last calibration stays in the checkpoint), each with 8- and with 7-bit weights (the default
# on CPUs without VNNI). Writes checkpoints/demo/seed<SEED>/precision.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo_common.sh
CLIPS=${CLIPS:-32}
CKPT="$OUT/retrain/retrained.pth"
[ -f "$CKPT" ] || { echo "error: $CKPT not found: run SEED=$SEED bash scripts/demo.sh first" >&2; exit 2; }
EVAL=(python opt_main.py --evaluate "${SMALL[@]}" --load-path "$CKPT" --device cpu)
mkdir -p "$OUT/precision"
"${EVAL[@]}" > "$OUT/precision/pytorch.json"
"${EVAL[@]}" --precision fp32 > "$OUT/precision/fp32.json"
"${EVAL[@]}" --precision bf16 > "$OUT/precision/bf16.json"
for method in minmax percentile; do
  for bits in 8 7; do
    "${EVAL[@]}" --precision int8 --calibrate "$CLIPS" --calibrate-method $method --int8-weight-bits $bits \
      > "$OUT/precision/int8_${method}_w${bits}.json"
  done
done

python - "$OUT" "$SEED" "$CLIPS" <<'PY'
import json, sys
out, seed, clips = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def metrics(name):  # the JSON object the driver printed, after its own lines
    text = open(f"{out}/precision/{name}.json").read()
    return json.loads(text[text.index("{"):])
rows = {n: metrics(n) for n in ("pytorch", "fp32", "bf16", "int8_minmax_w8", "int8_minmax_w7", "int8_percentile_w8",
                                 "int8_percentile_w7")}
summary = {"seed": seed, "calibration_clips": clips,
           **{n: {k: r[k] for k in ("video_top1", "clip_top1", "val_videos", "val_clips")} for n, r in rows.items()}}
json.dump(summary, open(f"{out}/precision.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
