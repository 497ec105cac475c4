"""compact/convert.py: compile_sparse's passes on torchvision's R(2+1)D-18 and S3D (BatchNorm folded, ReLU fused,
(2+1)D convs chained) equal the masked dense model; what adding a model to the engine takes: register its type with
the passes it needs (or an engine of its own), and compile_sparse gives a model whose output equals the masked dense
model's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compact.convert as convert
from compact.chain import SparseConvPair
from compact.convert import (
    MODULE_PASSES,
    CompileJob,
    chain_pairs,
    channels_last_pools,
    compile_sparse,
    engine_passes,
    fold_bn,
    fuse_relu,
    register_engine,
    swap_convs,
    swap_pruned_convs,
)
from compact.dense_paths import DENSE_PATHS, ENGINE_PATHS
from compact.modules import AutoConv3d, ChannelsLastMaxPool3d, SparseConv3d
from compact.surgery import masked_dense_copy
from models import build_model
from pruning import LayerRule, hard_prune, project
from pruning.profile import load_profile
from tests.compact.conftest import TOL, WINOGRAD_TOL, randomize_bn_stats, rel_err


@pytest.mark.parametrize("arch,profile,clip", [("r2+1d", "r2+1d_kgs_3.20x", (4, 24, 24)),
                                               ("s3d", "s3d_kgs_1.84x", (8, 32, 32))])
def test_whole_video_nets(arch, profile, clip):
    """torchvision R(2+1)D-18 / S3D: BatchNorm folded, ReLU fused, strided convs; equal to the masked dense model."""
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    rules = load_profile(profile).resolve(model)
    masks = hard_prune(model, rules)
    randomize_bn_stats(model)
    cm = compile_sparse(model, masks, rules=rules)
    inner = {id(m.kernel) for m in cm.modules() if isinstance(m, AutoConv3d)}
    sparse = {f"{m.name}.weight" for m in cm.modules() if isinstance(m, SparseConv3d) and id(m) not in inner}
    assert sparse == set(masks)
    pairs = [m for m in cm.modules() if isinstance(m, SparseConvPair)]
    if arch == "r2+1d":  # every (2+1)D conv with a stride-1 temporal half runs chained
        expect = [n for n in masks if n.endswith(".0.3.weight") and n.replace(".0.3.", ".0.0.") in masks
                  and model.get_submodule(n[:-7]).stride == (1, 1, 1)]
        assert expect and len(pairs) == len(expect)
    assert sum(isinstance(m, nn.BatchNorm3d) for m in cm.modules()) < sum(
        isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert any(m.relu for m in cm.modules() if isinstance(m, SparseConv3d))
    x = torch.randn(2, 3, *clip)
    autos = [m for m in cm.modules() if isinstance(m, AutoConv3d)]
    with torch.no_grad():
        ref = model(x)
        assert rel_err(cm(x), ref) < TOL
        # the trunk, not only the logits: activations that died out on the way would make equal logits prove nothing
        trunk = {"r2+1d": lambda m: m.layer4(m.layer3(m.layer2(m.layer1(m.stem(x))))), "s3d": lambda m: m.features(x)}
        ref_trunk = trunk[arch](model)
        assert ref_trunk.std() > 1e-2 * ref.std() and rel_err(trunk[arch](cm), ref_trunk) < TOL
        if arch == "s3d":
            assert any(isinstance(m, ChannelsLastMaxPool3d) for m in cm.modules())
            assert not any(type(m) is nn.MaxPool3d for m in cm.modules())
        for p in pairs:  # the chained layout equals the two convs run apart
            xin = torch.randn(2, p.first.in_channels, 4, 12, 12)
            assert rel_err(p(xin), p.second(p.first(xin))) < TOL
            assert rel_err(p(xin), p.second.forward_torch(p.first.forward_torch(xin))) < TOL
        for mode in DENSE_PATHS + ENGINE_PATHS:  # every path an unpruned conv may take
            for m in autos:
                m.mode = mode
            assert rel_err(cm(x), ref) < (WINOGRAD_TOL if mode == "winograd" else TOL), mode


class ThreeBlockNet(nn.Module):
    """A small video net of three conv blocks the engine has never seen: a full 3x3x3 conv, then a (2+1)D pair
    (spatial conv, BatchNorm, ReLU, temporal conv), a max-pool and a linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Conv3d(3, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
            nn.Conv3d(16, 24, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(24), nn.ReLU(),
            nn.Conv3d(24, 32, (3, 1, 1), padding=(1, 0, 0)), nn.ReLU(),
            nn.MaxPool3d((1, 2, 2)))
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean((2, 3, 4)))


@pytest.fixture
def registry(monkeypatch):
    """Registrations made in a test stay in that test."""
    monkeypatch.setattr(convert, "ENGINES", dict(convert.ENGINES))


def pruned_net(cls=ThreeBlockNet):
    torch.manual_seed(0)
    model = cls().eval()
    masks = {}
    randomize_bn_stats(model)
    with torch.no_grad():
        for name in ("blocks.3", "blocks.6"):  # the first conv stays unpruned
            conv = model.get_submodule(name)
            w, masks[f"{name}.weight"] = project(conv.weight, LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, (8, 8)))
            conv.weight.copy_(w)
    return model, masks


def test_a_registered_model_equals_its_masked_dense_model(registry):
    # adding the model to the engine: one line
    register_engine(ThreeBlockNet, passes=(fold_bn, swap_convs, fuse_relu, chain_pairs, channels_last_pools))

    model, masks = pruned_net()
    cm = compile_sparse(model, masks)
    mods = list(cm.modules())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in mods)  # folded
    assert isinstance(cm.blocks[0], AutoConv3d) and cm.blocks[0].relu  # unpruned, ReLU fused
    pair = cm.blocks[3]
    assert isinstance(pair, SparseConvPair) and pair.first.relu and pair.second.relu  # chained, ReLUs fused
    assert isinstance(cm.blocks[8], ChannelsLastMaxPool3d)
    x = torch.randn(2, 3, 4, 12, 12)
    with torch.no_grad():
        ref = masked_dense_copy(model, masks)(x)
        assert rel_err(cm(x), ref) < TOL
        assert rel_err(compile_sparse(model, masks, fuse=False)(x), ref) < TOL


def test_a_model_with_an_engine_of_its_own(registry):
    class OtherNet(ThreeBlockNet):
        pass

    # an engine module built after the passes: a decorator on it
    @register_engine(OtherNet, passes=(swap_pruned_convs,))
    class OtherEngine(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        @classmethod
        def compile(cls, model: nn.Module, job: CompileJob) -> OtherEngine:
            return cls(model)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    model, masks = pruned_net(OtherNet)
    cm = compile_sparse(model, masks)
    assert isinstance(cm, OtherEngine)
    assert [type(m) for m in cm.model.blocks[::3]] == [nn.Conv3d, SparseConv3d, SparseConv3d]
    x = torch.randn(2, 3, 4, 12, 12)
    with torch.no_grad():
        assert rel_err(cm(x), masked_dense_copy(model, masks)(x)) < TOL


def test_lookup_follows_the_class_hierarchy(registry):
    class Sub(ThreeBlockNet):
        pass

    assert engine_passes(ThreeBlockNet()) == MODULE_PASSES  # not registered: module-by-module compaction
    register_engine(ThreeBlockNet, passes=(swap_convs,))
    assert engine_passes(Sub()) == (swap_convs,)
    register_engine(f"{Sub.__module__}.{Sub.__qualname__}", passes=(swap_pruned_convs,))  # by name
    assert engine_passes(Sub()) == (swap_pruned_convs,)
