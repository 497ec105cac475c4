"""compact/residual.py: R(2+1)D's residual stages run in the kernels' layout, the stem writing into layer1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compact
from compact import _ext
from compact.convert import compile_sparse
from compact.residual import SparseResidualStage, can_fuse_stage
from tests.compact.conftest import (
    TOL,
    r21d,
    rel_err,
)


@pytest.mark.parametrize("profile,fused", [("r2+1d_kgrc_3.05x", ["layer1", "layer2", "layer3"]),
                                           ("r2+1d_kgs_3.20x", ["layer1", "layer2"])])
def test_residual_stages_equal_their_blocks_run_one_by_one(profile, fused):
    """Every stage whose convs are all sparse runs in the kernels' layout (residual add and ReLU fused into the last
    conv's write, in place over the block input); it equals its blocks run one by one, downsampling blocks (layer2:
    strided spatial conv, stride-2 temporal conv, downsample conv) included, and leaves its input untouched."""
    model, masks, rules = r21d(profile)
    cm = compile_sparse(model, masks, rules=rules)
    assert [n for n, m in cm.named_modules() if isinstance(m, SparseResidualStage)] == fused
    x = torch.randn(2, 3, 4, 24, 24)
    with torch.no_grad():
        assert rel_err(cm(x), model(x)) < TOL
        h = cm.stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            stage = getattr(cm, name)
            keep = h.clone()
            y = stage(h)
            assert torch.equal(h, keep), name
            if isinstance(stage, SparseResidualStage):
                assert rel_err(y, nn.Sequential.forward(stage, h)) < TOL, name
                assert rel_err(y, getattr(model, name)(h)) < TOL, name
            h = y


def test_stem_writes_straight_into_layer1(tmp_path, monkeypatch):
    """R(2+1)D's last stem conv (unpruned, ReLU fused) writes into layer1's layout inside the stage: the model keeps
    its modules and state_dict, equals running the stem then layer1, saves and loads, and falls back without the
    kernels."""
    from torchvision.models.video.resnet import VideoResNet

    from compact.residual import StemIntoStageVideoResNet, fuse_stem_into_stage

    model, masks, rules = r21d("r2+1d_kgrc_3.05x")
    cm = compile_sparse(model, masks, rules=rules)
    assert type(cm) is StemIntoStageVideoResNet and "stem.3.conv.weight" in cm.state_dict()
    x = torch.randn(2, 3, 4, 24, 24)
    with torch.no_grad():
        y = cm(x)
        assert rel_err(y, model(x)) < TOL
        assert rel_err(y, VideoResNet.forward(cm, x)) < TOL  # stem, then layer1 entering from a tensor
        compact.save_compact(cm, tmp_path / "r.pt")
        loaded = compact.load_compact(tmp_path / "r.pt")
        assert type(loaded) is StemIntoStageVideoResNet and rel_err(loaded(x), y) < TOL
        cm.stem[3].mode = "contiguous"  # a path forced afterwards: the stem runs it, layer1 enters from its output
        assert cm.stem_entry()[1] is None and rel_err(cm(x), y) < TOL
        cm.stem[3].mode = None
        monkeypatch.setattr(_ext, "_state", {})
        monkeypatch.setenv("PRUNE3D_NO_KERNELS", "1")
        assert rel_err(cm(x), y) < TOL
    other = compile_sparse(model, masks, rules=rules, fuse=False)
    assert not fuse_stem_into_stage(other) and type(other) is VideoResNet  # layer1 is not a SparseResidualStage


def test_residual_stage_refuses_blocks_it_cannot_run():
    model, masks, rules = r21d("r2+1d_kgrc_3.05x")
    cm = compile_sparse(model, masks, rules=rules)
    assert can_fuse_stage(nn.Sequential(*cm.layer1))
    assert not can_fuse_stage(cm.layer4)  # unpruned convs (AutoConv3d)
    block = cm.layer1[1]
    block.conv1[2] = nn.ReLU()  # an unfused ReLU between the convs
    assert not can_fuse_stage(nn.Sequential(*cm.layer1))
    with pytest.raises(ValueError, match="can_fuse_stage"):
        SparseResidualStage(nn.Sequential(*cm.layer1))
