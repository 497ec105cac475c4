"""Models at full and small size, and the MAC/parameter report counted from the model."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import build_model, conv_weight_names
from models.video_resnets import S3DHeadPool
from opt_main import cli
from pruning import UserError, hard_prune, load_profile
from pruning.report import build_report
from training.checkpoint import save_checkpoint


def test_c3d_full_size_numbers():
    model = build_model("c3d", 101)
    rep = build_report(model, {}, "c3d", (3, 16, 112, 112))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(78.4, abs=0.05)
    assert rep.macs_dense / 1e9 == pytest.approx(38.5, rel=0.01)
    assert model.fc6.in_features == 8192


def test_r2plus1d_macs_match_torchvision():
    rep = build_report(build_model("r2+1d", 400), {}, "r2+1d", (3, 16, 112, 112))
    assert rep.macs_dense / 1e9 == pytest.approx(40.5, rel=0.02)


def test_hook_count_equals_flop_counter():
    """The per-layer hook count agrees with torch.utils.flop_counter (which counts 2 FLOPs per MAC)."""
    model = build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=32)
    rep = build_report(model, {}, "c3d", (3, 8, 32, 32))
    with FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 3, 8, 32, 32))
    assert rep.macs_dense * 2 == fc.get_total_flops()


@pytest.mark.parametrize("arch,shape", [("c3d", (2, 3, 16, 112, 112)), ("r2+1d", (1, 3, 16, 112, 112)),
                                        ("s3d", (1, 3, 16, 224, 224))])
def test_full_size_shapes_and_one_step(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, 7)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(shape)
    loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(shape[0], dtype=torch.long))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("arch,shape", [("c3d", (2, 3, 8, 56, 56)), ("s3d", (2, 3, 8, 112, 112)),
                                        ("s3d", (1, 3, 8, 64, 64)), ("r2+1d", (2, 3, 8, 32, 32))])
def test_small_clips_keep_layer_names(arch, shape):
    small = build_model(arch, 7, width_mult=0.25 if arch == "c3d" else 1.0, clip_len=shape[2], crop_size=shape[3])
    assert small(torch.randn(shape)).shape == (shape[0], 7)
    assert conv_weight_names(small) == conv_weight_names(build_model(arch, 7))


def test_s3d_head_equals_torchvision_at_224():
    x = torch.randn(2, 8, 3, 7, 7)
    assert torch.equal(S3DHeadPool()(x), torch.nn.AvgPool3d((2, 7, 7), stride=1)(x))


def test_report_json_from_profile_and_from_checkpoint(tmp_path):
    small = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--num-classes", "5"]
    out = tmp_path / "r.json"
    assert cli(small + ["--config-file", "c3d_kgrc_3.04x", "--report", "--report-json", str(out)]) == 0
    rep = json.loads(out.read_text())
    for key in ("arch", "macs_dense", "macs_pruned", "reduction", "params_dense", "params_pruned", "layers"):
        assert key in rep
    for key in ("name", "shape", "sparsity", "density", "macs_dense", "macs_pruned"):
        assert key in rep["layers"][0]
    conv2 = next(lr for lr in rep["layers"] if lr["name"] == "conv2.weight")
    assert conv2["sparsity"] == "kgrc" and conv2["macs_pruned"] < conv2["macs_dense"]

    # With --resume the zeros actually in the weights are counted: prune only conv2 by hand.
    model = build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=32)
    rules = {k: v for k, v in load_profile("c3d_kgrc_3.04x").resolve(model).items() if k == "conv2.weight"}
    masks = hard_prune(model, rules)
    save_checkpoint({"model": model.state_dict()}, tmp_path / "p.pth")
    out2 = tmp_path / "r2.json"
    assert cli(small + ["--resume", str(tmp_path / "p.pth"), "--report", "--report-json", str(out2)]) == 0
    rep2 = json.loads(out2.read_text())
    layers = {lr["name"]: lr for lr in rep2["layers"]}
    assert layers["conv2.weight"]["density"] == pytest.approx(masks["conv2.weight"].float().mean().item())
    assert layers["conv3a.weight"]["density"] == 1.0
    assert rep2["params_pruned"] == rep2["params_dense"] - int((~masks["conv2.weight"]).sum())


def test_dropout_option_reaches_the_model():
    assert build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=32).dropout.p == 0.5
    assert build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=32, dropout=0.1).dropout.p == 0.1
    s3d = build_model("s3d", 5, dropout=0.0)
    assert [m.p for m in s3d.modules() if isinstance(m, torch.nn.Dropout)] == [0.0]
    with pytest.raises(UserError, match="no dropout"):
        build_model("r2+1d", 5, dropout=0.1)
