"""The driver on tiny synthetic data: phases, bit-exact resume after SIGKILL, DDP with gloo, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models import build_model
from pruning import load_profile
from tests.test_projections import check_group_counts
from training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--short-side", "40",
         "--batch-size", "4", "--workers", "0", "--dataset", "synthetic"]
PROFILE = "c3d_kgrc_3.04x"


def run(args: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "opt_main.py", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                         **kw)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def sigterm_group_after_first_save(args: list[str], last: Path, delay: float) -> tuple[int, str]:
    """Start opt_main in its own process group, wait for its first last.pth, wait `delay` s more, SIGTERM the
    whole group (as a scheduler does) and return (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "opt_main.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture(scope="module")
def dense(synthetic, tmp_path_factory):
    save = tmp_path_factory.mktemp("runs")
    run(["--train", *SMALL, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(save), "--name", "dense",
         "--epochs", "1", "--lr", "0.01"])
    return save / "dense" / "dense.pth"


def admm_args(synthetic, save, name):
    return ["--admm", *SMALL, "--data-location", str(synthetic["lmdb"]), "--config-file", PROFILE, "--save-dir",
            str(save), "--name", name, "--epochs", "1", "--rho-num", "3", "--admm-epochs", "1", "--lr", "0.01"]


def test_admm_then_masked_retrain_keep_the_pattern(synthetic, dense, tmp_path):
    run(admm_args(synthetic, tmp_path, "admm") + ["--load-path", str(dense), "--rho-schedule", "stages"])
    admm = torch.load(tmp_path / "admm" / "admm.pth", weights_only=True)
    assert set(admm["admm"]) >= {"Z", "U", "rho", "stage"} and admm["admm"]["stage"] == 2
    assert set(admm["admm"]["rho"].values()) == {1e-4 * 100}  # the published x10 per stage
    run(["--masked-retrain", *SMALL, "--data-location", str(synthetic["lmdb"]), "--config-file", PROFILE,
         "--save-dir", str(tmp_path), "--name", "rt", "--epochs", "2", "--load-path",
         str(tmp_path / "admm" / "admm.pth"), "--warmup", "--warmup-epochs", "1", "--distill", "--lr", "0.01"])
    ckpt = torch.load(tmp_path / "rt" / "retrained.pth", weights_only=True)
    model = build_model("c3d", 3, width_mult=0.25, clip_len=8, crop_size=32)
    rules = load_profile(PROFILE).resolve(model)
    assert set(ckpt["masks"]) == set(rules)
    for name, rule in rules.items():
        w, m = ckpt["model"][name], ckpt["masks"][name]
        assert torch.all(w[~m] == 0)  # the pattern held through retraining
        check_group_counts(m, rule)
    assert (tmp_path / "rt" / "metrics.jsonl").read_text().count("\n") == 2
    assert (tmp_path / "rt" / "args.yaml").is_file()


def test_resume_after_sigkill_is_bit_exact(synthetic, dense, tmp_path):
    base = admm_args(synthetic, tmp_path, "a") + ["--load-path", str(dense)]
    run(base)
    killed = admm_args(synthetic, tmp_path, "b") + ["--load-path", str(dense)]
    proc = subprocess.Popen([sys.executable, "opt_main.py", *killed], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = tmp_path / "b" / "last.pth"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(last, weights_only=True)["epoch"] < 3, "killed too late to test resuming"
    out = run(killed + ["--resume", "auto"])
    assert "resumed admm at epoch" in out.stdout
    a = torch.load(tmp_path / "a" / "admm.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "admm.pth", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["admm"]["U"]:
        assert torch.equal(a["admm"]["U"][key], b["admm"]["U"][key])
    # the balancing changed rho before the kill (at the first epoch's Z/U step), and the same way in both runs
    assert a["admm"]["rho"] == b["admm"]["rho"] and any(r != 1e-4 for r in a["admm"]["rho"].values())


def test_ddp_two_gloo_processes(synthetic, dense, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "opt_main.py"]
    out = subprocess.run(torchrun + admm_args(synthetic, tmp_path, "ddp_admm") + ["--load-path", str(dense)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "masks identical on 2 ranks" in out.stdout
    rt = subprocess.run(torchrun + ["--masked-retrain", *SMALL, "--data-location", str(synthetic["lmdb"]),
                                    "--config-file", PROFILE, "--save-dir", str(tmp_path), "--name", "ddp_rt",
                                    "--epochs", "1", "--load-path", str(tmp_path / "ddp_admm" / "admm.pth")],
                        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert rt.returncode == 0, rt.stderr[-3000:]
    assert "masks identical on 2 ranks" in rt.stdout
    files = sorted(p.name for p in (tmp_path / "ddp_rt").iterdir() if p.suffix == ".pth")
    assert files == ["best.pth", "last.pth", "retrained.pth"]  # rank 0 alone writes
    assert sum(1 for p in (tmp_path / "ddp_rt").iterdir() if p.name.startswith(".")) == 0
    # only rank 0 logs epochs
    assert (tmp_path / "ddp_rt" / "metrics.jsonl").read_text().count("\n") == 1


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs(synthetic, dense, tmp_path):
    data = ["--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path), "--epochs", "1"]
    # a baseline of another arch
    other = tmp_path / "r21d.pth"
    save_checkpoint({"model": build_model("r2+1d", 3).state_dict()}, other)
    err = _one_line_error(run(["--admm", *SMALL, *data, "--config-file", PROFILE, "--load-path", str(other)],
                              check=False))
    assert "r21d.pth" in err and "--arch c3d" in err
    # a truncated checkpoint
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(dense.read_bytes()[:1000])
    err = _one_line_error(run(["--admm", *SMALL, *data, "--config-file", PROFILE, "--load-path", str(trunc)],
                              check=False))
    assert "trunc.pth" in err and "truncated" in err
    # masked retraining from a dense model
    err = _one_line_error(run(["--masked-retrain", *SMALL, *data, "--config-file", PROFILE, "--load-path",
                               str(dense)], check=False))
    assert "no pruned weights" in err
    # resuming with another profile
    run(["--admm", *SMALL, *data, "--config-file", PROFILE, "--load-path", str(dense), "--name", "p",
         "--rho-num", "1"])
    err = _one_line_error(run(["--admm", *SMALL, *data, "--config-file", "c3d_kgr_1.76x", "--load-path",
                               str(dense), "--resume", str(tmp_path / "p" / "last.pth")], check=False))
    assert "another prune profile" in err


def test_demo_and_ablation_scripts_end_to_end_at_toy_size(tmp_path):
    """scripts/demo.sh itself (every step, the summary and the figures) with a handful of videos and epochs, then
    scripts/ablation.sh on its output; the final checkpoints hold their profiles' patterns exactly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEED": "3", "OUT": str(tmp_path / "out" / "seed3"),
           "DATA": str(tmp_path / "data" / "seed3"), "CLASSES": "3", "VIDEOS": "4", "FRAMES": "16",
           "DENSE_EPOCHS": "1", "ADMM_EPOCHS": "1", "RETRAIN_EPOCHS": "1"}
    out = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    summary = json.loads((tmp_path / "out" / "seed3" / "summary.json").read_text())
    assert summary["seed"] == 3 and len(summary["dense_last_epochs"]) == 1 and summary["admm_max_residual"] >= 0
    assert summary["chance"] == pytest.approx(1 / 3) and summary["reduction"] > 2
    assert 0 <= summary["dense_top1"] <= 1 and 0 <= summary["pruned_top1"] <= 1
    ckpt = torch.load(summary["pruned_checkpoint"], weights_only=True)
    model = build_model("c3d", 3, width_mult=0.25, clip_len=8, crop_size=56)
    rules = load_profile(PROFILE).resolve(model)
    for name, rule in rules.items():
        assert torch.all(ckpt["model"][name][~ckpt["masks"][name]] == 0)
        check_group_counts(ckpt["masks"][name], rule)
    figures = tmp_path / "out" / "seed3" / "retrain" / "figures"
    assert (figures / "macs_per_layer.png").stat().st_size > 0 and list(figures.glob("groups_*.png"))

    env.update(ROOT=str(tmp_path / "out"), DATA_ROOT=str(tmp_path / "data"), SEEDS="3",
               ABLATION_JSON=str(tmp_path / "ablation.json"), ABLATION_FIGURE=str(tmp_path / "ablation.png"))
    out = subprocess.run(["bash", "scripts/ablation.sh"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    ablation = json.loads((tmp_path / "ablation.json").read_text())
    assert list(ablation["rows"]) == ["oneshot-kgrc", "admm-kgrc", "rew-kgrc", "admm-filter", "admm-irregular",
                                      "admm-kgs"]
    kgrc = ablation["rows"]["admm-kgrc"]["runs"][0]["reduction"]
    for name, row in ablation["rows"].items():  # every row at the KGRC profile's MAC reduction (within 5%)
        assert abs(row["runs"][0]["reduction"] / kgrc - 1) < 0.05, (name, row["runs"][0]["reduction"], kgrc)
    assert (tmp_path / "ablation.png").stat().st_size > 0
    # one-shot retrains for the pruning phase's epochs too: 1 + 1
    oneshot = tmp_path / "out" / "seed3" / "ablation" / "oneshot-kgrc" / "retrain" / "metrics.jsonl"
    assert oneshot.read_text().count("\n") == 2


def test_demo_and_ablation_refuse_bad_seeds(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data")}
    for script, var, value in (("demo.sh", "SEED", "1.5"), ("demo.sh", "SEED", "abc"), ("ablation.sh", "SEEDS", "0 x"),
                               ("ablation.sh", "SEEDS", "0")):
        out = subprocess.run(["bash", f"scripts/{script}"], cwd=ROOT, capture_output=True, text=True,
                             env={**env, var: value, "ROOT": str(tmp_path / "none")})
        assert out.returncode == 2, (script, value, out.stderr)
        err = out.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert value.split()[-1] in err or "demo.sh" in err, err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_sensitivity_search_on_the_train_split(synthetic, dense, tmp_path):
    out = tmp_path / "sens.yaml"
    run([*SMALL, "--data-location", str(synthetic["lmdb"]), "--load-path", str(dense), "--target-reduction", "2.0",
         "--sparsity-type", "kgrc", "--search", "sensitivity", "--search-split", "train", "--search-subset", "6",
         "--search-out", str(out), "--num-classes", "3"])
    text = out.read_text()
    assert "# measured on 6 train clips" in text and text.count("# sensitivity conv") == 7
    model = build_model("c3d", 3, width_mult=0.25, clip_len=8, crop_size=32)
    assert set(load_profile(str(out)).resolve(model)) <= {n for n, _ in model.named_parameters()}


def test_a_diverging_run_stops_with_one_line_and_saves_no_result(synthetic, tmp_path):
    out = run(["--train", *SMALL, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path),
               "--name", "nan", "--epochs", "6", "--lr", "10", "--momentum", "0.99"], check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()[-1]  # after the progress bars of the finite epochs
    assert err.startswith("error: epoch "), err
    assert "is nan" in err or "is inf" in err or "not finite" in err, err
    assert "--lr 10" in err
    assert not (tmp_path / "nan" / "dense.pth").exists()  # no phase result
    for name in ("last.pth", "best.pth"):  # what was saved is from finite epochs only
        ckpt = torch.load(tmp_path / "nan" / name, weights_only=True)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (read from /proc: its parent and its RANK variable)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def test_a_stopped_rank_ends_the_job_after_dist_timeout(synthetic, tmp_path):
    """kill -STOP on rank 1 mid-training: rank 0's next collective gives up after --dist-timeout (here 12 s, not
    gloo's 30 minutes) and the job ends with one line naming the option."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "opt_main.py",
           "--train", *SMALL, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path), "--name", "hang",
           "--epochs", "200", "--lr", "0.01", "--dist-timeout", "0.2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "hang" / "last.pth").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        pid = _worker_pid(proc.pid, 1)
        assert pid is not None and proc.poll() is None, "training did not start under torchrun"
        os.kill(pid, signal.SIGSTOP)
        stopped = time.time()
        _, err = proc.communicate(timeout=180)
        took = time.time() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 120, took  # seconds, not gloo's default of 30 minutes
    assert "did not answer within --dist-timeout 0.2 min" in err, err[-3000:]


def test_a_second_run_on_the_same_folder_stops_with_the_first_ones_pid(synthetic, tmp_path):
    first = subprocess.Popen([sys.executable, "opt_main.py", "--train", *SMALL, "--data-location",
                              str(synthetic["lmdb"]), "--save-dir", str(tmp_path), "--name", "same", "--epochs", "200"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 300
        while not (tmp_path / "same" / "args.yaml").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        second = run(["--train", *SMALL, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path),
                      "--name", "same", "--epochs", "1"], check=False)
        err = _one_line_error(second)
        assert f"pid {first.pid}" in err and "--name" in err, err
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    # the lock went with the killed process: the folder can be resumed
    out = run(["--train", *SMALL, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path),
               "--name", "same", "--epochs", "1", "--resume", "auto"], check=False)
    assert out.returncode == 0, out.stderr[-2000:]


def test_sigterm_to_the_process_group_with_loader_workers_saves_and_resumes(synthetic, tmp_path):
    """What Slurm, Kubernetes, docker stop and systemd do: SIGTERM to every process of the group, loader workers
    included. The workers ignore it, the main process saves last.pth and exits 143, and the run resumes."""
    small = list(SMALL)
    small[small.index("--workers") + 1] = "2"
    args = ["--train", *small, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path), "--name",
            "term", "--lr", "0.01"]
    for trial in range(3):  # the signal lands at a different point each time: between and inside batches
        (tmp_path / "term" / "last.pth").unlink(missing_ok=True)
        code, err = sigterm_group_after_first_save(args + ["--epochs", "500"], tmp_path / "term" / "last.pth",
                                                   0.3 * trial)
        assert code == 143, err[-3000:]
        assert "Traceback" not in err and "interrupted: saved" in err, err[-3000:]
        assert (tmp_path / "term" / "last.pth").is_file()
    out = run(args + ["--epochs", "1", "--resume", "auto"])
    assert "resumed train at epoch" in out.stdout


def test_sigterm_mid_epoch_with_workers_resumes_bit_identically(synthetic, tmp_path):
    """Each clip's augmentation comes from (seed, epoch, index), so after a stop inside an epoch the resumed run
    loads the same clips as the uninterrupted one whichever worker loads them."""
    small = list(SMALL)
    small[small.index("--workers") + 1] = "2"
    small[small.index("--batch-size") + 1] = "1"  # many iterations per epoch: room to stop inside one
    args = ["--train", *small, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path), "--epochs",
            "2", "--lr", "0.01", "--mixup", "--hflip"]
    run(args + ["--name", "whole"])
    for delay in (0.0, 0.4, 0.8, 1.5, 2.5):
        shutil.rmtree(tmp_path / "cut", ignore_errors=True)
        code, _ = sigterm_group_after_first_save(args + ["--name", "cut"], tmp_path / "cut" / "last.pth", delay)
        if code == 143 and torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["iteration"] > 0:
            break
    else:
        pytest.fail("never stopped inside the second epoch")
    run(args + ["--name", "cut", "--resume", "auto"])
    a = torch.load(tmp_path / "whole" / "dense.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "dense.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
