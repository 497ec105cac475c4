# Shared by the per-profile scripts: ADMM from a dense baseline, then masked retraining, then report.
# ADMM takes a Z/U step every epoch (ADMM_EVERY=1): rho starts at 1e-4 and doubles at each step while the primal
# residual dominates (residual balancing), so it needs tens of Z/U steps, not the 4 that every 10 epochs gives
# over 40 epochs (docs/algorithms.md). RHO_SCHEDULE=stages ADMM_EVERY=10 is the published schedule.
# Each script sets ARCH, PROFILE and the epochs/learning rates, then calls run_recipe. Override any variable from
# the environment, e.g.  DATA=/data/ucf101_lmdb BASELINE=checkpoints/baseline/c3d_ucf101.pth bash scripts/kgrc_c3d.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATASET=${DATASET:-ucf101}
DATA=${DATA:-datasets}                       # train.lmdb/val.lmdb here or in <DATA>/ucf101_frame/ (original layout)
BASELINE=${BASELINE:-}                       # empty: found in checkpoints/baseline/ by arch and dataset
SAVE=${SAVE:-checkpoints}
NPROC=${NPROC:-1}                            # >1: DDP with torchrun on this machine
EXTRA=${EXTRA:-}                             # e.g. "--clip-len 8 --crop-size 56 --width-mult 0.25" for a smoke run

launch() {
  if [ "$NPROC" -gt 1 ]; then torchrun --standalone --nproc_per_node="$NPROC" opt_main.py "$@"
  else python opt_main.py "$@"; fi
}

run_recipe() {
  local name="${ARCH}_${DATASET}_${PROFILE}"
  local base_args=(--arch "$ARCH" --dataset "$DATASET" --data-location "$DATA" --config-file $PROFILE
                   --save-dir "$SAVE" --batch-size "${BATCH:-16}" --accum-steps "${ACCUM:-1}" $EXTRA)
  local load=()
  [ -n "$BASELINE" ] && load=(--load-path "$BASELINE")
  launch --admm "${base_args[@]}" "${load[@]}" --name "${name}_admm" --resume auto \
    --epochs "$ADMM_EPOCHS" --rho "${RHO:-1e-4}" --rho-num "${RHO_NUM:-4}" --admm-epochs "${ADMM_EVERY:-1}" \
    --optimizer sgd --lr "$ADMM_LR" --rho-schedule "${RHO_SCHEDULE:-balance}"
  launch --masked-retrain "${base_args[@]}" --load-path "$SAVE/${name}_admm/admm.pth" \
    --name "${name}_retrain" --resume auto --epochs "$RETRAIN_EPOCHS" --lr "$RETRAIN_LR" \
    --warmup --smooth-eps "${SMOOTH:-0.1}" ${DISTILL:+--distill}
  python opt_main.py --report --arch "$ARCH" --config-file $PROFILE $EXTRA \
    --resume "$SAVE/${name}_retrain/retrained.pth" --report-json "$SAVE/${name}_retrain/report.json"
}
