"""Command-line options of opt_main.py, grouped by concern.

Spellings of the RT3D / TCAD scripts are accepted (`--data_location`, `--epoch`, `--lr_scheduler`, ...).
`--args-file run.yaml` loads defaults from YAML (e.g. the `args.yaml` saved beside a checkpoint); options given
on the command line override it.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import yaml

from pruning.safe_yaml import load_yaml

DERIVED = ("phase", "total_epochs")  # in the args.yaml beside a checkpoint: opt_main.resolve_defaults' results
RETIRED = ("split",)  # options older args.yaml files may hold that no longer exist (--split was never used)
MIN_CROP = 16  # the smallest crop the models take (C3D's five 2x2 poolings)

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40


def shown(value: Any) -> str:
    """A value for an error message: its repr, shortened so a huge value cannot flood the terminal."""
    return _short.repr(value)


# ------------------------------------------------------------------------------------------ option value types
def _allowed(kind: str, lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {hi:g}"
    return kind


def _checked(kind: str, parse: Callable[[str], Any], lo, hi, lo_open: bool, hi_open: bool, why: str,
             name: str) -> Callable[[str], Any]:
    """An argparse `type=`: parse the string, refuse what lies outside the interval, saying what is allowed."""
    allowed = _allowed(kind, lo, hi, lo_open, hi_open)

    def convert(text: str):
        try:
            value = parse(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not {kind}; allowed: {allowed}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a finite number; allowed: {allowed}")
        if (lo is not None and (value <= lo if lo_open else value < lo)) or \
                (hi is not None and (value >= hi if hi_open else value > hi)):
            note = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(f"{shown(text)} is out of range{note}; allowed: {allowed}")
        return value

    convert.__name__ = name
    convert.allowed = allowed
    return convert


def int_range(lo: int | None = None, hi: int | None = None, why: str = "", name: str = "int_range"):
    """`type=` for an integer in [lo, hi]; a bound of None is no bound."""
    return _checked("an integer", int, lo, hi, False, False, why, name)


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
                 why: str = "", name: str = "finite_float"):
    """`type=` for a finite number between lo and hi; `lo_open` / `hi_open` exclude the bound itself."""
    return _checked("a number", float, lo, hi, lo_open, hi_open, why, name)


positive_int = int_range(1, name="positive_int")
nonnegative_int = int_range(0, name="nonnegative_int")
positive_float = finite_float(0, lo_open=True, name="positive_float")
nonnegative_float = finite_float(0, name="nonnegative_float")
fraction = finite_float(0, 1, hi_open=True, name="fraction")  # [0, 1): a share that is never the whole
open_fraction = finite_float(0, 1, lo_open=True, hi_open=True, name="open_fraction")
above_one = finite_float(1, lo_open=True, name="above_one")  # a factor that must grow
pixels = int_range(MIN_CROP, why="too small for the models", name="pixels")


def runtimes(text: str) -> str:
    """`type=` of --against: comma-separated runtimes of compact.peers' registry (onnxruntime, openvino, deepsparse,
    and the reduced-precision onnxruntime-int8, openvino-bf16, openvino-int8), returned normalised as a string (so
    an args.yaml holding it reads back through this type)."""
    from compact.peers import peer_names

    try:
        return ",".join(peer_names(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def executable_file(text: str) -> str:
    """`type=` for a program to run (an interpreter): an existing executable file."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{shown(text)}: {'not a file' if path.exists() else 'no such file'}")
    if not os.access(path, os.X_OK):
        raise argparse.ArgumentTypeError(f"{shown(text)}: not executable")
    return str(path)


def tcad_sparsity(text: str) -> str:
    """`type=` of TCAD's --sparsity: kgr or kgc (its kgc_c3d.sh passes 'krc', which its own parser refuses)."""
    if text == "krc":
        raise argparse.ArgumentTypeError("'krc' is a typo in TCAD's kgc_c3d.sh (its own parser refuses it); "
                                         "use --sparsity kgc")
    if text not in ("kgr", "kgc"):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not allowed; allowed: kgr, kgc")
    return text


