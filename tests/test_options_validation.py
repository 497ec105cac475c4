"""A bad option of opt_main.py ends the run at parse time: one line `error: ...` on stderr naming the option, the
value and what is allowed; exit code 2; no traceback. Valid values parse as before.

The table runs in-process through `opt_main.cli` (what `python opt_main.py` calls) with the file descriptors
captured; `test_real_processes` checks that a real `python opt_main.py` behaves the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import options
from opt_main import cli, resolve_defaults
from options import parse_args, phase_of

ROOT = Path(__file__).resolve().parent.parent
# the phase the brief names; small sizes so that a value wrongly accepted fails fast rather than slowly
REPORT = ["--report", "--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32"]


def bad(option: str, *values: str, phase: list[str] = REPORT, why: str = ""):
    return pytest.param([*phase, option, *values], option, values[-1], why, id=f"{option} {' '.join(values)}")


BAD = [
    # accepted today with a meaningless result
    bad("--lr", "nan"),
    bad("--lr", "1e6", why="not a learning rate"),
    bad("--kd-temperature", "0"),
    bad("--epochs", "0"),
    bad("--epochs", "-1"),
    bad("--rho-num", "0"),
    bad("--rho", "-1"),
    bad("--crop-size", "0"),
    bad("--max-iters", "0"),
    bad("--admm-iters", "0"),
    # a traceback today
    bad("--batch-size", "0"),
    bad("--batch-size", "-2"),
    bad("--lr", "-0.01"),
    bad("--momentum", "-1"),
    bad("--momentum", "1"),
    bad("--weight-decay", "-1"),
    bad("--workers", "-1"),
    bad("--accum-steps", "0"),
    bad("--admm-epochs", "0"),
    bad("--smooth-eps", "1.5"),
    bad("--dropout", "2"),
    bad("--clip-len", "0"),
    bad("--clip-len", "-4"),
    bad("--crop-size", "1", why="too small"),
    bad("--num-classes", "0"),
    bad("--num-classes", "-3"),
    bad("--device", "tpu9"),
    bad("--threads", "-1"),
    bad("--repeats", "0"),
    # the other numeric options
    bad("--kd-alpha", "1.5"),
    bad("--kd-alpha", "-0.1"),
    bad("--kd-off-epochs", "-1"),
    bad("--rew-target", "1"),
    bad("--rew-target", "-0.5"),
    bad("--rho-gamma", "0"),
    bad("--rho-gamma", "1"),
    bad("--rho-tau", "1"),
    bad("--rho-mu", "0.5"),
    bad("--rho-max", "0"),
    bad("--rho-tol", "nan"),
    bad("--rew-lambda", "-1"),
    bad("--rew-eps", "0"),
    bad("--rew-update-epochs", "0"),
    bad("--warmup-epochs", "-1"),
    bad("--warmup-lr", "-1"),
    bad("--test-clips", "0"),
    bad("--search-subset", "0"),
    bad("--target-reduction", "1", phase=["--arch", "c3d"]),
    bad("--target-reduction", "inf", phase=["--arch", "c3d"]),
    bad("--width-mult", "0"),
    bad("--width-mult", "inf"),
    bad("--short-side", "0"),
    bad("--group-size", "8", "0"),
    bad("--threads", "0"),
    bad("--print-freq", "0"),
    bad("--seed", str(2**70)),
    bad("--epochs", "abc"),
    bad("--epochs", "2.5"),
    bad("--lr", "fast"),
    bad("--optimizer", "lbfgs"),
]


def one_error_line(capfd, code: int) -> str:
    out = capfd.readouterr()
    assert code == 2, (out.out[-2000:], out.err[-2000:])
    assert "Traceback" not in out.err
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("argv, option, value, why", BAD)
def test_bad_option_is_one_line(argv, option, value, why, capfd):
    line = one_error_line(capfd, cli(argv))
    assert option in line and value in line and "allowed" in line, line
    assert why in line


def test_cuda_without_gpu(monkeypatch, capfd):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        line = one_error_line(capfd, cli([*REPORT, "--device", device]))
        assert f"--device: '{device}'" in line and "CUDA" in line and "allowed: cpu" in line, line


def test_device_index_beyond_the_machine(monkeypatch, capfd):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    line = one_error_line(capfd, cli([*REPORT, "--device", "cuda:2"]))
    assert "'cuda:2'" in line and "cuda:0 to cuda:1" in line, line


def test_huge_and_multiline_values_stay_one_short_line(capfd):
    for argv in ([*REPORT, "--epochs", "7" * 3000 + "x"], [*REPORT, "--optimizer", "y" * 100_000],
                 [*REPORT, "--arch", "c3d", "stray\nline"], [*REPORT, "--lr", "1\n2"]):
        line = one_error_line(capfd, cli(argv))
        assert len(line) < 450, line


def test_short_side_below_crop_when_training(capfd):
    line = one_error_line(capfd, cli(["--train", "--crop-size", "64", "--short-side", "32"]))
    assert "--short-side 32" in line and "--crop-size 64" in line, line


# ------------------------------------------------------------------------------------------------- --args-file
ARGS_FILES = [  # (content, what the line must also say)
    (b"epochs: 3\n\xff\xfe\n", "not UTF-8"),
    (b"epochs: [1, 2\nlr: 0.1\n", "not valid YAML at line 2"),
    (b"a: \x01\n", "not valid YAML"),
    (b"- epochs\n- 3\n", "mapping"),
    (b"just text\n", "mapping"),
    (b"epoch: 3\n", "unknown option 'epoch'; did you mean 'epochs'"),
    (b"epochs: abc\n", "epochs (--epochs): 'abc'"),
    (b"epochs: 0\n", "epochs (--epochs): '0'"),
    (b"epochs: null\n", "epochs (--epochs): null"),
    (b"lr: .nan\n", "lr (--lr): 'nan'"),
    (b"lr: 1e6\n", "not a learning rate"),
    (b"smooth_eps: 1.5\n", "smooth_eps (--smooth-eps)"),
    (b"batch_size: -2\n", "batch_size (--batch-size)"),
    (b"amp: off\n", "amp (--amp): false"),
    (b"optimizer: lbfgs\n", "optimizer (--optimizer): 'lbfgs'"),
    (b"distill: 1\n", "distill (--distill): 1"),
    (b"group_size: [8]\n", "group_size (--group-size)"),
    (b"group_size: [8, 0]\n", "group_size (--group-size): '0'"),
    (b"data_location: [a, b]\n", "data_location (--data-location)"),
    (b"device: tpu9\n", "--device: 'tpu9'"),
    (b"resume: auto\n", "--resume auto continues a training phase's run folder; --report reads a checkpoint"),
]


@pytest.mark.parametrize("content, says", ARGS_FILES, ids=[s for _, s in ARGS_FILES])
def test_bad_args_file_is_one_line(content, says, tmp_path, capfd):
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    line = one_error_line(capfd, cli([*REPORT, "--args-file", str(path)]))
    assert says in line, line
    assert says.startswith(("--device", "--resume")) or f"--args-file {path}:" in line, line


def test_args_file_missing_or_a_folder(tmp_path, capfd):
    assert "no such file" in one_error_line(capfd, cli([*REPORT, "--args-file", str(tmp_path / "none.yaml")]))
    assert "not a file" in one_error_line(capfd, cli([*REPORT, "--args-file", str(tmp_path)]))
    line = one_error_line(capfd, cli([*REPORT, "--args-file", "a" * 5000]))
    assert "cannot read it: File name too long" in line and len(line) < 200, line


def test_args_file_values_are_typed_and_the_command_line_wins(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nepochs: 2\nconfig_file: c3d_kgrc_3.04x\ngroup_size: [8, 4]\nhflip: false\n"
                    "device: null\namp: 'off'\nsplit: 2\nname: 2024\nmomentum: 0\n")  # split: a retired option
    args = parse_args(["--args-file", str(path), "--report", "--epochs", "5"])
    assert (args.lr, args.epochs, args.config_file, args.group_size) == (1e-3, 5, ["c3d_kgrc_3.04x"], [8, 4])
    assert (args.hflip, args.device, args.amp, args.name, args.momentum) == (False, None, "off", "2024", 0.0)
    assert not hasattr(args, "split")


def test_args_yaml_beside_a_checkpoint_loads(tmp_path):
    """save_args writes every option plus what resolve_defaults derived (phase, total_epochs)."""
    args = resolve_defaults(parse_args(["--train", "--epochs", "3", "--lr", "0.02"]))
    plain = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(plain, sort_keys=True))
    again = parse_args(["--args-file", str(path), "--report"])
    assert phase_of(again) == "report" and not again.train  # the command line's phase, not the file's
    assert (again.epochs, again.lr) == (3, 0.02)
    assert phase_of(parse_args(["--args-file", str(path)])) == "train"


# ------------------------------------------------------------------------------------------------ valid values
GOOD = [
    (["--lr", "0.01"], "lr", 0.01),
    (["--lr", "10"], "lr", 10.0),
    (["--smooth-eps", "0.1"], "smooth_eps", 0.1),
    (["--smooth-eps", "0"], "smooth_eps", 0.0),
    (["--device", "cpu"], "device", "cpu"),
    (["--momentum", "0"], "momentum", 0.0),
    (["--dropout", "0"], "dropout", 0.0),
    (["--kd-alpha", "1"], "kd_alpha", 1.0),
    (["--rew-target", "0"], "rew_target", 0.0),
    (["--weight-decay", "0"], "weight_decay", 0.0),
    (["--workers", "0"], "workers", 0),
    (["--warmup-epochs", "0"], "warmup_epochs", 0),
    (["--kd-off-epochs", "0"], "kd_off_epochs", 0),
    (["--crop-size", "16"], "crop_size", 16),
    (["--epoch", "1"], "epochs", 1),
    (["-b", "1"], "batch_size", 1),
    (["--batch_size", "4"], "batch_size", 4),
    (["--group-size", "8", "4"], "group_size", [8, 4]),
    (["--seed", "-1"], "seed", -1),
    (["--target-reduction", "3.0"], "target_reduction", 3.0),
    (["--rho-max", "50"], "rho_max", 50.0),
    (["--rho-gamma", "0.5"], "rho_gamma", 0.5),
    (["--rew-lambda", "0"], "rew_lambda", 0.0),
    (["--width-mult", "0.25"], "width_mult", 0.25),
]


@pytest.mark.parametrize("argv, dest, value", GOOD, ids=[" ".join(a) for a, _, _ in GOOD])
def test_valid_values_accepted(argv, dest, value):
    assert getattr(parse_args(argv), dest) == value


def test_defaults_filled_later_stay_none():
    args = parse_args(["--report"])
    for dest in ("rho_max", "admm_epochs", "batch_size", "num_classes", "crop_size", "short_side", "dropout",
                 "balanced", "hflip", "admm_iters", "max_iters", "threads", "target_reduction", "device"):
        assert getattr(args, dest) is None, dest


def test_every_numeric_option_is_checked():
    """No option is left with a bare int/float type, which would take nan, inf or a negative count."""
    bare = [a.option_strings[0] for a in options.get_args_parser()._actions
            if a.type in (int, float) and a.choices is None]
    assert bare == []


def test_help_still_exits_zero(capfd):
    assert cli(["--help"]) == 0
    assert "--lr" in capfd.readouterr().out


# ---------------------------------------------------------------------------------------------- real processes
def test_real_processes(tmp_path):
    """`python opt_main.py ...` itself: exit 2, one stderr line, no traceback (run side by side: ~one import)."""
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text("epochs: abc\n")
    cases = {"--batch-size": ["--batch-size", "0"], "--args-file": ["--args-file", str(yaml_path)]}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, "opt_main.py", "--report", "--arch", "c3d", *argv], cwd=ROOT,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, argv in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert err.startswith("error: ") and name in err, err


def test_no_phase_lists_every_phase_from_the_one_registry(capfd):
    import opt_main
    from options import PHASE_OPTIONS, PHASES

    assert set(opt_main.PHASES) == set(PHASES)
    assert opt_main.cli(["--arch", "c3d"]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: pick a phase")
    for flags, _ in PHASE_OPTIONS.values():
        assert flags[0] in err
