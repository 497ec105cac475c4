"""Profiles: shipped files agree with their names, legacy formats load, bad profiles fail with one clear line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import arch_info, build_model
from opt_main import cli
from pruning import ProfileError, hard_prune, load_profile
from pruning.profile import PROFILES_DIR, load_aliases
from pruning.report import build_report

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p for p in PROFILES_DIR.glob("*.yaml") if p.name != "aliases.yaml")


def arch_of(path: Path) -> str:
    return path.name.split("_")[0]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_matches_its_name(path):
    arch = arch_of(path)
    crop = arch_info(arch).crop_size
    model = build_model(arch, 101)
    torch.manual_seed(0)
    profile = load_profile(str(path))
    rules = profile.resolve(model)
    rep = build_report(model, hard_prune(model, rules), arch, (3, 16, crop, crop), rules)
    named = float(re.search(r"_([\d.]+)x\.yaml$", path.name).group(1))
    assert rep.reduction == pytest.approx(named, rel=0.01)


def test_every_published_name_resolves():
    aliases = load_aliases()
    for name in ("r2+1d-pretrained_3.20x", "c3d_3.57x", "c3d_2.53x_v2", "r2+1d-pretrained_2.56x", "s3d_2.09x",
                 "c3d_1.76x_uniform", "c3d_1.93x", "r2+1d_1.84x_uniform", "r2+1d_1.75x"):
        prof = load_profile(name)
        assert prof.sparsity == aliases[name]["sparsity"]


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_native_format_and_single_number_for_kgrc(tmp_path):
    p = load_profile(write(tmp_path, "sparsity: kgrc\ngroup_size: [4, 8]\nprune_ratios:\n"
                                     "  conv2.weight: {kgr: 0.5, kgc: 0.67}\n  conv3a.weight: 0.5\n"
                                     "  conv3b.weight: {kgr: 0.25}\n"))
    assert p.rules["conv2.weight"].ratios == {"kgr": 0.5, "kgc": 0.67}
    assert p.rules["conv3a.weight"].ratios == {"kgr": 0.5, "kgc": 0.5}
    assert p.rules["conv3b.weight"].sparsity == "kgr"
    assert p.group_size == (4, 8)
    again = load_profile(write(tmp_path, json.dumps(p.to_dict()), "again.yaml"))
    assert again.rules == p.rules


def test_legacy_rt3d_file_with_module_prefix(tmp_path):
    path = write(tmp_path, "prune_ratios:\n  module.conv2.weight: 0.85\n  module.conv3a.weight: 0.8\n")
    with pytest.raises(ProfileError, match="pass --sparsity-type"):
        load_profile(path)
    p = load_profile(path, sparsity="blk-kgs")
    assert p.sparsity == "kgs" and p.group_size == (8, 4)
    rules = p.resolve(build_model("c3d", 10, width_mult=0.25, clip_len=8, crop_size=32))
    assert set(rules) == {"conv2.weight", "conv3a.weight"}


def test_legacy_tcad_pair_makes_kgrc(tmp_path):
    kgr = write(tmp_path, "prune_ratios:\n  module.conv2.weight: 0.5\n  module.conv4b.weight: 0.5\n", "kgr.yaml")
    kgc = write(tmp_path, "prune_ratios:\n  module.conv2.weight: 0.67\n  module.conv3a.weight: 0.33\n", "kgc.yaml")
    p = load_profile([kgr, kgc])
    assert p.sparsity == "kgrc"
    assert p.rules["conv2.weight"].ratios == {"kgr": 0.5, "kgc": 0.67}
    assert p.rules["conv4b.weight"].sparsity == "kgr"
    assert p.rules["conv3a.weight"].sparsity == "kgc"
    shipped = load_profile(["c3d_kgr_1.76x", "c3d_kgc_1.93x"])
    assert shipped.rules == load_profile("c3d_kgrc_3.04x").rules


BAD = {
    "unknown layer": ("sparsity: kgr\nprune_ratios:\n  conv9.weight: 0.5\n", "conv9.weight", "nearest"),
    "ratio 1.0": ("sparsity: kgr\nprune_ratios:\n  conv2.weight: 1.0\n", "conv2.weight", "outside [0, 1)"),
    "negative": ("sparsity: kgr\nprune_ratios:\n  conv2.weight: -0.1\n", "conv2.weight", "outside [0, 1)"),
    "linear": ("sparsity: kgr\nprune_ratios:\n  fc6.weight: 0.5\n", "fc6.weight", "not a Conv3d weight"),
    "bias": ("sparsity: kgr\nprune_ratios:\n  conv2.bias: 0.5\n", "conv2.bias", "not a Conv3d weight"),
    "unknown type": ("sparsity: kgx\nprune_ratios:\n  conv2.weight: 0.5\n", "sparsity", "unknown sparsity type"),
    "unknown entry type": ("sparsity: kgr\nprune_ratios:\n  conv2.weight: {kgq: 0.5}\n", "conv2.weight",
                           "unknown sparsity type"),
    "malformed": ("sparsity: kgr\nprune_ratios: [\n  conv2.weight: 0.5\n", "not valid YAML", "line"),
    "not a number": ("sparsity: kgr\nprune_ratios:\n  conv2.weight: lots\n", "conv2.weight", "number"),
    "bad group size": ("sparsity: kgr\ngroup_size: [8]\nprune_ratios:\n  conv2.weight: 0.5\n", "group_size", "two"),
    "unknown top key": ("sparsity: kgr\nratios:\n  conv2.weight: 0.5\nprune_ratios: {conv2.weight: 0.5}\n",
                        "ratios", "unknown key"),
}


@pytest.mark.parametrize("case", [k for k in BAD if BAD[k][1]])
def test_bad_profile_is_one_clear_line(tmp_path, capsys, case):
    text, key, phrase = BAD[case]
    path = write(tmp_path, text)
    code = cli(["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32",
                "--config-file", path, "--report"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert path in err and key in err and phrase in err


def test_rule_that_removes_a_whole_layer_is_refused(tmp_path):
    path = write(tmp_path, "sparsity: kgc\nprune_ratios:\n  layer2.0.downsample.0.weight: 0.5\n")
    with pytest.raises(ProfileError, match="removes every column"):
        load_profile(path).resolve(build_model("r2+1d", 10))


def test_missing_profile_file(capsys):
    code = cli(["--arch", "c3d", "--config-file", "no_such_profile", "--report"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no_such_profile" in err and "not found" in err and len(err.splitlines()) == 1


def test_conflicting_cli_type(tmp_path):
    with pytest.raises(ProfileError, match="--sparsity-type"):
        load_profile("c3d_kgr_1.76x", sparsity="kgc")


def test_report_cli_subprocess_exit_code(tmp_path):
    """The real command line: non-zero exit and no traceback."""
    path = write(tmp_path, BAD["ratio 1.0"][0])
    out = subprocess.run([sys.executable, "opt_main.py", "--arch", "c3d", "--config-file", path, "--report"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "conv2.weight" in out.stderr


def test_yaml_bombs_and_non_utf8_profiles_are_one_short_line(tmp_path):
    """A 'billion laughs' profile (1 KB that expands to 10^9 strings through aliases) is refused at its first
    alias, before anything walks or prints it; a non-UTF-8 file is named as such."""
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(rows) + "\nprune_ratios: *a8\n")
    with pytest.raises(ProfileError, match="aliases") as e:
        load_profile(str(bomb))
    assert len(str(e.value)) < 300
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("prune_ratios: {conv2.weight: 0.5}  # é\n".encode("latin-1"))
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile(str(bad))
    assert cli(["--report", "--arch", "c3d", "--args-file", str(bomb)]) == 2
