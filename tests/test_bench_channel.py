"""scripts/bench_compact.py --channel-pruned-equal-macs: Torch-Pruning's channel-pruned C3D at a kernel-group profile's
MAC reduction is a smaller dense C3D that computes what the original does with the dropped channels zeroed."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from models import build_model
from models.c3d import CONVS
from pruning import hard_prune
from pruning.profile import load_profile
from pruning.report import build_report

pytest.importorskip("torch_pruning")

SHAPE = (3, 8, 56, 56)


def load_script():
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_compact.py"
    spec = importlib.util.spec_from_file_location("bench_compact", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kept_rows(small: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Index in `full` of each row of `small` (rows copied exactly): matched on a random projection, then checked."""
    v = torch.randn(small[0].numel(), dtype=torch.float64)
    ks, kf = small.flatten(1).double() @ v, full.flatten(1).double() @ v
    idx = (ks[:, None] - kf[None]).abs().argmin(1)
    assert torch.equal(full[idx], small), "a kept row is not a row of the original"
    return idx


def test_torch_pruned_c3d_matches_profile_macs():
    bench = load_script()
    torch.manual_seed(0)
    model = build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=56).eval()
    masks = hard_prune(model, load_profile("c3d_kgrc_3.04x").resolve(model))
    target = build_report(model, masks, "", SHAPE).reduction
    assert target > 2.5
    small, red, ratio, finer = bench.torch_pruned_c3d(model, target, SHAPE)

    dense = build_report(model, {}, "", SHAPE).macs_dense
    assert red == pytest.approx(dense / build_report(small, {}, "", SHAPE).macs_dense)
    assert abs(red / target - 1) < 0.01, (red, target, ratio, finer)
    assert 0 < ratio < 0.95
    assert small.conv1.in_channels == 3
    for name, _ in CONVS:
        assert getattr(small, name).out_channels < getattr(model, name).out_channels, name
    assert small.fc8.out_features == 5
    assert model.conv1.out_channels == 16  # the original is untouched

    # the pruned model is the original with the dropped filters (and fc6/fc7 units) zeroed: checks the channel
    # bookkeeping, fc6's columns of the flattened conv5b output included
    ref = copy.deepcopy(model)
    prev = torch.arange(3)
    with torch.no_grad():
        for name, _ in CONVS:
            w_full, w_small = ref.get_submodule(name).weight, small.get_submodule(name).weight
            keep = kept_rows(w_small, w_full[:, prev])
            drop = torch.ones(w_full.shape[0], dtype=torch.bool)
            drop[keep] = False
            w_full[drop] = 0
            ref.get_submodule(name).bias[drop] = 0
            prev = keep
        positions = ref.fc6.in_features // ref.conv5b.out_channels
        cols = (prev[:, None] * positions + torch.arange(positions)).flatten()
        for name in ("fc6", "fc7"):
            lin = ref.get_submodule(name)
            keep = kept_rows(small.get_submodule(name).weight, lin.weight[:, cols])
            drop = torch.ones(lin.out_features, dtype=torch.bool)
            drop[keep] = False
            lin.weight[drop] = 0
            lin.bias[drop] = 0
            cols = keep
        x = torch.randn(2, *SHAPE)
        y = small(x)
        assert y.shape == (2, 5)
        torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-5)
