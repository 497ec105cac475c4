"""Helpers shared by the compact engine's tests (imported from here: `from tests.compact.conftest import ...`).

Every correctness check compares a compact module or model with the masked dense one: `make_conv` projects a random
conv onto a sparsity type, `check_conv` compares its SparseConv3d with F.conv3d on the masked weight; `SHAPES` is
every distinct Conv3d of C3D, R(2+1)D-18 and S3D; `small_c3d` and `r21d` are pruned models by a published profile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compact.modules import SparseConv3d
from models import build_model
from pruning import LayerRule, hard_prune, project
from pruning.profile import load_profile

TYPES = ("irregular", "filter", "channel", "blk-vanilla", "kgs", "kgr", "kgc", "kgrc")
TOL = 1e-5
WINOGRAD_TOL = 1e-4  # Winograd F(4x4, 3x3) rounds differently (~1e-5): the engine's bound against the dense model
SPATIAL = (8, 16, 16)


def rule_for(kind: str) -> LayerRule:
    if kind == "kgrc":
        return LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, (8, 8))
    gs = (8, 4) if kind in ("kgs", "blk-vanilla") else (8, 8)
    return LayerRule(kind, {kind: 0.6}, gs)


def conv_shapes() -> list[tuple]:
    """(cin, cout, kernel, stride, padding, bias, "arch:first layer with it") of every distinct Conv3d."""
    seen: dict[tuple, str] = {}
    for arch in ("c3d", "r2+1d", "s3d"):
        model = build_model(arch, 10)
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv3d):
                key = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.bias is not None)
                seen.setdefault(key, f"{arch}:{name}")
    return [(*k, v) for k, v in seen.items()]


SHAPES = conv_shapes()
GEOMETRIES = sorted({(s[2], s[3], s[4]) for s in SHAPES})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def make_conv(cin, cout, k, s, p, bias, kind, seed=0) -> tuple[nn.Conv3d, torch.Tensor]:
    """A random conv projected onto `kind` (rule_for), and its mask."""
    torch.manual_seed(seed)
    conv = nn.Conv3d(cin, cout, k, s, p, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_()
        w, mask = project(conv.weight, rule_for(kind))
        conv.weight.copy_(w)
    return conv, mask


def make_kgrc_conv(cin, cout, kernel, padding, group_size, seed=0) -> tuple[nn.Conv3d, torch.Tensor]:
    """A random conv projected onto KGRC (0.5 rows, 0.67 columns) with kernel groups of `group_size`, and its mask."""
    torch.manual_seed(seed)
    conv = nn.Conv3d(cin, cout, kernel, padding=padding)
    with torch.no_grad():
        w, mask = project(conv.weight, LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, group_size))
        conv.weight.copy_(w)
    return conv, mask


def check_conv(conv: nn.Conv3d, mask: torch.Tensor, kind: str, batches=(1, 3)) -> SparseConv3d:
    """SparseConv3d(conv, mask) equals F.conv3d with the masked weight and computes exactly the kept work."""
    sc = SparseConv3d(conv, mask)
    w = conv.weight * mask
    for n in batches:
        x = torch.randn(n, conv.in_channels, *SPATIAL)
        ref = F.conv3d(x, w, conv.bias, conv.stride, conv.padding)
        with torch.no_grad():
            y = sc(x)
        assert y.shape == ref.shape
        assert rel_err(y, ref) < TOL, (kind, n)
    # pruned work is skipped: the kernel runs exactly the kept weights for structured types
    if kind != "irregular":
        assert sc.plan.computed_macs_per_position == int(mask.sum())
    assert len(sc.kept_filters) == int(mask.flatten(1).any(1).sum())
    assert len(sc.kept_channels) == int(mask.transpose(0, 1).flatten(1).any(1).sum())
    return sc


def randomize_bn_stats(model: nn.Module) -> None:
    """BatchNorm statistics and affine parameters away from the identity, so that folding them matters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)


def small_c3d(profile: str) -> tuple[nn.Module, dict, dict]:
    """(model, masks, rules): C3D at a quarter width on 8x32x32 clips, pruned by `profile`, biases nonzero."""
    torch.manual_seed(0)
    model = build_model("c3d", 10, width_mult=0.25, clip_len=8, crop_size=32).eval()
    rules = load_profile(profile).resolve(model)
    masks = hard_prune(model, rules)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                m.bias.normal_(0, 0.05)
    return model, masks, rules


def r21d(profile: str) -> tuple[nn.Module, dict, dict]:
    """(model, masks, rules): R(2+1)D-18 with random BatchNorm statistics, pruned by `profile`."""
    torch.manual_seed(0)
    model = build_model("r2+1d", 10).eval()
    randomize_bn_stats(model)
    rules = load_profile(profile).resolve(model)
    return model, hard_prune(model, rules), rules
