#!/usr/bin/env bash
# Profile search on the demo (run scripts/demo.sh first): search a KGRC profile for TARGET x MAC reduction
# twice, uniform and by measured sensitivity, prune and retrain each the same way from the demo's dense model,
# and compare. Writes checkpoints/demo/search/compare.json. SEARCHES="sensitivity" reruns one arm only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo_common.sh

TARGET=${TARGET:-3.0}
KIND=${KIND:-kgrc}
DENSE="$OUT/dense/dense.pth"
[ -f "$DENSE" ] || { echo "demo_search.sh: $DENSE not found; run scripts/demo.sh first" >&2; exit 2; }

for SEARCH in ${SEARCHES:-uniform sensitivity}; do
  PROFILE_YAML="$OUT/search/${KIND}_${SEARCH}_${TARGET}x.yaml"
  python opt_main.py --target-reduction "$TARGET" --sparsity-type "$KIND" --search "$SEARCH" "${SMALL[@]}" \
    --num-classes "$CLASSES" --load-path "$DENSE" --search-subset 140 --search-out "$PROFILE_YAML"
  prune_and_retrain "$PROFILE_YAML" "search/$SEARCH"
done

python - "$OUT/search" <<'PY'
import json, sys
out = sys.argv[1]
rows = {}
for search in ("uniform", "sensitivity"):
    r = json.load(open(f"{out}/{search}/retrain/result.json"))
    a = json.load(open(f"{out}/{search}/admm/result.json"))
    rows[search] = {"pruned_top1": r["video_top1"], "pruned_clip_top1": r["clip_top1"],
                    "admm_top1_after_prune": a["video_top1"], "checkpoint": r["checkpoint"]}
json.dump(rows, open(f"{out}/compare.json", "w"), indent=2)
print(json.dumps(rows, indent=2))
PY
