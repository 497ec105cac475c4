# Shared by the per-profile recipes: the paper's pruning phase (RT3D: ADMM; TCAD: reweighted group-lasso) from a
# dense baseline, then masked retraining, then the MAC report. Each recipe sets PAPER, ARCH, PROFILE and the
# paper's epochs and learning rates; `--defaults $PAPER` supplies the rest of that paper's settings (batch 32,
# smoothing, rho stages, TCAD's x4 accumulation and reweighting schedule, soft-CE distillation; docs/recipes.md).
# Override any variable from the environment, e.g.
#   DATA=/data/ucf101_lmdb BASELINE=checkpoints/baseline/c3d_ucf101.pth bash scripts/kgrc_c3d.sh
#   RHO_SCHEDULE=residual bash scripts/blk-kgs_c3d.sh   # this tool's rho adaptation instead of the x10 stages
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATASET=${DATASET:-ucf101}
DATA=${DATA:-datasets}                       # train.lmdb/val.lmdb here or in <DATA>/ucf101_frame/ (original layout)
BASELINE=${BASELINE:-}                       # empty: found in checkpoints/baseline/ (or checkpoint/) by arch, dataset
SAVE=${SAVE:-checkpoints}
NPROC=${NPROC:-1}                            # >1: DDP with torchrun on this machine
EXTRA=${EXTRA:-}                             # e.g. "--clip-len 8 --crop-size 56 --width-mult 0.25" for a smoke run

launch() {
  if [ "$NPROC" -gt 1 ]; then torchrun --standalone --nproc_per_node="$NPROC" opt_main.py "$@"
  else python opt_main.py "$@"; fi
}

run_recipe() {
  local name="${ARCH}_${DATASET}_${PAPER}_${PROFILE// /+}"
  local base_args=(--defaults "$PAPER" --arch "$ARCH" --dataset "$DATASET" --data-location "$DATA"
                   --config-file $PROFILE --save-dir "$SAVE" $EXTRA)
  local load=()
  [ -n "$BASELINE" ] && load=(--load-path "$BASELINE")
  if [ "$PAPER" = rt3d ]; then
    launch --admm "${base_args[@]}" "${load[@]}" --name "${name}_admm" --resume auto --epochs "$PRUNE_EPOCHS" \
      --rho "${RHO:-1e-4}" --rho-num "${RHO_NUM:-4}" ${RHO_SCHEDULE:+--rho-schedule "$RHO_SCHEDULE"} \
      --lr "$PRUNE_LR" --smooth
    retrain_from="$SAVE/${name}_admm/admm.pth"
    progressive=(--combine-progressive)
  else
    launch --rew "${base_args[@]}" "${load[@]}" --name "${name}_rew" --resume auto --epochs "$PRUNE_EPOCHS" \
      --lr "$PRUNE_LR" --smooth-eps 0.1
    retrain_from="$SAVE/${name}_rew/rew.pth"
    progressive=()
  fi
  launch --masked-retrain "${base_args[@]}" --load-path "$retrain_from" "${progressive[@]}" \
    --name "${name}_retrain" --resume auto --epochs "$RETRAIN_EPOCHS" --lr "$RETRAIN_LR" \
    --warmup --warmup-lr 1e-5 --lr-scheduler cosine --distill ${BASELINE:+--teacher-path "$BASELINE"}
  python opt_main.py --report --arch "$ARCH" --config-file $PROFILE $EXTRA \
    --resume "$SAVE/${name}_retrain/retrained.pth" --report-json "$SAVE/${name}_retrain/report.json"
}
