#!/usr/bin/env python
"""How fast the sparse kernel runs one conv of a model under several pruning patterns, in kept GMAC/s, against
PyTorch's dense paths on the unpruned conv (all timed interleaved, one run):

    python scripts/bench_kernel_rate.py --arch r2+1d --layer layer1.0.conv1.0.0 --input 1 64 16 56 56

The default patterns span the pairs per kernel-group task, which sets the kernel's rate (README, "Where the rest
goes"): KGRC with the R(2+1)D profile's spatial ratios, KGC 0.33, KGR only, and unpruned. `--pattern
LABEL=TYPE:COMP=RATIO[,COMP=RATIO]` adds others, e.g. `--pattern kgs85=kgs:kgs=0.85`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compact.bench import pattern_rates  # noqa: E402
from models import ARCHS, build_model  # noqa: E402
from pruning import LayerRule, canonical_type  # noqa: E402

DEFAULT_PATTERNS = ["kgrc=kgrc:kgr=0.5,kgc=0.67", "kgc0.33=kgrc:kgr=0.5,kgc=0.33", "kgr=kgrc:kgr=0.5,kgc=0",
                    "unpruned=dense"]


def parse_pattern(text: str, group: tuple[int, int]) -> tuple[str, LayerRule | None]:
    label, _, spec = text.partition("=")
    if not label or not spec:
        raise SystemExit(f"--pattern {text!r}: expected LABEL=TYPE:COMP=RATIO[,COMP=RATIO] or LABEL=dense")
    if spec == "dense":
        return label, None
    kind, _, ratios = spec.partition(":")
    try:
        parsed = {k: float(v) for k, v in (kv.split("=") for kv in ratios.split(","))}
    except ValueError:
        raise SystemExit(f"--pattern {text!r}: ratios must read COMP=RATIO[,...], e.g. kgr=0.5,kgc=0.67") from None
    try:
        kind = canonical_type(kind)
    except ValueError as e:
        raise SystemExit(f"--pattern {text!r}: {e}") from None
    return label, LayerRule(sparsity=kind, ratios=parsed, group_size=group)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="r2+1d")
    p.add_argument("--layer", default="layer1.0.conv1.0.0", help="name of a Conv3d of the model")
    p.add_argument("--input", type=int, nargs=5, default=[1, 64, 16, 56, 56], metavar=("N", "C", "T", "H", "W"),
                   help="the conv's input shape (default: R(2+1)D layer1 at batch 1)")
    p.add_argument("--pattern", action="append", default=None, help="LABEL=TYPE:COMP=RATIO[,...] or LABEL=dense")
    p.add_argument("--group-size", type=int, nargs=2, default=[8, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.arch not in ARCHS:
        raise SystemExit(f"--arch {args.arch!r}: choose one of {', '.join(ARCHS)}")
    rules = dict(parse_pattern(t, tuple(args.group_size)) for t in (args.pattern or DEFAULT_PATTERNS))
    model = build_model(args.arch, 101)
    convs = {n for n, m in model.named_modules() if m.__class__.__name__ == "Conv3d"}
    if args.layer not in convs:
        raise SystemExit(f"--layer {args.layer!r} is not a Conv3d of {args.arch}; e.g. {sorted(convs)[:3]}")
    conv = model.get_submodule(args.layer)
    if args.input[1] != conv.in_channels:
        raise SystemExit(f"--input has {args.input[1]} channels; {args.layer} takes {conv.in_channels}")
    r = pattern_rates(conv, rules, tuple(args.input), threads=args.threads, repeats=args.repeats)
    print(f"{args.arch} {args.layer} {tuple(conv.weight.shape)}, input {tuple(args.input)}, {args.threads} threads, "
          f"kernels: {r['isa']}, median of {args.repeats}")
    print(f"{'pattern':<12} {'pairs/task':>10} {'filters/task':>12} {'ms':>9} {'GMAC/s':>8} {'max rel err':>11}")
    for row in r["patterns"]:
        print(f"{row['pattern']:<12} {row['pairs_per_task']:10.1f} {row['filters_per_task']:12.1f} "
              f"{row['compact_ms']:9.2f} {row['gmacs']:8.1f} {row['max_rel_err']:11.1e}")
    for method, d in r["dense"].items():
        print(f"{'dense ' + method:<36} {d['ms']:9.2f} {d['gmacs']:8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
