"""The benchmark scripts over compact/bench.py: scripts/bench_compact.py (opt_main.py --benchmark's code for several
batch sizes, random weights projected onto a profile or a checkpoint read safely with its masks; with
--channel-pruned-equal-macs, Torch-Pruning's channel-pruned C3D at the profile's MAC reduction, a smaller dense C3D
that computes what the original does with the dropped channels zeroed) and scripts/bench_kernel_rate.py."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from models import build_model
from models.c3d import CONVS
from pruning import hard_prune, load_profile
from pruning.report import build_report
from training.checkpoint import save_checkpoint

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SHAPE = (3, 8, 56, 56)
SMALL = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--num-classes", "5",
         "--threads", "1", "--repeats", "1", "--warmup", "0"]


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
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
    pytest.importorskip("torch_pruning")
    bench = load_script("bench_compact")
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


def test_profile_and_checkpoint(tmp_path, capsys):
    script = load_script("bench_compact")
    out = tmp_path / "r.json"
    assert script.main(SMALL + ["--batch-size", "1", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["batch_size"] for r in res] == [1, 2]
    assert all(r["max_rel_err"] < 1e-5 and 2 < r["ideal"] < 3.5 and r["profile"] == "c3d_kgrc_3.04x" for r in res)
    assert "whole model" in capsys.readouterr().out

    # a checkpoint: its weights and masks, not a fresh projection (a mask that removes one more filter shows it)
    torch.manual_seed(1)
    model = build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=32)
    masks = hard_prune(model, load_profile("c3d_kgrc_3.04x").resolve(model))
    masks["conv1.weight"] = torch.ones_like(model.conv1.weight, dtype=torch.bool)
    masks["conv1.weight"][0] = False
    with torch.no_grad():
        model.conv1.weight[0] = 0
    ckpt = tmp_path / "pruned.pth"
    save_checkpoint({"model": model.state_dict(), "masks": masks,
                     "args": {"num_classes": 5, "width_mult": 0.25, "clip_len": 8, "crop_size": 32}}, ckpt)
    out2 = tmp_path / "c.json"
    assert script.main(SMALL + ["--batch-size", "1", "--resume", str(ckpt), "--json", str(out2)]) == 0
    (r,) = json.loads(out2.read_text())
    assert r["max_rel_err"] < 1e-5
    assert r["layers"][0]["ideal"] > 1  # conv1 lost a filter: the checkpoint's masks were used


def test_kernel_rate_script(tmp_path, capsys):
    """scripts/bench_kernel_rate.py: a table and JSON for a model's conv; a wrong layer or input is one clear line."""
    script = load_script("bench_kernel_rate")
    out = tmp_path / "rate.json"
    assert script.main(["--input", "1", "64", "2", "8", "8", "--repeats", "1", "--threads", "1",
                        "--pattern", "k=kgrc:kgr=0.5,kgc=0.67", "--pattern", "d=dense", "--json", str(out)]) == 0
    assert "dense onednn" in capsys.readouterr().out
    assert [p["pattern"] for p in json.loads(out.read_text())["patterns"]] == ["k", "d"]
    with pytest.raises(SystemExit, match="not a Conv3d of r2\\+1d"):
        script.main(["--layer", "layer1.0.bogus"])
    with pytest.raises(SystemExit, match="takes 64"):
        script.main(["--input", "1", "3", "2", "8", "8"])
    with pytest.raises(SystemExit, match="ratios must read"):
        script.main(["--pattern", "x=kgrc:kgr"])
    with pytest.raises(SystemExit, match="unknown sparsity type 'kgz'"):
        script.main(["--pattern", "x=kgz:kgr=0.5"])
    with pytest.raises(SystemExit, match="--arch 'foo': choose one of"):
        script.main(["--arch", "foo"])
