#!/usr/bin/env bash
# TCAD: C3D KGC 1.93x (its scripts/kgc_c3d.sh, with --sparsity kgc where it has the typo krc)
PAPER=tcad
ARCH=${ARCH:-c3d}
PROFILE=${PROFILE:-c3d_1.93x}
PRUNE_EPOCHS=${PRUNE_EPOCHS:-150}
PRUNE_LR=${PRUNE_LR:-2e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-90}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
