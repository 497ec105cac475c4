#!/usr/bin/env bash
# TCAD: C3D KGR 1.76x
ARCH=${ARCH:-c3d}
PROFILE=${PROFILE:-c3d_kgr_1.76x}
ADMM_EPOCHS=${ADMM_EPOCHS:-10}        # per rho stage
ADMM_LR=${ADMM_LR:-5e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-50}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