# Each paper's training defaults, from its released code and scripts (docs/recipes.md); `--defaults auto` takes
# them when --config-file names one of that paper's published profiles. The command line overrides them.
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "prune3d": {},
    "rt3d": dict(lr=5e-4, batch_size=32, rho_num=2, smooth_eps=0.1, lr_scheduler="cosine", warmup_lr=1e-5,
                 rho_schedule="stages", admm_epochs=10, admm_lr="cycle", kd_loss="soft-ce", kd_off_epochs=5,
                 score="l2-per-weight"),
    "tcad": dict(lr=2e-4, batch_size=32, accum_steps=4, lr_scheduler="default", warmup_lr=1e-4,
                 rew_schedule="tcad", rew_lambda=1e-6, rew_eps=1e-6, rew_step="gradient", rew_units="all",
                 rew_target=0.0, kgr_rounding="ceil", kd_loss="soft-ce", kd_off_epochs=5),
}


def paper_of(config_files: list[str] | None) -> str:
    """The paper whose published profile alias --config-file names (profiles/aliases.yaml), else 'prune3d'."""
    from pruning.profile import load_aliases

    aliases = load_aliases()
    papers = {aliases[c].get("paper") for c in config_files or () if c in aliases and not Path(c).exists()}
    papers.discard(None)
    return papers.pop() if len(papers) == 1 else "prune3d"


def _cut(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep else f"{text[:keep // 2]}...{text[-keep // 2:]}"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a refused command line is one line on stderr, `error: <message>`, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        # argparse writes "argument --batch-size/-b/--batch_size: ..."; name the option by its first spelling
        message = re.sub(r"^argument ([^/:\s]+)(?:/\S+?)?: ", r"\1: ", str(message))
        message = re.sub(r"invalid choice: (.*) \(choose from (.*)\)$",
                         lambda m: f"{_cut(m[1])} is not allowed; allowed: one of {m[2]}", message)
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        if len(message) > 400:
            message = f"{message[:250]} ... {message[-100:]}"
        self.exit(2, f"error: {message}\n")


# phase -> (its options, argparse keywords), in the order `--help` lists them: the one list of phases (opt_main.py
# registers what each runs under the same names).
PHASE_OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "train": (("--train",), dict(action="store_true", help="train a dense baseline")),
    "admm": (("--admm",), dict(action="store_true", help="ADMM towards the profile's sparse set, then hard prune")),
    "rew": (("--rew",), dict(action="store_true", help="reweighted group-lasso, then hard prune")),
    "masked_retrain": (("--masked-retrain", "--masked_retrain"),
                       dict(dest="masked_retrain", action="store_true", help="retrain with the pruning pattern fixed")),
    "evaluate": (("--evaluate",), dict(action="store_true", help="evaluate a checkpoint (clip and video level)")),
    "report": (("--report",), dict(action="store_true", help="print the per-layer MAC/parameter report and exit")),
    "benchmark": (("--benchmark",), dict(action="store_true", help="measure dense vs compact latency side by side")),
    "plots": (("--plots",), dict(action="store_true", help="write figures for the checkpoint given by --resume")),
    "target_reduction": (("--target-reduction",), dict(
        type=above_one, default=None,
        help="search a profile reaching this whole-model MAC reduction and write it (--search-out)")),
    "export": (("--export",), dict(choices=("onnx",), default=None, help="export the pruned model")),
}
PHASES = tuple(PHASE_OPTIONS)


