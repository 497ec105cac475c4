#!/usr/bin/env bash
# The papers' central claim in miniature, on the demo's dataset and dense model of each seed (run
# `SEED=s bash scripts/demo.sh` for every seed first). Every row trains the same number of epochs
# (pruning phase + masked retraining), all at the MAC reduction of the demo's KGRC profile:
#   oneshot-kgrc  one-shot magnitude projection + masked retraining
#   admm-kgrc     ADMM + masked retraining (the demo's own run, reused)
#   rew-kgrc      reweighted group-lasso + masked retraining
#   admm-filter, admm-irregular, admm-kgs   other sparsity types, profiles searched for the same reduction
# Writes docs/ablation.json and docs/ablation.png (mean +- std of video top-1 over the seeds; ABLATION_JSON and
# ABLATION_FIGURE put them elsewhere). ROOT and DATA_ROOT are the demo's folders above seed<s>/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-0 1 2}
ROOT=${ROOT:-checkpoints/demo}
for s in $SEEDS; do
  [[ "$s" =~ ^[0-9]+$ ]] || { echo "error: SEEDS='$SEEDS': '$s' is not a non-negative integer" >&2; exit 2; }
  [ -f "$ROOT/seed$s/dense/dense.pth" ] || {
    echo "error: $ROOT/seed$s/dense/dense.pth not found; run 'SEED=$s bash scripts/demo.sh' first" >&2; exit 2; }
done
first=${SEEDS%% *}
PROFILES="$ROOT/ablation_profiles"
mkdir -p "$PROFILES"

# Profiles of the other types at the KGRC profile's measured reduction on the demo's clip (uniform ratios).
(
  SEED=$first OUT="$ROOT/seed$first" DATA="${DATA_ROOT:-data/demo}/seed$first"
  source scripts/demo_common.sh
  python opt_main.py --report "${SMALL[@]}" --num-classes "$CLASSES" --config-file c3d_kgrc_3.04x \
    --report-json "$PROFILES/kgrc_report.json" > /dev/null
  target=$(python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['reduction'], 3))" \
    "$PROFILES/kgrc_report.json")
  for kind in filter irregular kgs; do
    [ -f "$PROFILES/$kind.yaml" ] || python opt_main.py --target-reduction "$target" --sparsity-type "$kind" \
      --search uniform "${SMALL[@]}" --num-classes "$CLASSES" --search-out "$PROFILES/$kind.yaml"
  done
)

for s in $SEEDS; do
  (
    SEED=$s OUT="$ROOT/seed$s" DATA="${DATA_ROOT:-data/demo}/seed$s"
    source scripts/demo_common.sh
    echo "== seed $s"
    prune_and_retrain c3d_kgrc_3.04x ablation/oneshot-kgrc oneshot
    prune_and_retrain c3d_kgrc_3.04x ablation/rew-kgrc rew
    for kind in filter irregular kgs; do
      prune_and_retrain "$PROFILES/$kind.yaml" "ablation/admm-$kind" admm
    done
  )
done
python scripts/ablation_summary.py --root "$ROOT" --seeds $SEEDS --json "${ABLATION_JSON:-docs/ablation.json}" \
  --figure "${ABLATION_FIGURE:-docs/ablation.png}"
