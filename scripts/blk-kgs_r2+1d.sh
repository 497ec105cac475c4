#!/usr/bin/env bash
# RT3D: R(2+1)D-18 from Kinetics-400 weights, KGS 2.56x (its scripts/blk-kgs_r2+1d-pretrained.sh); PROFILE=r2+1d-pretrained_3.20x for 3.20x
PAPER=rt3d
ARCH=${ARCH:-r2+1d-pretrained}
PROFILE=${PROFILE:-r2+1d-pretrained_2.56x}
PRUNE_EPOCHS=${PRUNE_EPOCHS:-50}        # per rho stage (x RHO_NUM=4)
PRUNE_LR=${PRUNE_LR:-5e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-130}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
