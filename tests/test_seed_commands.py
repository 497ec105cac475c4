"""The original READMEs' commands, as typed, on a tiny dataset laid out as those READMEs say.

Only options that shrink the work are added (epochs, rho stages, clip and crop size, batch, workers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from models import build_model
from pruning import load_profile, project
from training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SHRINK = ["--rho-num", "1", "--clip-len", "8", "--crop-size", "32", "--short-side", "40", "--batch-size", "4",
          "--workers", "0"]


def seed(cmd: str, cwd: Path, data: Path) -> subprocess.CompletedProcess:
    argv = cmd.replace("/data/UCF101/", f"{data}/").split()
    assert argv[:2] == ["python", "opt_main.py"]
    out = subprocess.run([sys.executable, str(ROOT / "opt_main.py"), *argv[2:], *SHRINK], cwd=cwd,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_rt3d_readme_commands(synthetic, tmp_path):
    # <data>/ucf101_frame/<video>/00001.jpg + train/val lists, and the LMDBs made by the seed spelling
    data = tmp_path / "UCF101"
    frames = data / "ucf101_frame"
    shutil.copytree(synthetic["frames"], frames)
    n_train = len((frames / "train.txt").read_text().splitlines())
    for split, n in (("train", n_train), ("val", 100)):
        out = subprocess.run([sys.executable, str(ROOT / "datasets" / "create_lmdb.py"), "-d", "ucf101_frame",
                              "-s", split, "-vr", "0", str(n)], cwd=data, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    # the baseline where the README puts it; found by arch and dataset
    work = tmp_path / "work"
    (work / "checkpoints" / "baseline").mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint({"state_dict": {f"module.{k}": v for k, v in build_model("r2+1d", 3).state_dict().items()}},
                    work / "checkpoints" / "baseline" / "r2+1d_ucf101.pth")

    out = seed("python opt_main.py --data_location /data/UCF101/ --admm --epoch 50 --arch r2+1d "
               "--config-file r2+1d-pretrained_3.20x".replace("--epoch 50", "--epoch 1"), work, data)
    assert "r2+1d_ucf101.pth" in out.stdout
    out = seed("python opt_main.py --data_location /data/UCF101/  --masked-retrain --epoch 50 --arch r2+1d "
               "--config-file r2+1d-pretrained_3.20x --combine-progressive --warmup".replace("--epoch 50",
                                                                                            "--epoch 1"),
               work, data)
    assert "admm.pth" in out.stdout
    result = work / "checkpoints" / "r2+1d_ucf101_r2+1d-pretrained_3.20x_masked_retrain" / "retrained.pth"
    ckpt = torch.load(result, weights_only=True)
    model = build_model("r2+1d", 3)
    rules = load_profile("r2+1d-pretrained_3.20x").resolve(model)
    assert {r.sparsity for r in rules.values()} == {"kgs"} and set(ckpt["masks"]) == set(rules)
    for name, rule in rules.items():
        w = ckpt["model"][name]
        assert torch.equal(project(w, rule)[0], w), f"{name} is not in the kgs set of the profile"
        assert float((w == 0).float().mean()) >= 0.69  # layer1 0.9, layer2 0.8 of the kernel positions
