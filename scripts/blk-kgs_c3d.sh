#!/usr/bin/env bash
# RT3D: C3D KGS 2.53x (its scripts/blk-kgs_c3d.sh); PROFILE=c3d_3.57x for the 3.57x model
PAPER=rt3d
ARCH=${ARCH:-c3d}
PROFILE=${PROFILE:-c3d_2.53x_v2}
PRUNE_EPOCHS=${PRUNE_EPOCHS:-50}        # per rho stage (x RHO_NUM=4)
PRUNE_LR=${PRUNE_LR:-5e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-130}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
