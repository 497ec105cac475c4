"""prune3d driver: data -> model -> phase -> report.

    python opt_main.py --arch c3d --config-file c3d_kgrc_3.04x --report
    python opt_main.py --admm --arch c3d --config-file c3d_kgrc_3.04x --load-path checkpoints/baseline/c3d.pth ...

Each phase is a function over shared mechanics in `pruning/` and `training/`; `options.py` lists every option.
"""

from __future__ import annotations

import argparse
import sys

import torch

from models import arch_info, build_model
from options import parse_args, phase_of
from pruning import UserError, hard_prune, load_profile
from pruning.report import build_report, zero_masks
from training.checkpoint import load_checkpoint, load_weights

DATASET_CLASSES = {"ucf101": 101, "hmdb51": 51}


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options whose default depends on the arch or dataset."""
    info = arch_info(args.arch)
    args.arch = info.name
    args.crop_size = args.crop_size or info.crop_size
    args.short_side = args.short_side or info.short_side
    if args.num_classes is None:
        args.num_classes = DATASET_CLASSES.get(args.dataset, 101)
    return args


def make_model(args: argparse.Namespace) -> torch.nn.Module:
    return build_model(args.arch, args.num_classes, width_mult=args.width_mult, clip_len=args.clip_len,
                       crop_size=args.crop_size)


def make_profile(args: argparse.Namespace):
    if not args.config_file:
        return None
    profile = load_profile(args.config_file, sparsity=args.sparsity_type,
                           group_size=tuple(args.group_size) if args.group_size else None,
                           balanced=args.balanced, score=args.score, kgrc_method=args.kgrc_method)
    return profile


def report(args: argparse.Namespace) -> None:
    """MACs and parameters: of what the profile implies, or of the zeros actually in a checkpoint."""
    model = make_model(args)
    profile = make_profile(args)
    rules = profile.resolve(model) if profile else {}
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        load_weights(model, ckpt, args.resume, args.arch)
        masks = zero_masks(model)
    else:
        torch.manual_seed(args.seed)
        masks = hard_prune(model, rules)
    rep = build_report(model, masks, args.arch, (3, args.clip_len, args.crop_size, args.crop_size), rules)
    print(rep.format())
    if args.report_json:
        rep.write_json(args.report_json)
        print(f"wrote {args.report_json}")


PHASE_FUNCS = {"report": report}


def main(args: argparse.Namespace) -> None:
    args = resolve_defaults(args)
    phase = phase_of(args)
    if phase is None:
        raise UserError("pick a phase: --train, --admm, --rew, --masked-retrain, --evaluate, --report or --benchmark")
    if phase not in PHASE_FUNCS:
        raise UserError(f"--{phase.replace('_', '-')} is not available in this version")
    PHASE_FUNCS[phase](args)


def cli(argv: list[str] | None = None) -> int:
    try:
        main(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad option values caught by the model registry and friends
        if "Traceback" in str(e) or not str(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