def add_against_options(group) -> None:
    """--against and --deepsparse-python, for `opt_main.py --benchmark` and scripts/bench_compact.py alike."""
    group.add_argument("--against", type=runtimes, default=None, metavar="RUNTIMES",
                       help="--benchmark: also time these runtimes on the model exported to ONNX (pruned and dense "
                            "weights), in the same rounds, e.g. onnxruntime,openvino,deepsparse; reduced precision: "
                            "openvino-bf16, openvino-int8 (NNCF), onnxruntime-int8 (quantize_static); a missing one "
                            "is skipped with one line")
    group.add_argument("--deepsparse-python", type=executable_file, default=None, metavar="PYTHON",
                       help="--against deepsparse: the Python of a venv with deepsparse 1.8 (it needs numpy<2), when "
                            "it cannot be imported here (default: $PRUNE3D_DEEPSPARSE_PYTHON)")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = OneLineParser("prune3d: kernel-group sparsity for 3D CNNs", add_help=add_help,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--args-file", default=None, help="YAML of option defaults; the command line overrides it")
    p.add_argument("--defaults", choices=("auto",) + tuple(PAPER_DEFAULTS), default="auto",
                   help="whose defaults the options take: a paper's (RT3D, TCAD) or this tool's; auto: the paper "
                        "that published the --config-file alias given (e.g. c3d_2.53x_v2 is RT3D's), else prune3d")

    x = p.add_argument_group("phase (pick one)").add_mutually_exclusive_group()
    for flags, kwargs in PHASE_OPTIONS.values():
        x.add_argument(*flags, **kwargs)

    g = p.add_argument_group("model")
    g.add_argument("--arch", "-a", default="c3d", help="c3d | r2+1d | s3d | s3d-rt3d | r2+1d-pretrained")
    g.add_argument("--pretrained", action="store_true",
                   help="r2+1d, s3d: start from torchvision's Kinetics-400 weights (read from the torch hub cache "
                        "under TORCH_HOME; RT3D's --arch r2+1d-pretrained means the same); C3D: pass Sports-1M "
                        "weights with --load-path")
    g.add_argument("--num-classes", type=positive_int, default=None, help="default: from the dataset (101 for ucf101)")
    g.add_argument("--width-mult", type=positive_float, default=1.0, help="channel width multiplier (c3d)")
    g.add_argument("--dropout", type=fraction, default=None,
                   help="dropout before the classifier; default the published 0.5 (c3d) / 0.2 (s3d)")
    g.add_argument("--load-path", "--load_path", default=None,
                   help="starting weights: baseline or an earlier phase's checkpoint")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="checkpoint to continue, or 'auto' (also the bare flag, RT3D's spelling): the run folder's "
                        "last.pth if there is one; with --report, count its zeros")

    g = p.add_argument_group("pruning profile")
    g.add_argument("--config-file", "--config_file", nargs="+", default=None,
                   help="profile name or path; two files (KGR then KGC) combine into kgrc")
    g.add_argument("--sparsity-type", "--sparsity_type", default=None,
                   help="irregular|filter|channel|blk-vanilla|kgs|kgr|kgc|kgrc (for profiles that carry none)")
    g.add_argument("--sparsity", type=tcad_sparsity, nargs="+", default=None, metavar="KGR|KGC",
                   help="TCAD's spelling: the type of each --config-file (kgr, kgc; 'kgr kgc' with two files: kgrc)")
    g.add_argument("--group-size", "--group_size", "--connectivity-block-size", "-conn-blk", dest="group_size",
                   type=positive_int, nargs=2, default=None, metavar=("GM", "GN"),
                   help="kernel group size (default per type: 8 4 for kgs/blk-vanilla, 8 8 for kgr/kgc/kgrc); "
                        "--connectivity-block-size is RT3D's spelling")
    g.add_argument("--kgr-rounding", choices=("half-up", "ceil"), default=None,
                   help="rows a KGR ratio removes per group: round half up (default), or TCAD's ceil(gM * ratio)")
    g.add_argument("--balanced", action="store_true", default=None, help="kgs: same count removed in every group")
    g.add_argument("--score", choices=("l2", "l2-per-weight"), default=None,
                   help="unit ranking; l2-per-weight is RT3D's L2/sqrt(nnz)")
    g.add_argument("--kgrc-method", choices=("exact", "product"), default=None,
                   help="exact joint projection, or TCAD's product of two masks")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=("ucf101", "hmdb51", "synthetic"), default="ucf101",
                   help="Kinetics is not supported: its lists and layout are not read here")
    g.add_argument("--data-location", "--data_location", dest="data_location", default=None,
                   help="folder with train.lmdb/val.lmdb (or frame folders with train.txt/val.txt)")
    g.add_argument("--clip-len", type=positive_int, default=16, help="frames per clip")
    g.add_argument("--crop-size", type=pixels, default=None, help="default: 112 (224 for s3d)")
    g.add_argument("--short-side", type=pixels, default=None, help="resize before crop; default 128 (256 for s3d)")
    g.add_argument("--norm", choices=("kinetics", "imagenet"), default=None,
                   help="input normalisation (mean/std); default: what the starting weights were trained with "
                        "(saved in this tool's checkpoints; ImageNet's for the RT3D/TCAD releases' baselines, "
                        "Kinetics' for torchvision's weights and models trained from scratch)")
    g.add_argument("--sampling", choices=("segment", "consecutive"), default="segment")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips in training; default on, off for --dataset synthetic, whose "
                        "classes include left vs right motion")
    g.add_argument("--test-clips", type=positive_int, default=1,
                   help="clips per video at evaluation (video-level accuracy)")
    g.add_argument("--workers", "-j", type=nonnegative_int, default=4)
    g.add_argument("--max-failed", type=finite_float(0, 1), default=0.01,
                   help="share of clips per epoch (or evaluation) allowed to fail to load before the run stops "
                        "with the list of videos")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", "--epoch", dest="epochs", type=positive_int, default=50,
                   help="epochs (per rho stage for --admm)")
    g.add_argument("--batch-size", "-b", "--batch_size", dest="batch_size", type=positive_int, default=None,
                   help="default 16 for training, 1 for --benchmark")
    g.add_argument("--lr", "--learning-rate", dest="lr",
                   type=finite_float(0, 10, lo_open=True, why="not a learning rate"), default=1e-3)
    g.add_argument("--momentum", type=fraction, default=0.9)
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=nonnegative_float, default=None,
                   help="default 5e-4 with SGD, 0 with Adam (as both papers' code)")
    g.add_argument("--optimizer", "--optmzr", dest="optimizer", choices=("sgd", "adam"), default="sgd")
    g.add_argument("--lr-scheduler", "--lr_scheduler", dest="lr_scheduler",
                   choices=("cosine", "step", "default", "multistep", "constant"), default="cosine",
                   help="after warm-up: cosine to 0; step x0.1 at 1/3 and 2/3; default: x0.5 every 20%% of the "
                        "epochs; multistep: x0.5 at epochs 45, 90, 120 (both as the papers' code); constant")
    g.add_argument("--warmup", action="store_true", help="linear warm-up before the schedule")
    g.add_argument("--warmup-lr", type=finite_float(0, 10, why="not a learning rate"), default=1e-5)
    g.add_argument("--warmup-epochs", type=nonnegative_int, default=5)
    g.add_argument("--smooth-eps", "--smooth_eps", dest="smooth_eps", type=fraction, default=0.0,
                   help="label smoothing")
    g.add_argument("--smooth", action="store_true",
                   help="RT3D's switch: label smoothing on, at --smooth-eps (0.1 when that is not given)")
    g.add_argument("--mixup", action="store_true", help="mixup of clip pairs, lambda ~ Beta(--alpha, --alpha)")
    g.add_argument("--alpha", type=positive_float, default=1.0, help="mixup's Beta parameter")
    g.add_argument("--no-tricks", action="store_true",
                   help="RT3D's switch: no warm-up, no smoothing, no mixup, --lr-scheduler default")
    g.add_argument("--accum-steps", type=positive_int, default=1, help="gradient accumulation steps")
    g.add_argument("--amp", nargs="?", const="fp16", choices=("off", "bf16", "fp16"), default="off",
                   help="mixed precision (CUDA only); the bare flag is fp16, as TCAD's --amp")

    g = p.add_argument_group("ADMM")
    g.add_argument("--rho", type=positive_float, default=1e-4, help="initial penalty")
    g.add_argument("--rho-num", "--rho_num", dest="rho_num", type=positive_int, default=4,
                   help="rho stages: ADMM runs --epochs x --rho-num epochs; with --rho-schedule stages rho x10 each")
    g.add_argument("--rho-schedule", choices=("residual", "balance", "stages"), default="residual",
                   help="residual: at each Z/U step, rho x tau in every layer whose primal residual did not shrink "
                        "by --rho-gamma; balance: Boyd's residual balancing; stages: the published x10 per stage")
    g.add_argument("--rho-gamma", type=open_fraction, default=0.5,
                   help="residual: the shrink factor expected per Z/U step")
    g.add_argument("--rho-tol", type=nonnegative_float, default=0.01,
                   help="residual: primal residual ||W-Z||/||W|| at which rho stops rising")
    g.add_argument("--rho-mu", type=above_one, default=10.0,
                   help="balance: change rho when one residual exceeds mu times the other")
    g.add_argument("--rho-tau", type=above_one, default=2.0, help="residual, balance: factor rho changes by")
    g.add_argument("--rho-max", type=positive_float, default=None,
                   help="residual, balance: upper bound of rho; default (1 - momentum) / lr for SGD (beyond it the "
                        "penalty's own step overshoots), 1e4 for Adam")
    g.add_argument("--admm-epochs", "--admm_epochs", dest="admm_epochs", type=positive_int, default=None,
                   help="epochs between Z/U steps; default 1 with --rho-schedule balance (it adapts rho at each "
                        "step), 10 with stages (the published cadence)")
    g.add_argument("--admm-iters", type=positive_int, default=None, help="iterations between Z/U updates (small data)")
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
    g.add_argument("--rew-lambda", "--penalty", dest="rew_lambda", type=nonnegative_float, default=1e-4,
                   help="penalty weight (--penalty: TCAD's spelling)")
    g.add_argument("--rew-eps", type=positive_float, default=1e-3, help="alpha = 1 / (||W_g||^2 + eps)")
    g.add_argument("--rew-update-epochs", type=positive_int, default=2, help="epochs between alpha updates")
    g.add_argument("--rew-schedule", choices=("every", "tcad"), default="every",
                   help="every: alpha refreshed every --rew-update-epochs; tcad: TCAD's, alpha refreshed at epochs "
                        "1, 11, 21, 31, 41, 51, 76, 101, 126, the lr x1.6 at those epochs and x0.98 at every other "
                        "one from the second, the KGRC penalty split between its two profiles")
    g.add_argument("--rew-step", choices=("prox", "gradient"), default="prox",
                   help="prox: group soft-thresholding after each optimizer step (units reach exact zeros); "
                        "gradient: the penalty added to the loss (TCAD)")
    g.add_argument("--rew-units", choices=("removed", "all"), default="removed",
                   help="removed: penalise only the units the profile's projection currently removes; all: every "
                        "unit, as the papers do")
    g.add_argument("--rew-target", type=fraction, default=0.01,
                   help="at each alpha update, double a layer's lambda while the hard prune would still remove "
                        "more than this share of its weight norm (0: lambda fixed)")

    g = p.add_argument_group("distillation")
    g.add_argument("--distill", action="store_true", help="knowledge distillation from the dense baseline")
    g.add_argument("--teacher-path", default=None, help="default: --load-path's dense baseline")
    g.add_argument("--teacharch", default=None,
                   help="RT3D's spelling; the teacher is always built like the student (--arch), as the papers do")
    g.add_argument("--kd-loss", choices=("kl-t2", "soft-ce"), default="kl-t2",
                   help="kl-t2: T^2 * KL(teacher || student) (Hinton); soft-ce: the papers' soft cross-entropy "
                        "without T^2")
    g.add_argument("--kd-temperature", "--temperature", dest="kd_temperature", type=positive_float, default=3.0)
    g.add_argument("--kd-alpha", "--kd-coefficient", dest="kd_alpha", type=finite_float(0, 1), default=0.5)
    g.add_argument("--kd-off-epochs", type=nonnegative_int, default=3,
                   help="switch distillation off for the last N epochs")

    g = p.add_argument_group("precision (the compact engine: --evaluate, --benchmark, --export)")
    g.add_argument("--precision", choices=("fp32", "bf16", "int8"), default=None,
                   help="run the compact engine at this precision: --evaluate then evaluates the compact model "
                        "(default: the PyTorch model), --export saves it, --benchmark adds it beside fp32; int8 needs "
                        "calibrated input ranges (--calibrate, or a checkpoint calibrated before)")
    g.add_argument("--calibrate", type=positive_int, default=None, metavar="N",
                   help="int8: measure every conv's input range on N training clips (evaluation transform) and store "
                        "them in the checkpoint; --benchmark without --data-location uses N random clips")
    g.add_argument("--calibrate-method", choices=("minmax", "percentile"), default="minmax",
                   help="minmax: the extremes seen; percentile: --calibrate-percentile of the values (clips outliers)")
    g.add_argument("--calibrate-percentile", type=finite_float(50, 100, lo_open=True), default=99.99)
    g.add_argument("--int8-weight-bits", type=int, choices=(8, 7), default=None,
                   help="int8 weights in 8 or 7 bits (default: 7 on a CPU without AVX512_VNNI, where 7-bit weights "
                        "run pmaddubsw, about twice as fast as exact 8-bit code; else 8)")

    g = p.add_argument_group("output and runtime")
    g.add_argument("--save-dir", "--save_dir", dest="save_dir", default="checkpoints")
    g.add_argument("--name", default=None, help="run name (default: arch_dataset_profile_phase)")
    g.add_argument("--report-json", default=None, help="write the report as JSON")
    g.add_argument("--benchmark-json", default=None, help="write the benchmark as JSON")
    g.add_argument("--threads", type=positive_int, default=None, help="torch threads for --benchmark")
    g.add_argument("--repeats", type=positive_int, default=20, help="timed repeats for --benchmark")
    add_against_options(g)
    g.add_argument("--search", choices=("uniform", "sensitivity"), default="uniform",
                   help="--target-reduction: uniform ratios, or allocation by measured sensitivity (needs data)")
    g.add_argument("--search-out", default=None, help="where --target-reduction writes the profile YAML")
    g.add_argument("--search-subset", type=positive_int, default=64,
                   help="clips per sensitivity evaluation, evenly spaced over the split")
    g.add_argument("--search-split", choices=("val", "train"), default="val",
                   help="where --search sensitivity measures; train (evaluation transform) keeps val untouched")
    g.add_argument("--dist-timeout", type=positive_float, default=10.0,
                   help="minutes a DDP collective may wait for the other ranks before the job ends with an error")
    g.add_argument("--seed", type=int_range(-2**31, 2**32 - 1), default=0)
    g.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    g.add_argument("--no-cuda", action="store_true", help="the originals' spelling of --device cpu")
    g.add_argument("--multi-gpu", action="store_true",
                   help="the originals' DataParallel switch; here several GPUs train under torchrun (DDP)")
    g.add_argument("--print-freq", "--log-interval", dest="print_freq", type=positive_int, default=20,
                   help="iterations between training-loss points in TensorBoard (train/iter_loss)")
    g.add_argument("--max-iters", type=positive_int, default=None,
                   help="stop each epoch after N iterations (smoke runs)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv; defaults come from `--args-file` when given, then from the parser. A refused value, on the
    command line or in the args file, ends the run with one line `error: ...` on stderr and exit code 2."""
    parser = get_args_parser()
    pre, _ = parser.parse_known_args(argv)
    defaults: dict[str, Any] = {}
    if pre.args_file:
        defaults = read_args_file(parser, pre.args_file)
        if phase_of(pre) is not None:  # the command line's phase replaces the file's (args.yaml names its own)
            defaults = {k: v for k, v in defaults.items() if k not in PHASES}
    paper = pre.defaults if pre.defaults != "auto" else defaults.get("defaults") or paper_of(pre.config_file)
    parser.set_defaults(**{**PAPER_DEFAULTS[paper], **defaults, "defaults": paper})
    args = parser.parse_args(argv)
    validate(args, parser)
    return args


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> None:
    """The checks a `type=` cannot make: those that ask the machine. Refusals go through `parser.error`."""
    error = (parser or get_args_parser()).error
    if (args.precision or args.calibrate) and phase_of(args) not in ("evaluate", "benchmark", "export"):
        error(f"--{'precision' if args.precision else 'calibrate'} is for --evaluate, --benchmark and --export")
    if args.calibrate and args.precision in (None, "fp32", "bf16"):
        error("--calibrate measures the ranges int8 needs: add --precision int8")
    if args.int8_weight_bits is not None and args.precision != "int8":
        error("--int8-weight-bits is for --precision int8")
    phase = phase_of(args)
    if args.resume == "auto" and phase not in (None, "train", "admm", "rew", "masked_retrain"):
        # (an args.yaml saved by a run started with --resume auto carries it into --report and the like)
        error(f"--resume auto continues a training phase's run folder; --{phase.replace('_', '-')} reads a "
              "checkpoint: pass its path, --resume PATH")
    if args.device is not None:
        problem = device_problem(args.device)
        if problem:
            error(f"--device: {shown(args.device)} {problem}")


def device_problem(spec: str) -> str | None:
    """Why `--device spec` cannot run here ("is not a device; allowed: cpu"), or None."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    allowed = "allowed: cpu" + (", cuda, cuda:N" if torch.cuda.is_available() else "") + (", mps" if has_mps else "")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        return f"is not a device; {allowed}"
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"needs a CUDA GPU and none is available here; {allowed}"
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"is out of range: {count} CUDA device(s) here; allowed: cpu, cuda, cuda:0 to cuda:{count - 1}"
        return None
    if dev.type == "mps" and has_mps:
        return None
    return f"is not available here; {allowed}"


# ------------------------------------------------------------------------------------------------- --args-file
def read_args_file(parser: argparse.ArgumentParser, name: str) -> dict[str, Any]:
    """The option defaults in a YAML file, each value checked by its option's own `type` and `choices`.
    Anything wrong (unreadable, not UTF-8, not YAML, not a mapping, an unknown key, a bad value) is one line."""
    where = f"--args-file {name if len(name) <= 160 and name.isprintable() else shown(name)}"
    path = Path(name)
    try:
        if not path.is_file():
            parser.error(f"{where}: {'not a file' if path.exists() else 'no such file'}")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        parser.error(f"{where}: not UTF-8 text (byte {e.start}); expected YAML like the args.yaml beside a checkpoint")
    except (OSError, ValueError) as e:  # permissions, a name too long, a NUL in the name
        parser.error(f"{where}: cannot read it: {getattr(e, 'strerror', None) or e}")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        parser.error(f"{where}: not valid YAML{at}: {problem}")
    except RecursionError:
        parser.error(f"{where}: not valid YAML: nested too deeply")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(f"{where}: must be a YAML mapping of option: value, not a {type(data).__name__}")
    actions = _actions_by_dest(parser)
    unknown = sorted(str(k) for k in data if k not in actions and k not in DERIVED + RETIRED)
    if unknown:
        near = difflib.get_close_matches(unknown[0], list(actions), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        parser.error(f"{where}: unknown option {shown(unknown[0])}{hint}")
    out = {}
    for key, value in data.items():
        if key in DERIVED + RETIRED:
            continue
        try:
            out[key] = _value_from_file(actions[key], value)
        except argparse.ArgumentTypeError as e:
            parser.error(f"{where}: {key} ({actions[key].option_strings[0]}): {e}")
    return out


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> the action that sets it; where several do (--admm-lr, --admm-lr-cycle), the one taking a value."""
    acts: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.dest in (argparse.SUPPRESS, "help"):
            continue
        if a.dest not in acts or (acts[a.dest].nargs == 0 and a.nargs != 0):
            acts[a.dest] = a
    return acts


def _value_from_file(action: argparse.Action, value: Any) -> Any:
    """A YAML value as the command line would have given it, through the option's `type` and `choices`."""
    if value is None:
        if action.default is None:
            return None
        raise argparse.ArgumentTypeError(f"null is not allowed; allowed: {_allowed_for(action)}")
    if action.nargs == 0:  # a flag
        if isinstance(value, bool) and action.const in (True, False, None):
            return value
        raise argparse.ArgumentTypeError(f"{shown(value)} is not allowed; allowed: true or false")
    if action.nargs in (None, "?"):
        return _one_value(action, value)
    values = value if isinstance(value, list) else [value]
    if isinstance(action.nargs, int) and len(values) != action.nargs:
        raise argparse.ArgumentTypeError(f"{shown(value)} is not a list of {action.nargs} values")
    if not values and action.nargs == "+":
        raise argparse.ArgumentTypeError("an empty list is not allowed; allowed: one value or more")
    return [_one_value(action, v) for v in values]


def _one_value(action: argparse.Action, value: Any) -> Any:
    if isinstance(value, bool):
        hint = " (YAML reads off/no/on/yes as true/false: quote such a string)" if action.choices else ""
        raise argparse.ArgumentTypeError(f"{str(value).lower()} is not allowed{hint}; allowed: {_allowed_for(action)}")
    if isinstance(value, (list, dict)):
        raise argparse.ArgumentTypeError(f"{shown(value)} is not allowed; allowed: {_allowed_for(action)}")
    text = value if isinstance(value, str) else str(value)  # a number as it would be typed
    result = text
    if action.type is not None:
        try:
            result = action.type(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not allowed; allowed: {_allowed_for(action)}") \
                from None
    if action.choices is not None and result not in action.choices:
        raise argparse.ArgumentTypeError(f"{shown(value)} is not allowed; allowed: {_allowed_for(action)}")
    return result


def _allowed_for(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    if action.nargs == 0:
        return "true or false"
    return getattr(action.type, "allowed", None) or getattr(action.type, "__name__", None) or "a string"


def original_spellings(args: argparse.Namespace, trains: bool) -> list[str]:
    """Resolve the RT3D / TCAD options that are switches or notes here rather than options of their own; the
    notes to print (what is used instead of --multi-gpu, --no-cuda; whose defaults a training run takes)."""
    from models import arch_info
    from pruning.errors import UserError

    if args.no_tricks:  # RT3D: "restore the classic training process"
        args.warmup, args.mixup, args.smooth, args.smooth_eps, args.lr_scheduler = False, False, False, 0.0, "default"
    if args.smooth and args.smooth_eps == 0.0:
        args.smooth_eps = 0.1
    if args.sparsity:  # TCAD: one type per --config-file; kgr with kgc is the kgrc pair
        files = len(args.config_file or ())
        if len(args.sparsity) != files or (files == 2 and args.sparsity != ["kgr", "kgc"]) or files > 2:
            raise UserError(f"--sparsity {' '.join(args.sparsity)}: give one type per --config-file ({files} "
                            "given), 'kgr kgc' for a KGR and a KGC file")
        if files == 1:
            args.sparsity_type = args.sparsity[0]
    if args.teacharch is not None and arch_info(args.teacharch).name != args.arch:
        raise UserError(f"--teacharch {args.teacharch}: the teacher is built like the student (--arch {args.arch}), "
                        "as in both papers' code; drop --teacharch or make it equal to --arch")
    if args.no_cuda:
        if args.device not in (None, "cpu"):
            raise UserError(f"--no-cuda contradicts --device {args.device}; drop one")
        args.device = "cpu"
    notes = []
    if args.no_cuda:
        notes.append("--no-cuda: running with --device cpu")
    if args.multi_gpu:
        notes.append("--multi-gpu: this process uses one device; for several GPUs launch with "
                     "torchrun --nproc_per_node=N opt_main.py ... (DDP)")
    if args.defaults not in ("prune3d", "auto") and trains:
        notes.append(f"defaults: {args.defaults.upper()}'s (docs/recipes.md); --defaults prune3d for this tool's")
    return notes


def phase_of(args: argparse.Namespace) -> str | None:
    return next((ph for ph in PHASES if getattr(args, ph, None) not in (None, False)), None)
