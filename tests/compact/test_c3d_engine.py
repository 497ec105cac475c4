"""compact/c3d_engine.py: C3D end to end in the kernels' layout equals the masked dense model on every path."""

from __future__ import annotations

import pytest
import torch

from compact.c3d_engine import CompactC3D
from compact.convert import compile_sparse
from compact.dense_paths import DENSE_PATHS, ENGINE_PATHS
from models import build_model
from pruning import hard_prune
from pruning.profile import load_profile
from tests.compact.conftest import (
    TOL,
    WINOGRAD_TOL,
    rel_err,
    small_c3d,
)


@pytest.mark.parametrize("profile", ["c3d_kgrc_3.04x", "c3d_kgs_3.57x"])
def test_whole_c3d(profile):
    model, masks, rules = small_c3d(profile)
    cm = compile_sparse(model, masks, rules=rules)
    assert isinstance(cm, CompactC3D)
    unfused = compile_sparse(model, masks, rules=rules, fuse=False)
    for n in (1, 3):
        x = torch.randn(n, 3, 8, 32, 32)
        with torch.no_grad():
            ref_f, ref = model.features(x), model(x)
            # the unpruned convs take the path timed fastest: Winograd's rounding (WINOGRAD_TOL) if it wins
            assert rel_err(cm.features(x), ref_f) < WINOGRAD_TOL
            assert rel_err(cm(x), ref) < WINOGRAD_TOL
            assert rel_err(cm._torch_features(x), ref_f) < TOL
            assert rel_err(unfused(x), ref) < WINOGRAD_TOL
            for mode in DENSE_PATHS + ENGINE_PATHS:  # every path an unpruned conv may take
                cm.dense_mode = mode
                assert rel_err(cm(x), ref) < (WINOGRAD_TOL if mode == "winograd" else TOL), mode
            cm.dense_mode = None
            for mode in ENGINE_PATHS:  # the pruned convs: their kernel, or Winograd on their masked weight
                cm.pruned_mode = mode
                assert rel_err(cm(x), ref) < (WINOGRAD_TOL if mode == "winograd" else TOL), mode
                assert all(cm.chosen_mode(n, x.shape[0]) == mode for n in cm.convs if n not in cm.dense_convs)
            cm.pruned_mode = None


def test_c3d_engine_keeps_unpruned_convs_as_pytorch_with_dense_layers_false():
    """dense_layers=False: the unpruned convs stay nn.Conv3d inside the engine (PyTorch's contiguous path from the
    padded layout), the pruned ones run the kernels; the output equals the masked dense model's."""
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    cm = compile_sparse(model, masks, rules=rules, dense_layers=False)
    assert isinstance(cm, CompactC3D) and not cm.dense_convs
    plain = [n for n in cm.conv_names if isinstance(cm.convs[n], torch.nn.Conv3d)]
    assert plain and len(plain) < len(cm.conv_names)  # the profile leaves some convs unpruned, prunes the others
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert rel_err(cm(x), model(x)) < TOL
        assert rel_err(cm._torch_features(x), model.features(x)) < TOL


@pytest.mark.parametrize("clip,crop", [(12, 40), (8, 36)])
def test_c3d_engine_odd_sizes_pooling_borders(clip, crop):
    """Odd grids (5x5 before pool4, 9x9 before pool3...) take the pooling kernel's border path and its unchecked
    interior path in the same rows; both must equal PyTorch's max_pool3d."""
    torch.manual_seed(1)
    model = build_model("c3d", 10, width_mult=0.25, clip_len=clip, crop_size=crop).eval()
    rules = load_profile("c3d_kgrc_3.04x").resolve(model)
    masks = hard_prune(model, rules)
    cm = compile_sparse(model, masks, rules=rules)
    x = torch.randn(2, 3, clip, crop, crop)
    with torch.no_grad():
        assert rel_err(cm.features(x), model.features(x)) < TOL
