"""Where a run's inputs and outputs live: the data folder, the run folder, and the checkpoint a phase starts from
when --load-path is not given (the layouts the original projects' scripts and READMEs use)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pruning import UserError


def data_root(location: str, dataset: str) -> str:
    """This project's LMDB folder, or the original READMEs' layout: <root>/<dataset>_frame/{train,val}.lmdb or
    frame folders with train.txt/val.txt."""
    root = Path(location)
    for cand in (root, root / f"{dataset}_frame", root / "datasets" / f"{dataset}_frame"):
        if any((cand / n).exists() for n in ("train.lmdb", "train.lmdb.partial", "train.txt")):
            return str(cand)
    return str(root)


def profile_stem(spec: str) -> str:
    """'profiles/c3d_kgs_3.57x.yaml' -> 'c3d_kgs_3.57x' (Path.stem would cut at the '.57x')."""
    name = Path(spec).name
    return name.rsplit(".", 1)[0] if name.endswith((".yaml", ".yml")) else name


def run_dir_for(args: argparse.Namespace) -> Path:
    if args.name:
        return Path(args.save_dir) / args.name
    prof = "+".join(profile_stem(c) for c in args.config_file) if args.config_file else "dense"
    return Path(args.save_dir) / f"{args.arch}_{args.dataset}_{prof}_{args.phase}"


def find_start(args: argparse.Namespace) -> str | None:
    """Without --load-path: the baseline in checkpoints/baseline/ or RT3D's checkpoint/ for this arch and dataset
    (ADMM, rew), or the ADMM/rew result of the same arch, dataset and profile (masked retraining), as the original
    scripts expect."""
    if args.phase == "masked_retrain":
        stem = run_dir_for(args).name.rsplit("_", 2)[0]
        found = [p for ph, f in (("admm", "admm.pth"), ("rew", "rew.pth"))
                 for p in [Path(args.save_dir) / f"{stem}_{ph}" / f] if p.is_file()]
        where = f"{args.save_dir}/{stem}_admm/admm.pth or {stem}_rew/rew.pth"
    else:
        # this tool's checkpoints/baseline/, and RT3D's checkpoint/ (its baselines are named *.pt)
        folders = [Path(args.save_dir) / "baseline", Path("checkpoint")]
        names = {args.arch, args.arch.replace("+", "plus"), args.arch.replace("2+1d", "21d")}
        files = sorted(p for base in folders for ext in ("*.pth", "*.pt") for p in base.glob(ext))
        found = [p for p in files if any(n in p.name.lower() for n in names) and args.dataset.lower() in p.name.lower()]
        have = ", ".join(p.name for p in files) or "none"
        where = f"{folders[0]}/ or {folders[1]}/ *{args.arch}*{args.dataset}*.pth|.pt (there: {have})"
    if len(found) == 1:
        print(f"--load-path not given: using {found[0]}")
        return str(found[0])
    if len(found) > 1:
        raise UserError(f"--load-path not given and several candidates match: {', '.join(map(str, found))}; "
                        "pass --load-path")
    return None if args.phase == "train" else _missing(where)


def _missing(where: str):
    raise UserError(f"--load-path not given and nothing found at {where}; pass --load-path")
