"""Structured kernel-group sparsity for 3D CNNs: projections, profiles, masks and MAC reports."""

from .errors import CheckpointError, ProfileError, UserError
from .masks import apply_masks, hard_prune, intersect_masks, mask_gradients
from .profile import PruneProfile, load_profile
from .projections import SPARSITY_TYPES, LayerRule, project, projection_mask, realized_ratio
from .report import ModelReport, build_report
from .sparsity_types import canonical_type

__all__ = [
    "SPARSITY_TYPES", "CheckpointError", "LayerRule", "ModelReport", "ProfileError", "PruneProfile", "UserError",
    "apply_masks", "build_report", "canonical_type", "hard_prune", "intersect_masks", "load_profile",
    "mask_gradients", "project", "projection_mask", "realized_ratio",
]
