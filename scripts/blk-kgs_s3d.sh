#!/usr/bin/env bash
# RT3D: its own S3D with temporal striding (its checkpoints are *-s3d-ts-*), KGS 2.09x (2.10x counted here; its scripts/blk-kgs_s3d.sh ran 1 epoch, the paper's schedule here)
PAPER=rt3d
ARCH=${ARCH:-s3d-rt3d-ts}
PROFILE=${PROFILE:-s3d_2.09x}
PRUNE_EPOCHS=${PRUNE_EPOCHS:-50}        # per rho stage (x RHO_NUM=4)
PRUNE_LR=${PRUNE_LR:-5e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-130}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
