"""scripts/bench_compact.py runs opt_main.py --benchmark's code for several batch sizes: random weights projected
onto a profile, or a checkpoint read safely with its masks."""

from __future__ import annotations

import json

import torch

from models import build_model
from pruning import hard_prune, load_profile
from tests.test_bench_channel import load_script  # the one loader of the script
from training.checkpoint import save_checkpoint

SMALL = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--num-classes", "5",
         "--threads", "1", "--repeats", "1", "--warmup", "0"]


def test_profile_and_checkpoint(tmp_path, capsys):
    script = load_script()
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
