"""Collect scripts/ablation.sh's runs into docs/ablation.json and its figure.

    python scripts/ablation_summary.py --root checkpoints/demo --seeds 0 1 2 --json docs/ablation.json \
        --figure docs/ablation.png
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models import build_model  # noqa: E402
from pruning import figures  # noqa: E402
from pruning.report import build_report  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402

# row -> (pruning-phase result relative to the seed's folder or None, retraining result)
ROWS = {
    "oneshot-kgrc": (None, "ablation/oneshot-kgrc/retrain"),
    "admm-kgrc": ("admm", "retrain"),
    "rew-kgrc": ("ablation/rew-kgrc/rew", "ablation/rew-kgrc/retrain"),
    "admm-filter": ("ablation/admm-filter/admm", "ablation/admm-filter/retrain"),
    "admm-irregular": ("ablation/admm-irregular/admm", "ablation/admm-irregular/retrain"),
    "admm-kgs": ("ablation/admm-kgs/admm", "ablation/admm-kgs/retrain"),
}


def reduction(checkpoint: str) -> float:
    """MAC reduction of a retrained checkpoint, counted from its masks at the clip it was trained on."""
    ckpt = load_checkpoint(checkpoint)
    a = ckpt["args"]
    model = build_model(a["arch"], a["num_classes"], width_mult=a["width_mult"], clip_len=a["clip_len"],
                        crop_size=a["crop_size"])
    model.load_state_dict(ckpt["model"])
    shape = (3, a["clip_len"], a["crop_size"], a["crop_size"])
    return build_report(model, {k: v.bool() for k, v in ckpt["masks"].items()}, a["arch"], shape).reduction


def one_shot_top1(dense_checkpoint: Path, profile: str) -> float:
    """Video top-1 of the dense model hard pruned by magnitude (the one-shot row's start, before retraining)."""
    import argparse

    import opt_main
    from pruning import hard_prune
    from training.trainer import evaluate

    ckpt = load_checkpoint(dense_checkpoint)
    args = argparse.Namespace(**ckpt["args"])
    args.config_file = [profile]
    _, val_set = opt_main.make_data(args)
    model = opt_main.make_model(args)
    model.load_state_dict(ckpt["model"])
    hard_prune(model, opt_main.make_profile(args).resolve(model))
    return evaluate(model, val_set, args, torch.device("cpu"))["video_top1"]


def machine() -> str:
    """The CPU's model name and core count (Linux), or what platform knows."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    cpu = names[0] if names else (platform.processor() or platform.machine())
    return f"{cpu}, {len(names) or '?'} cores"


def read(path: Path) -> dict:
    if not path.is_file():
        sys.exit(f"error: {path} not found; run scripts/ablation.sh (and scripts/demo.sh for that seed) first")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="checkpoints/demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", default="docs/ablation.json")
    p.add_argument("--figure", default="docs/ablation.png")
    args = p.parse_args(argv)
    root = Path(args.root)
    dense = [read(root / f"seed{s}" / "dense" / "result.json")["video_top1"] for s in args.seeds]
    rows = {}
    for name, (phase, retrain) in ROWS.items():
        runs = []
        for s in args.seeds:
            r = read(root / f"seed{s}" / retrain / "result.json")
            run = {"seed": s, "video_top1": r["video_top1"], "reduction": round(reduction(r["checkpoint"]), 3)}
            if phase:
                ph = read(root / f"seed{s}" / phase / "result.json")
                run.update(before_prune=ph["video_top1_before_prune"], after_prune=ph["video_top1"])
            else:  # one-shot: the dense model, hard pruned
                dense_top1 = read(root / f"seed{s}" / "dense" / "result.json")["video_top1"]
                run.update(before_prune=dense_top1,
                           after_prune=one_shot_top1(root / f"seed{s}" / "dense" / "dense.pth", "c3d_kgrc_3.04x"))
            runs.append(run)
        top1 = [x["video_top1"] for x in runs]
        rows[name] = {"video_top1": top1, "mean": statistics.mean(top1),
                      "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                      "after_prune_mean": statistics.mean(x["after_prune"] for x in runs), "runs": runs}
    num_classes = load_checkpoint(root / f"seed{args.seeds[0]}" / "dense" / "dense.pth")["args"]["num_classes"]
    chance = 1 / num_classes
    out = {"made": time.strftime("%Y-%m-%d"), "machine": machine(),
           "command": "bash scripts/ablation.sh", "seeds": args.seeds, "dense_video_top1": dense,
           "chance": chance, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    figures.ablation(rows, dense, chance, Path(args.figure))
    width = max(len(n) for n in rows)
    print(f"{'method':<{width}}  video top-1 (mean +- std)  MAC reduction  right after the hard prune")
    for name, r in rows.items():
        red = statistics.mean(x["reduction"] for x in r["runs"])
        print(f"{name:<{width}}  {r['mean']:.3f} +- {r['std']:.3f}            {red:.2f}x          "
              f"{r['after_prune_mean']:.3f}")
    print(f"dense {statistics.mean(dense):.3f}; chance {chance:.3f}; wrote {args.json} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
