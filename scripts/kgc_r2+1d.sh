#!/usr/bin/env bash
# TCAD: R(2+1)D-18 KGC 1.75x (its scripts/kgc_r2+1d.sh)
PAPER=tcad
ARCH=${ARCH:-r2+1d}
PROFILE=${PROFILE:-r2+1d_1.75x}
PRUNE_EPOCHS=${PRUNE_EPOCHS:-150}
PRUNE_LR=${PRUNE_LR:-2e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-90}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
