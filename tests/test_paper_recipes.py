"""The papers' recipes: every command line of the RT3D and TCAD releases' scripts (copies in
tests/data/original_scripts/) parses with its original meaning, their schedules and losses by hand, and one RT3D
and one TCAD script run end to end on the generated dataset."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import build_model, normalization
from opt_main import choose_norm, make_data, resolve_defaults
from options import parse_args
from pruning import LayerRule, projection_mask
from training.penalties import ReweightedGroupLasso, distillation_loss
from training.schedule import build_scheduler, tcad_rew_factor
from training.trainer import hooks_scheduler

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "data" / "original_scripts"


def script_lines(path: Path) -> list[list[str]]:
    """The opt_main arguments of each command in a script: continuation lines joined, comments dropped, the
    environment prefix and `python <their driver>` cut."""
    text = re.sub(r"\\\n", " ", path.read_text())
    commands = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        for cmd in filter(None, (c.strip() for c in line.split("&&"))):
            argv = shlex.split(cmd)
            while argv and "=" in argv[0]:
                argv.pop(0)
            if argv[:1] == ["python"]:
                commands.append(argv[2:])
    return commands


ALL = [(p.name, i, argv) for p in sorted(SCRIPTS.glob("*.sh")) for i, argv in enumerate(script_lines(p))]


def test_the_releases_have_twenty_command_lines():
    assert len(ALL) == 20 and len({name for name, _, _ in ALL}) == 10


@pytest.mark.parametrize("name,i,argv", ALL, ids=[f"{n}:{i}" for n, i, _ in ALL])
def test_every_original_line_parses_with_its_meaning(name, i, argv, capsys):
    if "--sparsity" in argv and "krc" in argv:  # TCAD's kgc_c3d.sh: its own parser refuses it too
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and "use --sparsity kgc" in err, err
        return
    args = resolve_defaults(parse_args(argv))
    assert args.phase in ("admm", "rew", "masked_retrain")
    assert args.optimizer == "sgd"
    if name.startswith("rt3d"):
        assert args.defaults == "rt3d" and args.group_size == [8, 4] and args.sparsity_type == "blk-kgs"
        assert args.smooth_eps == 0.1 if args.admm else True  # --smooth --smooth-eps 0.1 on the ADMM lines
        assert args.rho_num == int(argv[argv.index("--rho-num") + 1]) and args.lr == 5e-4
        assert args.batch_size == 32 and args.print_freq == 50 and args.device is None
        if args.masked_retrain:
            assert args.combine_progressive and args.distill and args.warmup and args.lr_scheduler == "cosine"
            assert args.teacher_path.startswith("checkpoint/") and args.kd_loss == "soft-ce"
    else:
        assert args.defaults == "tcad" and args.group_size == [8, 8] and args.batch_size == 32
        assert args.accum_steps == 4 and args.print_freq == 20 and args.kgr_rounding == "ceil"
        assert (args.sparsity_type, len(args.config_file)) == ((None, 2) if "kgrc" in name else
                                                               (name.split("_")[1], 1))
        if args.rew:
            assert (args.lr, args.smooth_eps, args.rew_schedule, args.rew_lambda, args.rew_eps) == \
                (2e-4, 0.1, "tcad", 1e-6, 1e-6)
            assert args.epochs == 150 and args.lr_scheduler == "default"
        else:
            assert (args.lr, args.epochs, args.lr_scheduler, args.warmup, args.distill) == \
                (5e-4, 90, "cosine", True, True)
            assert args.warmup_lr == 1e-5 and args.kd_off_epochs == 5


def test_this_tools_defaults_without_a_published_alias():
    args = resolve_defaults(parse_args(["--admm", "--config-file", "c3d_kgrc_3.04x"]))
    assert (args.defaults, args.lr, args.batch_size, args.rho_num, args.smooth_eps) == ("prune3d", 1e-3, 16, 4, 0.0)
    args = resolve_defaults(parse_args(["--admm", "--config-file", "c3d_2.53x_v2", "--defaults", "prune3d"]))
    assert (args.lr, args.batch_size) == (1e-3, 16)
    args = resolve_defaults(parse_args(["--admm", "--config-file", "c3d_2.53x_v2", "--lr", "0.01"]))
    assert (args.defaults, args.lr, args.batch_size) == ("rt3d", 0.01, 32)  # the command line wins


@pytest.mark.parametrize("argv,says", [
    (["--admm", "--sparsity", "krc", "--config-file", "c3d_1.93x"], "use --sparsity kgc"),
    (["--admm", "--sparsity", "kgc", "kgr", "--config-file", "c3d_1.93x", "c3d_1.76x_uniform"], "'kgr kgc'"),
    (["--admm", "--sparsity", "kgr", "kgc", "--config-file", "c3d_1.93x"], "one type per --config-file"),
    (["--admm", "--teacharch", "s3d", "--arch", "c3d", "--config-file", "c3d_1.93x"], "built like the student"),
    (["--admm", "--norm", "coco", "--config-file", "c3d_1.93x"], "--norm"),
    (["--train", "--dataset", "kinetics"], "--dataset"),
    (["--train", "--no-cuda", "--device", "cuda"], "--device"),
    (["--train", "--lr-scheduler", "poly"], "--lr-scheduler"),
])
def test_refused_original_spellings_are_one_line(argv, says, capfd):
    from opt_main import cli

    assert cli(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_multi_gpu_and_no_cuda_say_what_is_used_instead(capsys):
    args = resolve_defaults(parse_args(["--train", "--multi-gpu", "--no-cuda"]))
    err = capsys.readouterr().err
    assert args.device == "cpu" and "torchrun" in err and "--device cpu" in err


def test_no_tricks_turns_the_tricks_off():
    args = resolve_defaults(parse_args(["--train", "--no-tricks", "--warmup", "--smooth", "--mixup"]))
    assert (args.warmup, args.mixup, args.smooth_eps, args.lr_scheduler) == (False, False, 0.0, "default")


def test_adam_has_no_weight_decay_unless_asked():
    assert resolve_defaults(parse_args(["--train", "--optimizer", "adam"])).weight_decay == 0.0
    assert resolve_defaults(parse_args(["--train"])).weight_decay == 5e-4
    assert resolve_defaults(parse_args(["--train", "--optimizer", "adam", "--wd", "1e-4"])).weight_decay == 1e-4


# ------------------------------------------------------------------------------------------------- schedules
def lrs(kind: str, steps_per_epoch: int, epochs: int, warmup: int = 0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, kind=kind, lr=0.1, total_iters=epochs * steps_per_epoch, warmup_iters=warmup,
                            steps_per_epoch=steps_per_epoch, epochs=epochs)
    out = []
    for _ in range(epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_default_schedule_halves_every_fifth_of_the_epochs():
    got = lrs("default", 3, 10)  # every max(1, int(10 * 0.2)) = 2 epochs = 6 steps
    want = [0.1 * 0.5 ** (s // 6) for s in range(30)]
    assert got == pytest.approx(want)
    assert lrs("default", 2, 3) == pytest.approx([0.1 * 0.5 ** (s // 2) for s in range(6)])  # max(1, int(0.6))


def test_multistep_halves_at_45_90_120():
    got = lrs("multistep", 1, 130)
    assert got[44] == pytest.approx(0.1) and got[45] == pytest.approx(0.05) and got[90] == pytest.approx(0.025)
    assert got[119] == pytest.approx(0.025) and got[120] == pytest.approx(0.0125)


def test_schedules_start_after_warmup():
    got = lrs("default", 1, 10, warmup=3)
    assert got[0] == pytest.approx(1e-5) and got[3] == pytest.approx(0.1) and got[5] == pytest.approx(0.05)


def test_tcad_reweighting_lr_by_hand():
    f = tcad_rew_factor(steps_per_epoch=4)
    lr = 1.0
    for epoch in range(130):
        if epoch >= 1:
            lr *= 1.6 if epoch in (10, 20, 30, 40, 50, 75, 100, 125) else 0.98
        assert all(f(epoch * 4 + k) == pytest.approx(lr, rel=1e-9) for k in range(4)), epoch


def test_accumulation_keeps_the_cosine_above_zero_until_the_last_epoch():
    args = argparse.Namespace(total_epochs=3, accum_steps=2, warmup=False, warmup_epochs=0, lr_scheduler="cosine",
                              lr=0.1, warmup_lr=1e-5, rew_schedule="every")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = hooks_scheduler(args, opt, iters_per_epoch=5, phase="train")  # 3 optimizer steps per epoch
    seen = []
    for _ in range(9):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[-1] > 0.002 and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------- losses, masks
def test_soft_ce_distillation_by_hand():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    T, a = 3.0, 0.5
    ce = torch.nn.CrossEntropyLoss()
    soft = -sum(float((F.softmax(t[i] / T, 0) * F.log_softmax(s[i] / T, 0)).sum()) for i in range(4)) / 4
    want = (1 - a) * float(ce(s, y)) + a * soft
    got = distillation_loss(s, t, y, temperature=T, alpha=a, ce=ce, kind="soft-ce")
    assert float(got) == pytest.approx(want, rel=1e-6)
    kl = sum(float((F.softmax(t[i] / T, 0) * (F.log_softmax(t[i] / T, 0) - F.log_softmax(s[i] / T, 0))).sum())
             for i in range(4)) / 4
    assert float(distillation_loss(s, t, y, temperature=T, alpha=a, ce=ce)) == \
        pytest.approx((1 - a) * float(ce(s, y)) + a * T * T * kl, rel=1e-6)


@pytest.mark.parametrize("rounding,removed", [("half-up", 5), ("ceil", 6)])
def test_kgr_rounding_rows_removed_per_group(rounding, removed):
    torch.manual_seed(0)
    w = torch.randn(16, 16, 3, 3, 3)
    keep = projection_mask(w, LayerRule("kgr", {"kgr": 0.67}, (8, 8), kgr_rounding=rounding))
    rows = keep.view(2, 8, 2, 8, 27).any(dim=(3, 4))  # [row band, row, column band]: a kept row of a group
    assert (rows.sum(1) == 8 - removed).all()  # 0.67 * 8 = 5.36: 5 rows (62.5%) or, as TCAD, 6 (75%)


def test_tcad_splits_the_kgrc_penalty_between_its_profiles():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(8, 8, 3))
    rules = {"0.weight": LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.5}, (8, 8))}
    whole = ReweightedGroupLasso(rules, 1e-3, 1e-6, units="all")
    split = ReweightedGroupLasso(rules, 1e-3, 1e-6, units="all", split=True)
    assert float(split.penalty(model).detach()) == pytest.approx(float(whole.penalty(model).detach()) / 2, rel=1e-6)


def test_mixup_is_drawn_from_seed_epoch_and_iteration():
    from training.trainer import Trainer

    t = Trainer.__new__(Trainer)
    t.args, t.rank, t.iteration = argparse.Namespace(seed=3, alpha=0.4), 0, 7
    x, y = torch.randn(6, 3, 2, 4, 4), torch.arange(6)
    (a, ya, la), (b, yb, lb) = t._mixup(x, y, epoch=2), t._mixup(x, y, epoch=2)
    assert torch.equal(a, b) and torch.equal(ya, yb) and la == lb and 0 < la < 1
    assert sorted(ya.tolist()) == list(range(6))
    i = int((y == ya[0]).nonzero())  # the first clip is mixed with its partner at lambda
    assert torch.allclose(a[0], la * x[0] + (1 - la) * x[i])
    t.iteration = 8
    assert t._mixup(x, y, epoch=2)[2] != la


# ----------------------------------------------------------------------------------------------- normalisation
def test_norm_follows_the_starting_weights():
    notes = []

    def chosen(start, norm=None, arch="c3d", pretrained=False):
        args = argparse.Namespace(norm=norm, arch=arch, pretrained=pretrained)
        notes.append(choose_norm(args, start, "x.pt"))
        return args.norm

    assert chosen({"model": {}, "args": {"norm": "imagenet"}}) == "imagenet"
    assert chosen({"model": {}, "args": {"lr": 0.1}}) == "kinetics"  # this tool's, from before --norm
    assert chosen({}) == "kinetics"
    assert chosen({}, arch="r2+1d", pretrained=True) == "kinetics"  # torchvision's weights
    assert chosen({}, arch="s3d-rt3d") == "imagenet"  # RT3D's own S3D: only its releases' weights exist
    assert not any(notes)
    assert chosen({"state_dict": {}}) == "imagenet" and "x.pt was not made by this tool" in notes[-1]
    assert chosen({"state_dict": {}}, norm="kinetics") == "kinetics" and notes[-1] is None


def test_a_checkpoint_trained_with_imagenet_norm_evaluates_with_it(synthetic, tmp_path, monkeypatch):
    from opt_main import cli

    small = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--short-side", "40",
             "--batch-size", "4", "--workers", "0", "--data-location", str(synthetic["lmdb"])]
    assert cli([*small, "--train", "--epochs", "1", "--max-iters", "1", "--norm", "imagenet", "--save-dir",
                str(tmp_path), "--name", "dense"]) == 0
    seen = []
    import datasets

    real = datasets.build_dataset
    monkeypatch.setattr(datasets, "build_dataset", lambda *a, **kw: seen.append(kw["mean"]) or real(*a, **kw))
    assert cli([*small, "--evaluate", "--load-path", str(tmp_path / "dense" / "dense.pth")]) == 0
    assert seen and all(m == normalization("imagenet")[0] for m in seen)
    ckpt = torch.load(tmp_path / "dense" / "dense.pth", weights_only=True)
    assert ckpt["args"]["norm"] == "imagenet"


def test_make_data_uses_the_chosen_norm(synthetic, monkeypatch):
    import datasets

    seen = []
    real = datasets.build_dataset
    monkeypatch.setattr(datasets, "build_dataset", lambda *a, **kw: seen.append((kw["mean"], kw["std"])) or
                        real(*a, **kw))
    args = resolve_defaults(parse_args(["--train", "--data-location", str(synthetic["lmdb"]), "--norm", "imagenet",
                                        "--clip-len", "8", "--crop-size", "32", "--short-side", "40"]))
    make_data(args)
    assert seen == [normalization("imagenet")] * 2


# ------------------------------------------------------------------------------------- the scripts, end to end
SHRINK = ["--epoch", "1", "--rho-num", "1", "--max-iters", "2", "--width-mult", "0.25", "--clip-len", "8",
          "--crop-size", "32", "--short-side", "40", "--batch-size", "4", "--workers", "0"]


def run_script(name: str, cwd: Path, data: Path) -> list[subprocess.CompletedProcess]:
    outs = []
    for argv in script_lines(SCRIPTS / name):
        out = subprocess.run([sys.executable, str(ROOT / "opt_main.py"), *argv, *SHRINK, "--data-location", str(data)],
                             cwd=cwd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        outs.append(out)
    return outs


def foreign_baseline(path: Path, num_classes: int) -> None:
    """A baseline as the releases save it: {'state_dict': ...} with DataParallel's 'module.' prefix, no options."""
    torch.manual_seed(0)
    model = build_model("c3d", num_classes, width_mult=0.25, clip_len=8, crop_size=32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


def test_rt3d_script_runs_as_typed(synthetic, tmp_path):
    foreign_baseline(tmp_path / "checkpoint" / "ucf101_c3d_transfer_epoch-14_top1-81.571.pt", 3)
    admm, retrain = run_script("rt3d_blk-kgs_c3d.sh", tmp_path, synthetic["lmdb"])
    assert "ucf101_c3d_transfer_epoch-14" in admm.stdout and "ImageNet" in admm.stderr
    assert "defaults: RT3D's" in admm.stderr and "torchrun" in admm.stderr
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*masked_retrain/retrained.pth")), weights_only=True)
    assert ckpt["args"]["norm"] == "imagenet" and ckpt["args"]["kd_loss"] == "soft-ce"
    assert ckpt["profile"]["sparsity"] == "kgs" and ckpt["profile"]["group_size"] == [8, 4]
    assert ckpt["masks"] and all(float(m.float().mean()) < 1 for m in ckpt["masks"].values())


def test_tcad_script_runs_as_typed(synthetic, tmp_path):
    foreign_baseline(tmp_path / "checkpoints" / "baseline" / "c3d_ucf101.pt", 3)
    rew, retrain = run_script("tcad_kgrc_c3d.sh", tmp_path, synthetic["lmdb"])
    assert "defaults: TCAD's" in rew.stderr
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*_rew/rew.pth")), weights_only=True)
    assert ckpt["args"]["rew_schedule"] == "tcad" and ckpt["args"]["accum_steps"] == 4
    assert ckpt["profile"]["sparsity"] == "kgrc"
    done = torch.load(next((tmp_path / "checkpoints").glob("*masked_retrain/retrained.pth")), weights_only=True)
    assert done["args"]["distill"] and done["masks"]
    assert math.isfinite(done["metrics"]["video_top1"])


def test_tcad_reweighting_schedule_on_a_tiny_run(synthetic, tmp_path, monkeypatch):
    from opt_main import cli

    refreshed = []
    real = ReweightedGroupLasso.update_alpha
    monkeypatch.setattr(ReweightedGroupLasso, "update_alpha",
                        lambda self, model: refreshed.append(1) or real(self, model))
    foreign_baseline(tmp_path / "base.pt", 3)
    argv = ["--rew", "--rew-schedule", "tcad", "--config-file", "c3d_kgrc_3.04x", "--load-path",
            str(tmp_path / "base.pt"), "--epochs", "12", "--lr", "0.001", "--data-location", str(synthetic["lmdb"]),
            "--save-dir", str(tmp_path), "--name", "rew", *SHRINK[2:]]
    argv[argv.index("--max-iters") + 1] = "1"
    assert cli(argv) == 0
    assert len(refreshed) == 2  # at the start and at the 11th epoch (0-based 10)
    history = torch.load(tmp_path / "rew" / "rew.pth", weights_only=True)["history"]
    f = tcad_rew_factor(1)
    assert [h["lr"] for h in history] == pytest.approx([1e-3 * f(e + 1) for e in range(12)], rel=1e-9)


@pytest.mark.parametrize("script", ["kgrc_c3d.sh", "blk-kgs_c3d.sh"])
def test_our_recipe_scripts_run_shrunk(script, synthetic, tmp_path):
    foreign_baseline(tmp_path / "base.pt", 3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DATA": str(synthetic["lmdb"]), "SAVE": str(tmp_path / "runs"),
           "BASELINE": str(tmp_path / "base.pt"), "PRUNE_EPOCHS": "1", "RETRAIN_EPOCHS": "1", "RHO_NUM": "1",
           "EXTRA": " ".join(SHRINK[4:])}
    out = subprocess.run(["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = next((tmp_path / "runs").glob("*_retrain/report.json"))
    assert json.loads(report.read_text())["reduction"] > 1.5
    done = torch.load(next((tmp_path / "runs").glob("*_retrain/retrained.pth")), weights_only=True)
    paper = "tcad" if script.startswith("kg") else "rt3d"
    assert done["args"]["defaults"] == paper and done["args"]["distill"] and done["args"]["epochs"] == 1


def test_pretrained_offline_and_not_cached_is_one_line(synthetic, tmp_path, monkeypatch, capfd):
    from opt_main import cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cli(["--train", "--arch", "r2+1d-pretrained", "--data-location", str(synthetic["lmdb"]), "--workers", "0",
                "--save-dir", str(tmp_path)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "r2plus1d_18" in err[0] and str(tmp_path / "torch") in err[0], err


def test_sports1m_c3d_weights_evaluate_through_load_path(synthetic, tmp_path):
    from opt_main import cli

    torch.manual_seed(0)
    ours = build_model("c3d", 3, width_mult=0.25, clip_len=8, crop_size=32).state_dict()
    names = {"conv1": 0, "conv2": 3, "conv3a": 6, "conv3b": 8, "conv4a": 11, "conv4b": 13, "conv5a": 16, "conv5b": 18}
    sports = {f"features.{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in ours.items()
              if k.split(".")[0] in names}
    sports.update({k.replace("fc6", "classifier.0").replace("fc7", "classifier.3"): v for k, v in ours.items()
                   if k.startswith(("fc6", "fc7"))})
    torch.save(sports, tmp_path / "c3d-pretrained.pth")
    assert cli(["--evaluate", "--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32",
                "--short-side", "40", "--workers", "0", "--batch-size", "4", "--data-location", str(synthetic["lmdb"]),
                "--load-path", str(tmp_path / "c3d-pretrained.pth")]) == 0
