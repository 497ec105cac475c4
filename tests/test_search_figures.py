"""Profile search reaches its target; figures are written and show the mask."""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml

from models import build_model
from opt_main import cli
from pruning import LayerRule, load_profile, projection_mask
from pruning.figures import kernel_group_map
from pruning.search import reduction_of, sensitivity_profile, uniform_profile

SMALL = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--num-classes", "5"]


@pytest.mark.parametrize("kind,target", [("kgrc", 3.0), ("kgs", 2.5), ("kgr", 1.6), ("kgc", 1.5)])
def test_uniform_search_meets_target(kind, target):
    model = build_model("c3d", 5, width_mult=0.5, clip_len=8, crop_size=32)
    rules = uniform_profile(model, "c3d", (3, 8, 32, 32), target, kind)
    assert reduction_of(model, rules, "c3d", (3, 8, 32, 32)) == pytest.approx(target, rel=0.02)
    assert reduction_of(model, rules, "c3d", (3, 8, 32, 32)) >= target


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_sensitivity_search_spares_the_sensitive_layer_and_meets_target(target):
    model = build_model("c3d", 5, width_mult=0.5, clip_len=8, crop_size=32)
    shape = (3, 8, 32, 32)
    calls = []

    def accuracy(m):  # a stand-in for validation accuracy: conv3b matters ten times more than the others
        calls.append(1)
        zeros = {n: float((p == 0).float().mean()) for n, p in m.named_parameters() if n.endswith("weight")}
        return 1.0 - 10 * zeros["conv3b.weight"] - sum(zeros.values())

    rules, table = sensitivity_profile(model, "c3d", shape, target, "kgrc", accuracy)
    assert len(calls) == 1 + 4 * len(table)  # the dense model, then every layer at every ratio
    reduction = reduction_of(model, rules, "c3d", shape)
    assert target <= reduction <= 1.02 * target
    ratio = {n: r.ratios["kgr"] for n, r in rules.items()}
    assert ratio.get("conv3b.weight", 0.0) < ratio["conv2.weight"]
    assert table["conv3b.weight"][0.5] < table["conv2.weight"][0.5]


def test_target_reduction_cli_writes_a_loadable_profile(tmp_path, capsys):
    out = tmp_path / "searched.yaml"
    assert cli(SMALL + ["--target-reduction", "2.5", "--sparsity-type", "kgrc", "--search-out", str(out)]) == 0
    profile = load_profile(str(out))
    assert profile.sparsity == "kgrc" and "conv1.weight" not in profile.rules
    rep_json = tmp_path / "r.json"
    assert cli(SMALL + ["--config-file", str(out), "--report", "--report-json", str(rep_json)]) == 0
    assert yaml.safe_load(rep_json.read_text())["reduction"] == pytest.approx(2.5, rel=0.02)


def test_group_map_png_changes_with_the_mask(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3, 3)
    a = projection_mask(w, LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, (8, 8)))
    b = projection_mask(w, LayerRule("kgr", {"kgr": 0.5}, (8, 8)))
    pa = kernel_group_map(a, "conv", (8, 8), tmp_path / "a.png")
    pb = kernel_group_map(b, "conv", (8, 8), tmp_path / "b.png")
    pa2 = kernel_group_map(a, "conv", (8, 8), tmp_path / "a2.png")
    da, db, da2 = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (pa, pb, pa2))
    assert pa.stat().st_size > 1000 and da != db and da == da2
