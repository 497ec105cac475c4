"""Where runs live: the starting checkpoint found without --load-path, run folder names, data folder layouts,
and the --plots phase that draws a run folder's figures."""

from __future__ import annotations

import argparse
import json

import pytest

from models import build_model
from opt_main import cli
from pruning import UserError, hard_prune, load_profile
from training.checkpoint import save_checkpoint
from training.runs import data_root, find_start, profile_stem, run_dir_for


def ns(tmp_path, phase: str, **kw) -> argparse.Namespace:
    base = dict(phase=phase, arch="c3d", dataset="ucf101", save_dir=str(tmp_path), name=None,
                config_file=["profiles/c3d_kgrc_3.04x.yaml"])
    return argparse.Namespace(**{**base, **kw})


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_profile_stem_keeps_the_ratio_dot():
    assert profile_stem("profiles/c3d_kgs_3.57x.yaml") == "c3d_kgs_3.57x"
    assert profile_stem("c3d_kgs_3.57x") == "c3d_kgs_3.57x"


def test_run_dir_names_arch_dataset_profiles_and_phase(tmp_path):
    assert run_dir_for(ns(tmp_path, "admm")).name == "c3d_ucf101_c3d_kgrc_3.04x_admm"
    assert run_dir_for(ns(tmp_path, "train", config_file=None)).name == "c3d_ucf101_dense_train"
    assert run_dir_for(ns(tmp_path, "admm", name="mine")) == tmp_path / "mine"


def test_find_start_takes_the_one_baseline_of_this_arch_and_dataset(tmp_path):
    touch(tmp_path / "baseline" / "r2plus1d_ucf101.pth")
    touch(tmp_path / "baseline" / "c3d_hmdb51.pth")
    with pytest.raises(UserError, match=r"nothing found .*there: c3d_hmdb51.pth, r2plus1d_ucf101.pth"):
        find_start(ns(tmp_path, "admm"))
    want = touch(tmp_path / "baseline" / "C3D_UCF101_best.pth")
    assert find_start(ns(tmp_path, "admm")) == str(want)
    assert find_start(ns(tmp_path, "admm", arch="r2+1d", dataset="ucf101")).endswith("r2plus1d_ucf101.pth")
    touch(tmp_path / "baseline" / "c3d_ucf101_2.pth")
    with pytest.raises(UserError, match="several candidates"):
        find_start(ns(tmp_path, "admm"))


def test_find_start_for_retraining_takes_the_admm_or_rew_result_of_the_same_profile(tmp_path):
    args = ns(tmp_path, "masked_retrain")
    with pytest.raises(UserError, match="c3d_ucf101_c3d_kgrc_3.04x_admm/admm.pth"):
        find_start(args)
    touch(tmp_path / "c3d_ucf101_c3d_kgs_3.57x_admm" / "admm.pth")  # another profile: not taken
    with pytest.raises(UserError):
        find_start(args)
    want = touch(tmp_path / "c3d_ucf101_c3d_kgrc_3.04x_rew" / "rew.pth")
    assert find_start(args) == str(want)
    assert find_start(ns(tmp_path, "train", config_file=None)) is None  # training may start from scratch


@pytest.mark.parametrize("layout", ["", "ucf101_frame", "datasets/ucf101_frame"])
def test_data_root_finds_the_original_layouts(tmp_path, layout):
    touch(tmp_path / layout / "train.txt")
    assert data_root(str(tmp_path), "ucf101") == str(tmp_path / layout)


def test_plots_draws_every_figure_of_a_run_folder(tmp_path):
    args = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--num-classes", "5"]
    model = build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=32)
    profile = load_profile("profiles/c3d_kgrc_3.04x.yaml")
    masks = hard_prune(model, profile.resolve(model))
    run = tmp_path / "run"
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "video_top1": 0.2 * e, "lr": 1e-3} for e in range(3)]
    save_checkpoint({"model": model.state_dict(), "masks": masks, "profile": profile.to_dict(), "history": history,
                     "args": {"num_classes": 5, "width_mult": 0.25, "clip_len": 8, "crop_size": 32}},
                    run / "admm.pth")
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "residual": {"conv2.weight": 0.1 / (e + 1)}}) + "\n" for e in range(3)))
    bench = {"dense_ms": 10.0, "sparse_ms": 4.0, "speedup": 2.5, "ideal": 3.0,
             "layers": [{"name": "conv2", "dense_ms": 5.0, "sparse_ms": 2.0}]}
    (run / "benchmark.json").write_text(json.dumps(bench))
    assert cli(args + ["--plots", "--resume", str(run / "admm.pth")]) == 0
    drawn = {p.name for p in (run / "figures").iterdir()}
    pruned = [n.removesuffix(".weight") for n, m in masks.items() if m.dim() == 5]
    assert drawn == {f"groups_{n}.png" for n in pruned} | {"macs_per_layer.png", "training_curves.png",
                                                           "latency_per_layer.png"}
    assert any((run / "tb").iterdir())  # the same images in TensorBoard
    assert cli(args + ["--plots"]) == 2  # no checkpoint: one line, not a traceback
