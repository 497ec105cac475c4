"""The driver's --benchmark and --export on a small C3D."""

from __future__ import annotations

import json

import onnx
import torch

from compact import load_compact
from models import build_model
from opt_main import cli
from pruning import hard_prune, load_profile
from training.checkpoint import save_checkpoint

SMALL = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--num-classes", "5"]


def test_benchmark_json(tmp_path):
    out = tmp_path / "b.json"
    assert cli(SMALL + ["--config-file", "c3d_kgrc_3.04x", "--benchmark", "--threads", "1", "--repeats", "2",
                        "--benchmark-json", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("dense_ms", "sparse_ms", "speedup", "ideal", "max_rel_err", "layers"):
        assert key in res
    assert res["max_rel_err"] < 1e-5 and res["ideal"] > 2


def test_export_onnx_and_compact(tmp_path):
    torch.manual_seed(0)
    model = build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=32)
    rules = load_profile("c3d_kgrc_3.04x").resolve(model)
    masks = hard_prune(model, rules)
    ckpt = tmp_path / "pruned.pth"
    save_checkpoint({"model": model.state_dict(), "masks": masks, "args": {"num_classes": 5, "width_mult": 0.25,
                                                                         "clip_len": 8, "crop_size": 32}}, ckpt)
    assert cli(["--arch", "c3d", "--resume", str(ckpt), "--export", "onnx"]) == 0
    onnx.checker.check_model(onnx.load(str(tmp_path / "pruned.onnx")))
    compact = load_compact(tmp_path / "pruned_compact.pt")
    x = torch.randn(2, 3, 8, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-4, atol=1e-5)
