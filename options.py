"""Command-line options of opt_main.py, grouped by concern.

Spellings of the RT3D / TCAD scripts are accepted (`--data_location`, `--epoch`, `--lr_scheduler`, ...).
`--args-file run.yaml` loads defaults from YAML (e.g. the `args.yaml` saved beside a checkpoint); options given
on the command line override it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

PHASES = ("train", "admm", "rew", "masked_retrain", "evaluate", "report", "benchmark", "plots", "target_reduction",
          "export")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("prune3d: kernel-group sparsity for 3D CNNs", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--args-file", default=None, help="YAML of option defaults; the command line overrides it")

    g = p.add_argument_group("phase (pick one)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--train", action="store_true", help="train a dense baseline")
    x.add_argument("--admm", action="store_true", help="ADMM towards the profile's sparse set, then hard prune")
    x.add_argument("--rew", action="store_true", help="reweighted group-lasso, then hard prune")
    x.add_argument("--masked-retrain", "--masked_retrain", dest="masked_retrain", action="store_true",
                   help="retrain with the pruning pattern fixed")
    x.add_argument("--evaluate", action="store_true", help="evaluate a checkpoint (clip and video level)")
    x.add_argument("--report", action="store_true", help="print the per-layer MAC/parameter report and exit")
    x.add_argument("--benchmark", action="store_true", help="measure dense vs compact latency side by side")
    x.add_argument("--plots", action="store_true", help="write figures for the checkpoint given by --resume")
    x.add_argument("--target-reduction", type=float, default=None,
                   help="search a profile reaching this whole-model MAC reduction and write it (--search-out)")

    g = p.add_argument_group("model")
    g.add_argument("--arch", "-a", default="c3d", help="c3d | r2+1d | s3d")
    g.add_argument("--num-classes", type=int, default=None, help="default: from the dataset (101 for ucf101)")
    g.add_argument("--width-mult", type=float, default=1.0, help="channel width multiplier (c3d)")
    g.add_argument("--dropout", type=float, default=None,
                   help="dropout before the classifier; default the published 0.5 (c3d) / 0.2 (s3d)")
    g.add_argument("--load-path", "--load_path", default=None,
                   help="starting weights: baseline or an earlier phase's checkpoint")
    g.add_argument("--resume", default=None, help="checkpoint to continue (or 'auto'); with --report, count its zeros")

    g = p.add_argument_group("pruning profile")
    g.add_argument("--config-file", "--config_file", nargs="+", default=None,
                   help="profile name or path; two files (KGR then KGC) combine into kgrc")
    g.add_argument("--sparsity-type", "--sparsity_type", default=None,
                   help="irregular|filter|channel|blk-vanilla|kgs|kgr|kgc|kgrc (for profiles that carry none)")
    g.add_argument("--group-size", "--group_size", type=int, nargs=2, default=None, metavar=("GM", "GN"),
                   help="kernel group size (default per type: 8 4 for kgs/blk-vanilla, 8 8 for kgr/kgc/kgrc)")
    g.add_argument("--balanced", action="store_true", default=None, help="kgs: same count removed in every group")
    g.add_argument("--score", choices=("l2", "l2-per-weight"), default=None,
                   help="unit ranking; l2-per-weight is RT3D's L2/sqrt(nnz)")
    g.add_argument("--kgrc-method", choices=("exact", "product"), default=None,
                   help="exact joint projection, or TCAD's product of two masks")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="ucf101", help="ucf101 | hmdb51 | synthetic")
    g.add_argument("--data-location", "--data_location", dest="data_location", default=None,
                   help="folder with train.lmdb/val.lmdb (or frame folders with train.txt/val.txt)")
    g.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    g.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    g.add_argument("--crop-size", type=int, default=None, help="default: 112 (224 for s3d)")
    g.add_argument("--short-side", type=int, default=None, help="resize before crop; default 128 (256 for s3d)")
    g.add_argument("--sampling", choices=("segment", "consecutive"), default="segment")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips in training; default on, off for --dataset synthetic, whose "
                        "classes include left vs right motion")
    g.add_argument("--test-clips", type=int, default=1, help="clips per video at evaluation (video-level accuracy)")
    g.add_argument("--workers", "-j", type=int, default=4)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", "--epoch", dest="epochs", type=int, default=50,
                   help="epochs (per rho stage for --admm)")
    g.add_argument("--batch-size", "-b", "--batch_size", dest="batch_size", type=int, default=None,
                   help="default 16 for training, 1 for --benchmark")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=5e-4)
    g.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    g.add_argument("--lr-scheduler", "--lr_scheduler", dest="lr_scheduler", choices=("cosine", "step", "default"),
                   default="cosine")
    g.add_argument("--warmup", action="store_true", help="linear warm-up before the schedule")
    g.add_argument("--warmup-lr", type=float, default=1e-5)
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--smooth-eps", "--smooth_eps", dest="smooth_eps", type=float, default=0.0,
                   help="label smoothing")
    g.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="mixed precision (CUDA only)")

    g = p.add_argument_group("ADMM")
    g.add_argument("--rho", type=float, default=1e-4, help="initial penalty")
    g.add_argument("--rho-num", "--rho_num", dest="rho_num", type=int, default=4,
                   help="rho stages: ADMM runs --epochs x --rho-num epochs; with --rho-schedule stages rho x10 each")
    g.add_argument("--rho-schedule", choices=("residual", "balance", "stages"), default="residual",
                   help="residual: at each Z/U step, rho x tau in every layer whose primal residual did not shrink "
                        "by --rho-gamma; balance: Boyd's residual balancing; stages: the published x10 per stage")
    g.add_argument("--rho-gamma", type=float, default=0.5, help="residual: the shrink factor expected per Z/U step")
    g.add_argument("--rho-tol", type=float, default=0.01,
                   help="residual: primal residual ||W-Z||/||W|| at which rho stops rising")
    g.add_argument("--rho-mu", type=float, default=10.0, help="balance: change rho when one residual "
                                                             "exceeds mu times the other")
    g.add_argument("--rho-tau", type=float, default=2.0, help="residual, balance: factor rho changes by")
    g.add_argument("--rho-max", type=float, default=None,
                   help="residual, balance: upper bound of rho; default (1 - momentum) / lr for SGD (beyond it the "
                        "penalty's own step overshoots), 1e4 for Adam")
    g.add_argument("--admm-epochs", "--admm_epochs", dest="admm_epochs", type=int, default=None,
                   help="epochs between Z/U steps; default 1 with --rho-schedule balance (it adapts rho at each "
                        "step), 10 with stages (the published cadence)")
    g.add_argument("--admm-iters", type=int, default=None, help="iterations between Z/U updates (small data)")
    g.add_argument("--admm-lr", choices=("constant", "cycle", "cosine"), default="constant",
                   help="lr during ADMM: constant, RT3D's 1, 1/2, 1/4 within each Z/U cycle, or cosine to 0 over the "
                        "phase (the W-step's noise shrinks, so both residuals can)")
    g.add_argument("--admm-lr-cycle", dest="admm_lr", action="store_const", const="cycle",
                   help="the same as --admm-lr cycle (RT3D's spelling)")
    g.add_argument("--one-shot", action="store_true",
                   help="--masked-retrain from a dense model: one-shot magnitude projection, then retraining")
    g.add_argument("--combine-progressive", "--combine_progressive", dest="combine_progressive",
                   action="store_true", help="start from a pruned checkpoint and keep its zeros")

    g = p.add_argument_group("reweighted group-lasso")
    g.add_argument("--rew-lambda", type=float, default=1e-4, help="penalty weight")
    g.add_argument("--rew-eps", type=float, default=1e-3, help="alpha = 1 / (||W_g||^2 + eps)")
    g.add_argument("--rew-update-epochs", type=int, default=2, help="epochs between alpha updates")
    g.add_argument("--rew-step", choices=("prox", "gradient"), default="prox",
                   help="prox: group soft-thresholding after each optimizer step (units reach exact zeros); "
                        "gradient: the penalty added to the loss (TCAD)")
    g.add_argument("--rew-units", choices=("removed", "all"), default="removed",
                   help="removed: penalise only the units the profile's projection currently removes; all: every "
                        "unit, as the papers do")
    g.add_argument("--rew-target", type=float, default=0.01,
                   help="at each alpha update, double a layer's lambda while the hard prune would still remove "
                        "more than this share of its weight norm (0: lambda fixed)")

    g = p.add_argument_group("distillation")
    g.add_argument("--distill", action="store_true", help="knowledge distillation from the dense baseline")
    g.add_argument("--teacher-path", default=None, help="default: --load-path's dense baseline")
    g.add_argument("--kd-temperature", type=float, default=3.0)
    g.add_argument("--kd-alpha", type=float, default=0.5)
    g.add_argument("--kd-off-epochs", type=int, default=3, help="switch distillation off for the last N epochs")

    g = p.add_argument_group("output and runtime")
    g.add_argument("--save-dir", "--save_dir", dest="save_dir", default="checkpoints")
    g.add_argument("--name", default=None, help="run name (default: arch_dataset_profile_phase)")
    g.add_argument("--report-json", default=None, help="write the report as JSON")
    g.add_argument("--benchmark-json", default=None, help="write the benchmark as JSON")
    g.add_argument("--threads", type=int, default=None, help="torch threads for --benchmark")
    g.add_argument("--repeats", type=int, default=20, help="timed repeats for --benchmark")
    g.add_argument("--export", choices=("onnx",), default=None, help="export the pruned model")
    g.add_argument("--search", choices=("uniform", "sensitivity"), default="uniform",
                   help="--target-reduction: uniform ratios, or allocation by measured sensitivity (needs data)")
    g.add_argument("--search-out", default=None, help="where --target-reduction writes the profile YAML")
    g.add_argument("--search-subset", type=int, default=64,
                   help="clips per sensitivity evaluation, evenly spaced over the split")
    g.add_argument("--search-split", choices=("val", "train"), default="val",
                   help="where --search sensitivity measures; train (evaluation transform) keeps val untouched")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    g.add_argument("--print-freq", type=int, default=20)
    g.add_argument("--max-iters", type=int, default=None, help="stop each epoch after N iterations (smoke runs)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv; defaults come from `--args-file` when given, then from the parser."""
    parser = get_args_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.args_file:
        path = Path(pre.args_file)
        if not path.is_file():
            parser.error(f"--args-file {path}: no such file")
        defaults = yaml.safe_load(path.read_text()) or {}
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            parser.error(f"--args-file {path}: unknown option '{unknown[0]}'")
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def phase_of(args: argparse.Namespace) -> str | None:
    return next((ph for ph in PHASES if getattr(args, ph, None) not in (None, False)), None)
