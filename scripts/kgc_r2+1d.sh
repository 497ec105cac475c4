#!/usr/bin/env bash
# TCAD: R(2+1)D-18 KGC 1.75x
ARCH=${ARCH:-r2+1d}
PROFILE=${PROFILE:-r2+1d_kgc_1.75x}
ADMM_EPOCHS=${ADMM_EPOCHS:-10}        # per rho stage
ADMM_LR=${ADMM_LR:-5e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-50}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
