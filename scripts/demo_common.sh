# Sizes and steps shared by demo.sh and demo_search.sh (sourced, not run). Override any variable from the
# environment. The model is the real C3D at a quarter width on 8-frame 56x56 clips.
SEED=${SEED:-0}                 # generated dataset, initialisation and data order
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "error: SEED=$SEED is not a non-negative integer (e.g. SEED=1)" >&2; exit 2; }
OUT=${OUT:-checkpoints/demo/seed$SEED}
DATA=${DATA:-data/demo/seed$SEED}
CLASSES=${CLASSES:-5}
VIDEOS=${VIDEOS:-60}          # per class
FRAMES=${FRAMES:-40}          # per video (25 fps)
ADMM_EPOCHS=${ADMM_EPOCHS:-12}  # one Z/U step per epoch; rho per layer doubles at each until the residual meets 0.01
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-15}
RHO=${RHO:-1}                   # first ADMM penalty; 12 Z/U steps are too few to climb from the recipes' 1e-4
ADMM_LR=${ADMM_LR:-1e-3}        # SGD: Adam normalises the penalty's gradient away (docs/algorithms.md)
# Plain C3D has no normalisation layers; from scratch on a few hundred clips it learns reliably only with
# dropout off and a moderate Adam step (with dropout 0.5 and lr 1e-3 some seeds never leave chance).
SMALL=(--arch c3d --width-mult 0.25 --clip-len 8 --crop-size 56 --short-side 64 --batch-size 8
       --sampling consecutive --workers 2 --dataset synthetic --data-location "$DATA/lmdb" --test-clips 2
       --optimizer adam --weight-decay 0 --dropout 0 --seed "$SEED")

REW_LAMBDA=${REW_LAMBDA:-1}      # first reweighting strength; doubled per layer each epoch until the target is met

# prune_and_retrain PROFILE SUBDIR [METHOD]: prune from the dense model with METHOD, then masked retraining with
# distillation. METHOD: admm (default), rew, or oneshot (the dense model projected by magnitude, then retrained
# for the pruning phase's epochs as well, so that every method trains as many epochs).
prune_and_retrain() {
  local profile=$1 dir="$OUT/$2" method=${3:-admm} start epochs=$RETRAIN_EPOCHS extra=()
  case $method in
    admm) python opt_main.py --admm "${SMALL[@]}" --save-dir "$dir" --name admm --config-file "$profile" \
            --load-path "$OUT/dense/dense.pth" --epochs "$ADMM_EPOCHS" --rho-num 1 --rho "$RHO" --admm-epochs 1 \
            --optimizer sgd --momentum 0.9 --lr "$ADMM_LR" --resume auto
          start="$dir/admm/admm.pth" ;;
    rew) python opt_main.py --rew "${SMALL[@]}" --save-dir "$dir" --name rew --config-file "$profile" \
           --load-path "$OUT/dense/dense.pth" --epochs "$ADMM_EPOCHS" --rew-lambda "$REW_LAMBDA" \
           --rew-update-epochs 1 --optimizer sgd --momentum 0.9 --lr "$ADMM_LR" --resume auto
         start="$dir/rew/rew.pth" ;;
    oneshot) start="$OUT/dense/dense.pth" epochs=$((ADMM_EPOCHS + RETRAIN_EPOCHS)) extra=(--one-shot) ;;
    *) echo "error: prune_and_retrain: unknown method '$method' (admm, rew or oneshot)" >&2; return 2 ;;
  esac
  python opt_main.py --masked-retrain "${SMALL[@]}" --save-dir "$dir" --name retrain --config-file "$profile" \
    --load-path "$start" --epochs "$epochs" --lr 3e-4 --warmup --warmup-epochs 1 "${extra[@]}" \
    --distill --teacher-path "$OUT/dense/dense.pth" --kd-off-epochs 2 --resume auto
}
