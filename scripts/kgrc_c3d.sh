#!/usr/bin/env bash
# TCAD: C3D KGRC, its KGR and KGC profiles together (its scripts/kgrc_c3d.sh); the same as profiles/c3d_kgrc_3.04x.yaml
PAPER=tcad
ARCH=${ARCH:-c3d}
PROFILE=${PROFILE:-"c3d_1.76x_uniform c3d_1.93x"}
PRUNE_EPOCHS=${PRUNE_EPOCHS:-150}
PRUNE_LR=${PRUNE_LR:-2e-4}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-90}
RETRAIN_LR=${RETRAIN_LR:-5e-4}
source "$(dirname "$0")/recipe.sh"
run_recipe
