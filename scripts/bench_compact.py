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
import copy
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


@torch.no_grad()
def physically_pruned_c3d(model, masks):
    """A smaller dense C3D holding only the kept filters/channels (what Torch-Pruning produces for C3D)."""
    from models.c3d import CONVS

    small = copy.deepcopy(model).eval()
    prev_keep = None
    for name, _ in CONVS:
        conv = getattr(small, name)
        mask = masks.get(f"{name}.weight")
        w = conv.weight * mask if mask is not None else conv.weight
        keep = w.flatten(1).any(1) if mask is not None else torch.ones(w.shape[0], dtype=torch.bool)
        w = w[keep]
        if prev_keep is not None:
            w = w[:, prev_keep]
        new = torch.nn.Conv3d(w.shape[1], w.shape[0], 3, padding=1)
        new.weight.copy_(w)
        new.bias.copy_(conv.bias[keep])
        setattr(small, name, new)
        prev_keep = keep
    fc6 = small.fc6
    c = len(prev_keep)
    wf = fc6.weight.view(fc6.out_features, c, -1)[:, prev_keep].reshape(fc6.out_features, -1)
    new_fc = torch.nn.Linear(wf.shape[1], fc6.out_features)
    new_fc.weight.copy_(wf)
    new_fc.bias.copy_(fc6.bias)
    small.fc6 = new_fc
    return small


@torch.no_grad()
def side_by_side(model, masks, fmasks, rules, input_shape, bs, args, mac_ratio):
    """Interleaved: full dense, physically channel-pruned dense (both contiguous and channels_last, best taken) and
    the kernel-group compact model."""
    from compact.bench import _interleaved

    torch.set_num_threads(args.threads)
    ext = compact.load_kernels()
    if ext is not None:
        ext.set_num_threads(args.threads)
    dense = compact.masked_dense_copy(model, masks)
    full = compact.masked_dense_copy(model, {})
    small = physically_pruned_c3d(model, fmasks)
    cm = compact.compile_sparse(model, masks, rules=rules)
    x = torch.randn(bs, *input_shape)
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    cl = {k: copy.deepcopy(m).to(memory_format=torch.channels_last_3d) for k, m in (("full", full), ("small", small))}
    t = _interleaved({"full": lambda: full(x), "full_cl": lambda: cl["full"](xc), "small": lambda: small(x),
                      "small_cl": lambda: cl["small"](xc), "kg_compact": lambda: cm(x),
                      "kg_masked_dense": lambda: dense(x)}, args.repeats, args.warmup)
    full_ms, small_ms = min(t["full"], t["full_cl"]), min(t["small"], t["small_cl"])
    res = {"arch": "c3d", "profile": "side by side", "batch_size": bs, "mac_ratio_channel_pruned": mac_ratio,
           "full_dense_ms": full_ms, "channel_pruned_dense_ms": small_ms, "kg_compact_ms": t["kg_compact"],
           "channel_pruned_speedup": full_ms / small_ms, "kg_compact_speedup": full_ms / t["kg_compact"], "raw": t}
    print(f"== side by side, batch {bs} (interleaved, whole model, dense = best of contiguous/channels_last):\n"
          f"   full dense {full_ms:.1f} ms | physically channel-pruned dense ({mac_ratio:.2f}x MACs) {small_ms:.1f} ms "
          f"-> {res['channel_pruned_speedup']:.2f}x | {args.profile} compact {t['kg_compact']:.1f} ms -> "
          f"{res['kg_compact_speedup']:.2f}x", flush=True)
    return res


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
            title = f"== {args.arch} filter-pruned masks through the compact engine, batch {bs}"
            print(compact.format_table(rf, title), flush=True)
            results.append(rf)
            if args.arch == "c3d":  # the physically smaller dense model vs full dense vs kernel-group compact
                results.append(side_by_side(model, masks, fmasks, rules, input_shape, bs, args, rf["ideal"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
