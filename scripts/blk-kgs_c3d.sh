#!/usr/bin/env bash
# RT3D: C3D KGS 3.57x (use PROFILE=c3d_kgs_2.53x for 2.53x)
ARCH=${ARCH:-c3d}
PROFILE=${PROFILE:-c3d_kgs_3.57x}
ADMM_EPOCHS=${ADMM_EPOCHS:-10}        # per rho stage
ADMM_LR=${ADMM_LR:-5e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-50}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
