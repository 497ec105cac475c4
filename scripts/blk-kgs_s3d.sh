#!/usr/bin/env bash
# RT3D: S3D KGS (published as s3d_2.09x)
ARCH=${ARCH:-s3d}
PROFILE=${PROFILE:-s3d_kgs_1.84x}
ADMM_EPOCHS=${ADMM_EPOCHS:-10}        # per rho stage
ADMM_LR=${ADMM_LR:-5e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-50}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
