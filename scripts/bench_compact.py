#!/usr/bin/env python
"""Dense vs compact (sparse kernel) latency of a pruned model, whole model and per conv layer.

    python scripts/bench_compact.py --arch c3d --profile c3d_kgrc_3.04x --batch-size 1 8 --threads 2
    python scripts/bench_compact.py --arch r2+1d --profile r2+1d_kgrc_3.05x --json out.json

Weights are random, projected onto the profile (hard_prune), unless --resume gives a checkpoint whose weights
(and masks, if stored) are used. `--channel-pruned-equal-macs` adds, side by side, a physically filter-pruned
model (whole filters and the matching input channels dropped, dense kernels) at the same MAC reduction.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compact  # noqa: E402
from models import build_model  # noqa: E402
from pruning import hard_prune  # noqa: E402
from pruning.profile import load_profile  # noqa: E402
from pruning.report import build_report  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="c3d")
    p.add_argument("--profile", default="c3d_kgrc_3.04x", help="prune profile name or YAML path")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--crop-size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=101)
    p.add_argument("--resume", default=None, help="checkpoint with model weights (state_dict or {'model': ...})")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--channel-pruned-equal-macs", action="store_true",
                   help="also benchmark filter pruning (physically dropped channels) at the same MAC reduction")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_weights(model, path):
    state = torch.load(path, map_location="cpu", weights_only=False)
    masks = None
    if isinstance(state, dict):
        masks = state.get("masks")
        for key in ("model", "state_dict", "model_state"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
    return masks


def filter_pruned_at(model, target: float, input_shape):
    """Filter (=channel) pruning at one uniform ratio on every conv but the first, searched for `target` MACs."""
    from pruning import LayerRule
    from pruning.masks import hard_prune as hp

    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv3d)][1:]
    lo, hi = 0.0, 0.95
    for _ in range(20):
        mid = (lo + hi) / 2
        masks = _propagate(model, {n: LayerRule("filter", {"filter": mid}) for n in names}, hp)
        red = build_report(model, masks, "", input_shape).reduction
        lo, hi = (mid, hi) if red < target else (lo, mid)
    return _propagate(model, {n: LayerRule("filter", {"filter": hi}) for n in names}, hp)


def _propagate(model, rules, hp):
    """Filter masks, plus the matching input channels of the next conv (sequential C3D only): what Torch-Pruning
    does physically."""
    import copy

    m = copy.deepcopy(model)
    masks = hp(m, rules)
    convs = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv3d)]
    full = {f"{n}.weight": torch.ones_like(m.get_submodule(n).weight, dtype=torch.bool) for n in convs}
    full.update(masks)
    for a, b in zip(convs, convs[1:]):
        kept = full[f"{a}.weight"].flatten(1).any(1)
        full[f"{b}.weight"] = full[f"{b}.weight"] & kept.view(1, -1, 1, 1, 1)
    return full


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    crop = args.crop_size or (224 if args.arch == "s3d" else 112)
    kw = {"clip_len": args.clip_len, "crop_size": crop} if args.arch == "c3d" else {}
    model = build_model(args.arch, args.num_classes, **kw).eval()
    masks = load_weights(model, args.resume) if args.resume else None
    profile = load_profile(args.profile)
    rules = profile.resolve(model)
    if masks is None:
        masks = hard_prune(model, rules)
    input_shape = (3, args.clip_len, crop, crop)
    results = []
    for bs in args.batch_size:
        r = compact.benchmark(model, masks, input_shape, batch_size=bs, threads=args.threads, repeats=args.repeats,
                              warmup=args.warmup, rules=rules)
        r.update(arch=args.arch, profile=args.profile)
        print(compact.format_table(r, f"== {args.arch} {args.profile}, batch {bs}"), flush=True)
        results.append(r)
        if args.channel_pruned_equal_macs:
            fmasks = filter_pruned_at(model, r["ideal"], input_shape)
            rf = compact.benchmark(model, fmasks, input_shape, batch_size=bs, threads=args.threads,
                                   repeats=args.repeats, warmup=args.warmup)
            rf.update(arch=args.arch, profile=f"filter-pruned at {rf['ideal']:.2f}x MACs")
            print(compact.format_table(rf, f"== {args.arch} filter/channel pruned (physically dropped), batch {bs}"),
                  flush=True)
            results.append(rf)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
