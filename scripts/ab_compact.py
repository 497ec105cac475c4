#!/usr/bin/env python
"""Same-process A/B of the compact engine: an earlier commit's `compact/` against the working tree's.

    python scripts/ab_compact.py --before 10101cb --repeats 15 --json docs/bench/ab_issue18.json

The earlier engine is extracted with `git archive <rev> compact` into a temporary folder and imported as the
package `compact_<rev>` (its modules import each other relatively; its C++ extension's name hashes its sources, so
both builds load side by side). For each row (model, profile, batch size) both engines compile the same pruned
model (random weights seeded by --seed, projected onto the profile), their outputs are compared with each other and
with the masked dense model, the unpruned convs' timed dense-path choices of the new engine are copied into the old
one (so a noisy first-call choice does not decide the comparison), and both are timed interleaved, the order
alternating every round, after --warmup rounds. Reported per row: the median of each side, new/old of the medians,
the median of the per-round ratios, and new/old of the fastest repeats. Defaults: the README speed table's C3D and
R(2+1)D KGRC rows at batch 1 and 8, 16x112x112 clips, 2 threads.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compact  # noqa: E402
from compact.surgery import masked_dense_copy  # noqa: E402
from models import build_model  # noqa: E402
from pruning import hard_prune, load_profile  # noqa: E402

ROWS = ["c3d:c3d_kgrc_3.04x:1", "c3d:c3d_kgrc_3.04x:8", "r2+1d:r2+1d_kgrc_3.05x:1", "r2+1d:r2+1d_kgrc_3.05x:8"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="10101cb", help="git revision of the old engine")
    p.add_argument("--row", action="append", default=None, metavar="ARCH:PROFILE:BATCH",
                   help=f"a row to time (repeatable; default: {' '.join(ROWS)})")
    p.add_argument("--clip", type=int, nargs=3, default=(16, 112, 112), metavar=("T", "H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per row (each runs both engines once)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (the first one times dense paths)")
    p.add_argument("--num-classes", type=int, default=101)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    return p.parse_args(argv)


def load_old_engine(rev: str) -> ModuleType:
    """`compact/` at `rev`, imported as the package `compact_<rev>`."""
    name = f"compact_{rev}"
    dest = Path(tempfile.mkdtemp(prefix="ab_compact_"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "compact"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    (dest / "compact").rename(dest / name)
    sys.path.insert(0, str(dest))
    return importlib.import_module(name)


def align_dense_choices(new: nn.Module, old: nn.Module) -> int:
    """Copy the new engine's timed dense-path choices into the old one's modules (same names); returns how many."""
    olds = dict(old.named_modules())
    copied = 0
    for name, m in new.named_modules():
        o = olds.get(name)
        choice = getattr(m, "_choice", None)
        if o is None or choice is None or not hasattr(o, "_choice"):
            continue
        if type(m).__name__ == "CompactC3D":  # its key spelled (name, n, c, dims, threads); before (name, (n, c,
            o._choice = {(k[0], (k[1], k[2], *k[3]), k[4]): v for k, v in choice.items()}  # t, h, w), threads)
        else:
            o._choice = dict(choice)
        copied += len(choice)
    return copied


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def time_ab(fns: dict[str, object], repeats: int, warmup: int) -> dict[str, list[float]]:
    """ms of every timed round of each side, the order alternating round by round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(warmup + repeats):
        for k in keys if r % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            dt = (time.perf_counter() - t0) * 1e3
            if r >= warmup:
                times[k].append(dt)
    return times


def machine() -> dict:
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = set(line.split(":", 1)[1].split())
                info["avx512f"], info["avx2"] = "avx512f" in flags, "avx2" in flags
    except (OSError, subprocess.CalledProcessError):
        pass
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "compact"], capture_output=True,
                           text=True)
    info["after"] = head.stdout.strip() + ("+dirty compact/" if dirty.stdout.strip() else "")
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    old_pkg = load_old_engine(args.before)
    engines = {"old": old_pkg, "new": compact}
    exts = {k: e.load_kernels() for k, e in engines.items()}
    if any(x is None for x in exts.values()):
        raise SystemExit("both engines need their C++ kernels (g++, ninja; PRUNE3D_NO_KERNELS unset)")
    torch.set_num_threads(args.threads)
    for x in exts.values():
        x.set_num_threads(args.threads)
    info = machine() | {"before": args.before, "threads": args.threads, "clip": list(args.clip),
                        "isa": {k: x.isa() for k, x in exts.items()}, "repeats": args.repeats,
                        "warmup": args.warmup}
    print(json.dumps(info))
    rows = []
    for spec in args.row or ROWS:
        arch, profile, batch = spec.split(":")
        torch.manual_seed(args.seed)
        model = build_model(arch, args.num_classes, clip_len=args.clip[0], crop_size=args.clip[1]).eval()
        rules = load_profile(profile).resolve(model)
        masks = hard_prune(model, rules)
        compiled = {k: e.compile_sparse(copy.deepcopy(model), masks, rules=rules) for k, e in engines.items()}
        x = torch.randn(int(batch), 3, *args.clip)
        with torch.no_grad():
            y = {k: m(x) for k, m in compiled.items()}  # first calls: the dense-path timing happens here
            copied = align_dense_choices(compiled["new"], compiled["old"])
            ref = masked_dense_copy(model, masks)(x)
            errs = {"new_vs_old": rel_err(y["new"], y["old"]), "new_vs_dense": rel_err(y["new"], ref),
                    "old_vs_dense": rel_err(y["old"], ref)}
            if max(errs.values()) > 1e-5:
                raise SystemExit(f"{spec}: outputs differ {errs}")
            times = time_ab({k: (lambda m=m, x=x: m(x)) for k, m in compiled.items()}, args.repeats, args.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"arch": arch, "profile": profile, "batch": int(batch), "old_ms": med["old"], "new_ms": med["new"],
               "ratio_medians": med["new"] / med["old"],
               "ratio_paired": statistics.median(n / o for n, o in zip(times["new"], times["old"])),
               "ratio_fastest": min(times["new"]) / min(times["old"]), "dense_choices_copied": copied,
               "times_ms": times, **errs}
        rows.append(row)
        print(f"{arch} {profile} batch {batch}: old {med['old']:.1f} ms, new {med['new']:.1f} ms, new/old "
              f"{row['ratio_medians']:.3f} (paired {row['ratio_paired']:.3f}, fastest {row['ratio_fastest']:.3f}); "
              f"max rel err new/old {errs['new_vs_old']:.1e}", flush=True)
        del compiled, model
    print("\n| model / profile | batch | old (median) | new (median) | new/old | paired | fastest |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} {r['profile']} | {r['batch']} | {r['old_ms']:.1f} ms | {r['new_ms']:.1f} ms | "
              f"{r['ratio_medians']:.3f} | {r['ratio_paired']:.3f} | {r['ratio_fastest']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
