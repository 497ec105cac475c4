"""prune3d driver: data -> model -> phase -> report.

    python opt_main.py --train  --arch c3d --dataset ucf101 --data-location data/ucf101_lmdb
    python opt_main.py --admm   --arch c3d --config-file c3d_kgrc_3.04x --load-path checkpoints/baseline/c3d.pth ...
    python opt_main.py --masked-retrain --arch c3d --config-file c3d_kgrc_3.04x --load-path .../admm.pth --warmup
    python opt_main.py --report --arch c3d --config-file c3d_kgrc_3.04x [--resume CKPT]

Each phase is a short function over the mechanics in `pruning/`, `training/` and `admm.py`; `options.py` lists
every option. Under `torchrun --nproc_per_node=N` the same commands train with DDP.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

import options
from admm import ADMM, Cadence, rho_bound
from models import (
    arch_info,
    build_model,
    convert_state_dict,
    default_norm,
    implies_pretrained,
    normalization,
    state_layout,
)
from options import original_spellings, parse_args, phase_of
from pruning import CheckpointError, UserError, apply_masks, hard_prune, intersect_masks, load_profile
from pruning.profile import canonical_or_error
from pruning.projections import removed_fraction
from pruning.report import build_report, zero_masks
from training import distributed as dist_utils
from training.checkpoint import load_checkpoint, load_weights, lock_run_dir, model_state, save_checkpoint
from training.memory import check_memory
from training.penalties import ReweightedGroupLasso
from training.runs import data_root, find_start, run_dir_for
from training.schedule import TCAD_REW_EPOCHS
from training.trainer import PhaseHooks, Trainer, evaluate, seed_everything

DATASET_CLASSES = {"ucf101": 101, "hmdb51": 51}


@dataclass(frozen=True)
class Phase:
    run: Callable[[argparse.Namespace, torch.device], dict]
    result: str | None = None  # the checkpoint a training phase writes
    distributed: bool = False  # seeded, and under torchrun in its process group


PHASES: dict[str, Phase] = {}  # filled by @phase below, one entry per name in options.PHASES


def phase(name: str, result: str | None = None, distributed: bool = False):
    def register(fn: Callable[[argparse.Namespace, torch.device], dict]):
        PHASES[name] = Phase(fn, result, distributed)
        return fn
    return register


# ------------------------------------------------------------------------------------------------ ingredients
def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options whose default depends on the arch or dataset."""
    info = arch_info(args.arch)
    args.pretrained = args.pretrained or implies_pretrained(args.arch)
    args.arch = info.name
    args.crop_size = info.crop_size if args.crop_size is None else args.crop_size
    args.short_side = info.short_side if args.short_side is None else args.short_side
    args.phase = phase_of(args)
    if trains_or_prunes(args) and args.short_side < args.crop_size:  # a random crop must fit in the resized frame
        raise UserError(f"--short-side {args.short_side} is smaller than --crop-size {args.crop_size}; "
                        f"allowed: --short-side >= {args.crop_size}")
    if args.batch_size is None:  # clips per step when training; latency is measured per clip
        args.batch_size = 1 if args.phase == "benchmark" else 16
    args.total_epochs = args.epochs * (args.rho_num if args.phase == "admm" else 1)
    if args.admm_epochs is None:
        args.admm_epochs = 10 if args.rho_schedule == "stages" else 1
    if args.hflip is None:
        args.hflip = args.dataset != "synthetic"
    if args.weight_decay is None:  # as both papers' code: SGD decays, Adam does not
        args.weight_decay = 0.0 if args.optimizer == "adam" else 5e-4
    for note in original_spellings(args, trains_or_prunes(args)) if dist_utils.is_main() else ():
        print(f"note: {note}", file=sys.stderr)
    return args


def trains_or_prunes(args: argparse.Namespace) -> bool:
    return args.phase in PHASES and PHASES[args.phase].result is not None


def make_model(args: argparse.Namespace, pretrained: bool = False) -> torch.nn.Module:
    """The model of --arch; `pretrained`: with torchvision's Kinetics-400 weights (a phase that starts from no
    checkpoint, with --pretrained)."""
    if args.num_classes is None:
        args.num_classes = DATASET_CLASSES.get(args.dataset, 101)
    build = functools.partial(build_model, args.arch, args.num_classes, width_mult=args.width_mult,
                              clip_len=args.clip_len, crop_size=args.crop_size, dropout=args.dropout)
    runs = args.phase not in ("report", "target_reduction", "plots")  # the phases that run the model on data
    check_memory(build, args.arch, (3, args.clip_len, args.crop_size, args.crop_size),
                 args.batch_size or 1 if runs else 0, trains_or_prunes(args),
                 build_at=lambda t, c: build_model(args.arch, args.num_classes, width_mult=args.width_mult,
                                                   clip_len=t, crop_size=c))
    return build(pretrained=pretrained)


def make_profile(args: argparse.Namespace, required: bool = False):
    if not args.config_file:
        if required:
            raise UserError(f"--{args.phase.replace('_', '-')} needs a prune profile: pass --config-file")
        return None
    return load_profile(args.config_file, sparsity=args.sparsity_type,
                        group_size=tuple(args.group_size) if args.group_size else None,
                        balanced=args.balanced, score=args.score, kgrc_method=args.kgrc_method,
                        kgr_rounding=args.kgr_rounding, arch=args.arch)


def make_data(args: argparse.Namespace, eval_train: bool = False):
    """Train and validation datasets; sets args.num_classes from the data. `eval_train`: the train split with
    the evaluation transform (centre crop, no flip), for measuring without touching the validation split."""
    import datasets

    if not args.data_location:
        raise UserError("pass --data-location: a folder with train.lmdb/val.lmdb (see datasets/create_lmdb.py)")
    mean, std = normalization(args.norm or "kinetics")
    common = dict(clip_len=args.clip_len, crop_size=args.crop_size, short_side=args.short_side,
                  sampling=args.sampling, mean=mean, std=std)
    root = data_root(args.data_location, args.dataset)
    train_set = datasets.build_dataset(root, "train", train=not eval_train, hflip=args.hflip, **common)
    val_set = datasets.build_dataset(root, "val", train=False, test_clips=args.test_clips, **common)
    for split, ds in (("train", train_set), ("val", val_set)):
        if len(ds) == 0:  # before any training: an empty split would train on nothing or fail at evaluation
            raise UserError(f"{root}: the {split} split has no videos; rebuild it (datasets/extract_videos.py, then "
                            "datasets/create_lmdb.py) and check failed.txt beside the frames")
    if args.num_classes not in (None, train_set.num_classes):
        raise UserError(f"--num-classes {args.num_classes} but {args.data_location} has {train_set.num_classes} "
                        "classes; drop --num-classes")
    args.num_classes = train_set.num_classes
    return train_set, val_set


@dataclass
class Start:
    """The checkpoint a phase starts from, read before the data so that the input normalisation can follow it."""
    ckpt: dict
    path: str | None
    note: str | None = None  # said once its weights have loaded (a refusal stays one line)


def read_start(args: argparse.Namespace, required: bool, path: str | None = None) -> Start:
    """`path`, --load-path, or what `find_start` locates (an empty checkpoint for none); sets --norm from it."""
    if path is None:
        if not args.load_path and required:
            args.load_path = find_start(args)
        path = args.load_path
    start = Start(load_checkpoint(path) if path else {}, path)
    start.note = choose_norm(args, start.ckpt, path)
    return start


def choose_norm(args: argparse.Namespace, start: dict, source: str | None) -> str | None:
    """--norm, else the normalisation the starting weights were trained with: saved in this tool's checkpoints
    (those from before the option used Kinetics'); ImageNet's for a checkpoint without saved options (the RT3D /
    TCAD releases' baselines), with a note to say; the arch's usual one when starting from no checkpoint."""
    if args.norm:
        return None
    saved = start.get("args") if start else None
    if isinstance(saved, dict):
        args.norm = saved.get("norm") or "kinetics"
    elif start:
        args.norm = "imagenet"
        return (f"{source} was not made by this tool: assuming the RT3D/TCAD releases' ImageNet input "
                "normalisation; pass --norm kinetics if its weights were trained with Kinetics statistics")
    else:
        args.norm = default_norm(args.arch, args.pretrained)
    return None


def load_start(model: torch.nn.Module, args: argparse.Namespace, start: Start) -> None:
    if start.ckpt:
        load_into(model, start.ckpt, start.path, args.arch, allow_new_classifier=args.phase == "train")
    if start.note and dist_utils.is_main():
        print(f"note: {start.note}", file=sys.stderr)


def load_into(model: torch.nn.Module, ckpt: dict, source: str, arch: str, allow_new_classifier: bool = False) -> None:
    """Load a checkpoint's weights, mapping a foreign key layout (the Sports-1M C3D release) onto ours first."""
    state = model_state(ckpt)
    if state_layout(state, arch) != "ours":
        ckpt = {"model": convert_state_dict(state, arch, model)}
    load_weights(model, ckpt, source, arch, allow_new_classifier=allow_new_classifier)


def resume_point(args: argparse.Namespace, run_dir: Path, profile) -> dict | None:
    """The checkpoint to continue from (--resume PATH or auto), checked against this run."""
    if not args.resume:
        return None
    path = run_dir / "last.pth" if args.resume == "auto" else Path(args.resume)
    if args.resume == "auto" and not path.exists():
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("phase") != args.phase:
        raise CheckpointError(f"{path}: is a checkpoint of phase '{ckpt.get('phase')}', not '{args.phase}'; "
                              "use it as --load-path to start a new phase")
    want = profile.to_dict() if profile else None
    if ckpt.get("profile") != want:
        raise CheckpointError(f"{path}: was made with another prune profile than --config-file "
                              f"{' '.join(args.config_file or [])}; resume with the same profile or start anew")
    return ckpt


def save_args(args: argparse.Namespace, run_dir: Path) -> None:
    if dist_utils.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        plain = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
        (run_dir / "args.yaml").write_text(yaml.safe_dump(plain, sort_keys=True))


def finish(trainer: Trainer, args: argparse.Namespace, masks: dict | None, extra: dict) -> dict:
    """Evaluate the final model, write the phase result and a JSON summary beside it."""
    final = trainer.evaluate()
    metrics = {**final, **extra, "load_errors": len(trainer.load_errors)}
    if dist_utils.is_main():
        state = trainer.state_dict(metrics)
        state["masks"] = {k: v.cpu() for k, v in (masks or {}).items()}
        path = trainer.run_dir / PHASES[args.phase].result
        save_checkpoint(state, path)
        (trainer.run_dir / "result.json").write_text(json.dumps({"checkpoint": str(path), **metrics}, indent=2))
        print(f"{args.phase}: video top-1 {final['video_top1']:.4f} clip top-1 {final['clip_top1']:.4f}; "
              f"{len(trainer.load_errors)} samples failed to load; wrote {path}")
        for err in trainer.load_errors[:20]:
            print(f"  load error: {err}", file=sys.stderr)
    return metrics


def prune_setup(args: argparse.Namespace, device: torch.device):
    """What every pruning phase starts from: data, model, profile rules and the starting checkpoint."""
    start = read_start(args, required=True)
    data = make_data(args)
    model = make_model(args).to(device)
    profile = make_profile(args, required=True)
    rules = profile.resolve(model)
    load_start(model, args, start)
    return data, model, profile, rules, start.ckpt


def fit_then_prune(args, model, data, hooks, device, profile, rules, keep) -> dict:
    """Train towards the sparse set (ADMM or reweighting), then hard prune and write the phase result."""
    trainer = start_trainer(args, model, data, hooks, device, profile, run_dir_for(args))
    trainer.fit()
    before = trainer.evaluate()["video_top1"]
    masks = prune_to_profile(model, rules, keep)
    return finish(trainer, args, masks, {"video_top1_before_prune": before})


def start_trainer(args, model, data, hooks, device, profile, run_dir) -> Trainer:
    if dist_utils.is_main():  # before anything is written there
        lock_run_dir(run_dir)
    trainer = Trainer(args, model, data[0], data[1], hooks, run_dir, device,
                      profile.to_dict() if profile else None)
    ckpt = resume_point(args, run_dir, profile)
    if ckpt is not None:
        trainer.load_state(ckpt)
        print(f"resumed {args.phase} at epoch {trainer.epoch} iteration {trainer.iteration}")
    save_args(args, run_dir)
    return trainer


# ------------------------------------------------------------------------------------------------------ phases
@phase("train", result="dense.pth", distributed=True)
def train(args: argparse.Namespace, device: torch.device) -> dict:
    """Dense baseline."""
    start = read_start(args, required=False)
    data = make_data(args)
    model = make_model(args, pretrained=args.pretrained and not start.ckpt).to(device)
    load_start(model, args, start)
    trainer = start_trainer(args, model, data, PhaseHooks("train"), device, None, run_dir_for(args))
    trainer.fit()
    return finish(trainer, args, None, {})


@phase("admm", result="admm.pth", distributed=True)
def admm(args: argparse.Namespace, device: torch.device) -> dict:
    """ADMM towards the profile's sparse set (docs/algorithms.md), then hard prune."""
    data, model, profile, rules, start = prune_setup(args, device)
    keep = progressive_masks(args, start, model)
    rho_max = args.rho_max or rho_bound(args.optimizer, args.lr, args.momentum)
    solver = ADMM(rules, rho=args.rho, rho_num=args.rho_num, keep_masks=keep, schedule=args.rho_schedule,
                  mu=args.rho_mu, tau=args.rho_tau, rho_max=rho_max, gamma=args.rho_gamma, tol=args.rho_tol)
    solver.initialize(model)
    dist_utils.broadcast_tensors(solver.Z)
    if args.optimizer == "adam" and dist_utils.is_main():
        print("note: --admm with --optimizer adam: Adam rescales the penalty's gradient, so W may never reach Z; "
              "SGD is what ADMM needs (docs/algorithms.md)", file=sys.stderr)

    cadence = Cadence(every_epochs=args.admm_epochs, every_iters=args.admm_iters, stage_epochs=args.epochs)

    def z_u_step() -> None:
        solver.update(model)
        dist_utils.broadcast_tensors(solver.Z)
        dist_utils.broadcast_tensors(solver.U)

    def epoch_end(epoch: int) -> dict:
        if cadence.z_u_after_epoch(epoch):
            z_u_step()
        return solver.log(model)

    hooks = PhaseHooks(
        "admm", extra_loss=solver.penalty, masks=keep or None,
        on_epoch_start=lambda e: solver.set_stage(cadence.stage(e, solver.rho_num)),
        on_iteration_end=lambda it: z_u_step() if cadence.z_u_after_iteration(it) else None,
        on_epoch_end=epoch_end, state=solver.state_dict, load_state=solver.load_state_dict)
    return fit_then_prune(args, model, data, hooks, device, profile, rules, keep)


@phase("rew", result="rew.pth", distributed=True)
def reweighted_group_lasso(args: argparse.Namespace, device: torch.device) -> dict:
    """Reweighted group-lasso (docs/algorithms.md), then hard prune."""
    data, model, profile, rules, start = prune_setup(args, device)
    keep = progressive_masks(args, start, model)
    tcad = args.rew_schedule == "tcad"
    penalty = ReweightedGroupLasso(rules, args.rew_lambda, args.rew_eps, target=args.rew_target,
                                   units=args.rew_units, split=tcad)
    prox = args.rew_step == "prox"
    refresh = (lambda e: e == 0 or e in TCAD_REW_EPOCHS) if tcad else (lambda e: e % args.rew_update_epochs == 0)

    def epoch_start(epoch: int) -> None:  # the lr factors of the tcad schedule are its LambdaLR (training/schedule)
        if refresh(epoch):
            penalty.update_alpha(model)

    def epoch_end(epoch: int) -> dict:  # how much of each layer's norm the hard prune would still remove
        params = dict(model.named_parameters())
        removed = {n: removed_fraction(params[n], r) for n, r in rules.items()}
        return {"max_removed": max(removed.values()), "removed": removed, "lambda": dict(penalty.lam),
                **({"rew_penalty": float(penalty.penalty(model).detach())} if prox else {})}

    hooks = PhaseHooks("rew", extra_loss=None if prox else penalty.penalty,
                       after_step=(lambda lr: penalty.shrink(model, lr)) if prox else None, masks=keep or None,
                       on_epoch_start=epoch_start, on_epoch_end=epoch_end, state=penalty.state_dict,
                       load_state=penalty.load_state_dict)
    return fit_then_prune(args, model, data, hooks, device, profile, rules, keep)


@phase("masked_retrain", result="retrained.pth", distributed=True)
def masked_retrain(args: argparse.Namespace, device: torch.device) -> dict:
    """Hard prune with the profile and retrain with the pattern fixed (docs/algorithms.md)."""
    data, model, profile, rules, start = prune_setup(args, device)
    if not args.one_shot and not start.get("masks") and not zero_masks(model):
        raise UserError(f"{args.load_path}: has no pruned weights (no masks, no zeros); --masked-retrain starts "
                        "from an --admm or --rew result (or pass --one-shot to prune a dense model by magnitude)")
    earlier = {k: v.to(device) for k, v in start.get("masks", {}).items()}
    masks = prune_to_profile(model, rules, earlier if args.combine_progressive else None)
    teacher = make_teacher(args, start, device) if args.distill else None
    hooks = PhaseHooks("masked_retrain", masks=masks, teacher=teacher,
                       distill_until=max(0, args.total_epochs - args.kd_off_epochs))
    trainer = start_trainer(args, model, data, hooks, device, profile, run_dir_for(args))
    trainer.fit()
    best = trainer.run_dir / "best.pth"
    if best.exists():  # the phase result is the best epoch by validation accuracy
        trainer.model.load_state_dict(load_checkpoint(best)["model"])
    return finish(trainer, args, hooks.masks, {"best_video_top1": trainer.best})


@phase("evaluate", distributed=True)
def evaluate_phase(args: argparse.Namespace, device: torch.device) -> dict:
    path = args.resume or args.load_path
    if not path:
        raise UserError("--evaluate needs a checkpoint: pass --load-path")
    start = read_start(args, required=True, path=path)
    _, val_set = make_data(args)
    model = make_model(args).to(device)
    load_start(model, args, start)
    if args.precision:  # the compact engine (CPU) at that precision, on the checkpoint's masks
        if device.type != "cpu":
            raise UserError("--precision evaluates the compact engine, which runs on the CPU: add --device cpu")
        masks = {k: v.bool() for k, v in (start.ckpt.get("masks") or zero_masks(model)).items()}
        rules = make_profile(args).resolve(model) if args.config_file else {}
        model = compact_at_precision(args, model, masks, rules, path)
    rank = dist_utils.rank()
    world = torch.distributed.get_world_size() if dist_utils.is_distributed() else 1
    metrics = evaluate(model, val_set, args, device, rank, world)
    if args.precision:
        metrics["precision"] = args.precision
    if args.precision == "int8":
        metrics["int8_weight_bits"] = args.int8_weight_bits
    if dist_utils.is_main():
        print(json.dumps(metrics, indent=2))
    return metrics


@phase("report")
def report(args: argparse.Namespace, device: torch.device) -> dict:
    """MACs and parameters: of what the profile implies, or of the zeros actually in a checkpoint."""
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt:
        adopt_model_args(args, ckpt, ("num_classes", "width_mult"))
    model = make_model(args)
    profile = make_profile(args)
    rules = profile.resolve(model) if profile else {}
    if ckpt:
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
    return rep.to_json()


# ------------------------------------------------------------------------------------------------- mechanics
def adopt_model_args(args: argparse.Namespace, ckpt: dict, keys: tuple[str, ...]) -> None:
    """Take the model's shape options from the checkpoint that was trained with them."""
    saved = ckpt.get("args") or {}
    for key in keys:
        if saved.get(key) is not None:
            setattr(args, key, saved[key])


def progressive_masks(args: argparse.Namespace, start: dict, model: torch.nn.Module) -> dict:
    """--combine-progressive: the starting checkpoint's pattern, kept (its zeros stay zero)."""
    if not args.combine_progressive:
        return {}
    masks = start.get("masks") or zero_masks(model)
    if not masks:
        raise UserError(f"--combine-progressive: {args.load_path} has no pruned weights to keep")
    device = next(model.parameters()).device
    masks = {k: v.to(device) for k, v in masks.items()}
    apply_masks(model, masks)
    return masks


def prune_to_profile(model: torch.nn.Module, rules: dict, keep: dict | None) -> dict:
    """Hard prune (identically on every rank) and return the masks, intersected with an earlier pattern `keep`."""
    masks = hard_prune(model, rules)
    if keep:
        masks = intersect_masks(keep, masks)
        apply_masks(model, masks)
    dist_utils.broadcast_tensors(masks)
    params = dict(model.named_parameters())
    dist_utils.broadcast_tensors({k: params[k].data for k in masks})
    digests = dist_utils.gather_objects(mask_digest(masks))
    if len(set(digests)) != 1:
        raise RuntimeError(f"pruning masks differ across ranks: {digests}")
    if len(digests) > 1 and dist_utils.is_main():
        print(f"masks identical on {len(digests)} ranks: {digests[0]}")
    return masks


def mask_digest(masks: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(name.encode())
        h.update(masks[name].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def make_teacher(args: argparse.Namespace, start: dict, device: torch.device) -> torch.nn.Module:
    path = args.teacher_path or (start.get("args") or {}).get("load_path")
    if not path:
        raise UserError("--distill needs the dense baseline: pass --teacher-path")
    teacher = make_model(args).to(device)
    load_into(teacher, load_checkpoint(path), path, args.arch)
    teacher.eval().requires_grad_(False)
    return teacher


@phase("plots")
def plots(args: argparse.Namespace, device: torch.device) -> dict:
    """Figures for a checkpoint, written to <checkpoint dir>/figures/ and to its TensorBoard log."""
    from pruning import figures

    if not args.resume:
        raise UserError("--plots needs a checkpoint: pass --resume CKPT")
    ckpt = load_checkpoint(args.resume)
    adopt_model_args(args, ckpt, ("num_classes", "width_mult", "clip_len", "crop_size"))
    model = make_model(args)
    load_weights(model, ckpt, args.resume, args.arch)
    masks = ckpt.get("masks") or zero_masks(model)
    prof = ckpt.get("profile") or {}
    group = tuple(prof.get("group_size") or (args.group_size or (8, 8)))
    rep = build_report(model, masks, args.arch, (3, args.clip_len, args.crop_size, args.crop_size))
    bench_json = Path(args.benchmark_json) if args.benchmark_json else None
    written = figures.for_run(Path(args.resume).parent, masks, group, rep, list(ckpt.get("history") or []),
                              bench_json)
    for path in written:
        print(f"wrote {path}")
    return {"figures": [str(p) for p in written]}


@phase("target_reduction")
def search_profile(args: argparse.Namespace, device: torch.device) -> dict:
    """--target-reduction: write a profile YAML reaching a whole-model MAC reduction (uniform or sensitivity)."""
    from pruning.profile import PruneProfile
    from pruning.search import profile_header, sensitivity_profile, uniform_profile

    kind = canonical_or_error(args.sparsity_type or "kgrc", "--sparsity-type")
    shape = (3, args.clip_len, args.crop_size, args.crop_size)
    group = tuple(args.group_size) if args.group_size else None
    table = None
    if args.search == "uniform":
        model = make_model(args)
        rules = uniform_profile(model, args.arch, shape, args.target_reduction, kind, group)
    else:
        start = read_start(args, required=True)
        train_set, val_set = make_data(args, eval_train=args.search_split == "train")
        measure_on = train_set if args.search_split == "train" else val_set
        model = make_model(args).to(device)
        load_start(model, args, start)
        # evenly spaced clips: the datasets are ordered by class, so the first N would miss classes
        count = min(args.search_subset, len(measure_on))
        picks = torch.linspace(0, len(measure_on) - 1, count).long().tolist()
        subset = torch.utils.data.Subset(measure_on, picks)
        rules, table = sensitivity_profile(model, args.arch, shape, args.target_reduction, kind,
                                           lambda m: evaluate(m, subset, args, device)["clip_top1"], group)
    first = next(iter(rules.values()))
    profile = PruneProfile(rules, kind, first.group_size, "search")
    out = Path(args.search_out or f"profiles/{args.arch}_{kind}_{args.search}_{args.target_reduction:g}x.yaml")
    rep = build_report(model.cpu(), hard_prune(copy.deepcopy(model).cpu(), rules), args.arch, shape, rules)
    measured_on = f"{len(subset)} {args.search_split} clips" if table else ""
    profile.write(out, profile_header(args.search, args.target_reduction, args.arch, shape, rep.reduction, table,
                                      measured_on))
    print(f"wrote {out}: {rep.reduction:.3f}x MAC reduction (target {args.target_reduction:g}x)")
    return {"path": str(out), "reduction": rep.reduction}


def pruned_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict, dict]:
    """(model, masks, rules): a checkpoint's (--resume) or random weights projected to --config-file."""
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt:
        adopt_model_args(args, ckpt, ("num_classes", "width_mult", "clip_len", "crop_size"))
    model = make_model(args).eval()
    profile = make_profile(args)
    rules = profile.resolve(model) if profile else {}
    if ckpt:
        load_weights(model, ckpt, args.resume, args.arch)
        masks = {k: v.bool() for k, v in (ckpt.get("masks") or zero_masks(model)).items()}
    else:
        if not rules:
            raise UserError(f"--{args.phase} needs a pruned model: pass --resume CKPT or --config-file PROFILE")
        torch.manual_seed(args.seed)
        masks = hard_prune(model, rules)
    return model, masks, rules


def calibration_batches(args: argparse.Namespace, n: int, shape: tuple[int, ...]) -> tuple[list, str]:
    """(batches of n clips, where they come from) for --calibrate: training clips with the evaluation transform,
    evenly spaced over the split; for --benchmark without --data-location, random clips (said)."""
    bs = max(1, min(args.batch_size or 8, 8))
    if not args.data_location:
        if args.phase != "benchmark":
            raise UserError("--calibrate N takes N training clips: pass --data-location")
        gen = torch.Generator().manual_seed(args.seed)
        clips = torch.randn(n, *shape, generator=gen)
        return [clips[i:i + bs] for i in range(0, n, bs)], f"{n} random clips (no --data-location: for timing only)"
    train_set, _ = make_data(args, eval_train=True)
    idx = sorted({round(i * (len(train_set) - 1) / max(n - 1, 1)) for i in range(n)})
    clips = [train_set[i][0] for i in idx]
    return [torch.stack(clips[i:i + bs]) for i in range(0, len(clips), bs)], f"{len(clips)} training clips"


def conv_input_ranges(args: argparse.Namespace, model: torch.nn.Module, masks: dict,
                      ckpt_path: str | None) -> dict | None:
    """The conv input ranges int8 runs with: measured now (--calibrate N, then stored in the checkpoint), else the
    checkpoint's own; None when there are none (fine below int8)."""
    from compact.quant import calibrate
    from compact.surgery import masked_dense_copy

    ckpt = load_checkpoint(ckpt_path) if ckpt_path else {}
    if not args.calibrate:
        stored = ckpt.get("calibration")
        if args.precision == "int8" and not stored:
            raise UserError(f"--precision int8 needs calibrated input ranges and {ckpt_path or 'no checkpoint'} has "
                            "none: add --calibrate N (N training clips, e.g. 32)")
        if args.precision == "int8" and stored.get("masks") != mask_digest(masks):
            raise UserError(f"{ckpt_path}: its calibration was measured with other masks than it holds now: add "
                            "--calibrate N to measure again")
        return stored["ranges"] if stored else None
    shape = (3, args.clip_len, args.crop_size, args.crop_size)
    batches, source = calibration_batches(args, args.calibrate, shape)
    ranges = calibrate(masked_dense_copy(model, masks).eval(), batches, method=args.calibrate_method,
                       percentile=args.calibrate_percentile)
    record = {"ranges": ranges, "method": args.calibrate_method, "percentile": args.calibrate_percentile,
              "clips": source, "masks": mask_digest(masks)}
    if ckpt_path and args.data_location:
        ckpt["calibration"] = record
        if dist_utils.is_main():  # one writer under torchrun
            save_checkpoint(ckpt, ckpt_path)
        print(f"calibrated on {source} ({args.calibrate_method}); the ranges are stored in {ckpt_path}")
    else:
        print(f"calibrated on {source} ({args.calibrate_method})")
    return ranges


def compact_at_precision(args: argparse.Namespace, model: torch.nn.Module, masks: dict, rules: dict,
                         ckpt_path: str | None) -> torch.nn.Module:
    """compile_sparse at --precision (int8 with `conv_input_ranges` and --int8-weight-bits, resolved here so that the
    results can name it)."""
    import compact
    from compact.quant import default_weight_bits

    ranges = conv_input_ranges(args, model, masks, ckpt_path)
    if args.precision == "int8" and args.int8_weight_bits is None:
        args.int8_weight_bits = default_weight_bits()
    return compact.compile_sparse(model, masks, rules=rules, precision=args.precision or "fp32", ranges=ranges,
                                  weight_bits=args.int8_weight_bits)


@phase("benchmark")
def benchmark(args: argparse.Namespace, device: torch.device) -> dict:
    """Dense (fastest PyTorch path per layer, and --against's runtimes) vs compact latency, interleaved, in one
    run."""
    import compact

    model, masks, rules = pruned_model(args)
    shape = (3, args.clip_len, args.crop_size, args.crop_size)
    threads = args.threads or torch.get_num_threads()
    against = args.against.split(",") if args.against else ()
    precisions = [args.precision] if args.precision not in (None, "fp32") else []
    ranges = conv_input_ranges(args, model, masks, args.resume) if precisions else None
    result = compact.benchmark(model, masks, shape, batch_size=args.batch_size or 1, threads=threads,
                               repeats=args.repeats, rules=rules, against=against,
                               peer_options={"deepsparse_python": args.deepsparse_python},
                               precisions=precisions, ranges=ranges, weight_bits=args.int8_weight_bits)
    title = (f"{args.arch} {' '.join(args.config_file or [args.resume or ''])} batch {args.batch_size or 1}, "
             f"{threads} threads, kernels: {compact.kernel_isa()}")
    print(compact.format_table(result, title=title))
    out = args.benchmark_json or (Path(args.resume).parent / "benchmark.json" if args.resume else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {out}")
    return result


@phase("export")
def export(args: argparse.Namespace, device: torch.device) -> dict:
    """--export onnx: the dense-equivalent pruned model as ONNX, and the compact model's state beside it."""
    import compact

    model, masks, rules = pruned_model(args)
    shape = (3, args.clip_len, args.crop_size, args.crop_size)
    stem = Path(args.resume).with_suffix("") if args.resume else Path(args.save_dir) / f"{args.arch}_pruned"
    onnx_path = compact.export_onnx(model, masks, f"{stem}.onnx", shape)
    precision = args.precision or "fp32"
    suffix = "" if precision == "fp32" else f"_{precision}"
    cm = compact_at_precision(args, model, masks, rules, args.resume)
    meta = {"arch": args.arch, "input_shape": list(shape), "precision": precision}
    if precision == "int8":
        meta["int8_weight_bits"] = args.int8_weight_bits
    compact_path = compact.save_compact(cm, f"{stem}_compact{suffix}.pt", meta)
    print(f"wrote {onnx_path} and {compact_path}")
    return {"onnx": str(onnx_path), "compact": str(compact_path)}


assert set(PHASES) == set(options.PHASES), "options.PHASE_OPTIONS and the @phase registry must list the same phases"


def main(args: argparse.Namespace) -> dict:
    args = resolve_defaults(args)
    if args.phase is None:
        flags = ", ".join(flags[0] for flags, _ in options.PHASE_OPTIONS.values())
        raise UserError(f"pick a phase: one of {flags}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = PHASES[args.phase]
    if not chosen.distributed:
        return chosen.run(args, device)
    dist_utils.init_distributed(device, args.dist_timeout)
    seed_everything(args.seed)
    try:
        return chosen.run(args, device)
    except RuntimeError as e:  # a rank stopped or died: end this one with a line, not a hang
        if not dist_utils.is_peer_failure(e):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"rank {dist_utils.rank()}: another rank did not answer within --dist-timeout "
                        f"{args.dist_timeout:g} min (stopped or dead?): {first}") from None
    finally:
        dist_utils.cleanup()


def cli(argv: list[str] | None = None) -> int:
    from datasets.errors import DataError

    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse has printed its one line (or --help); return its code like any refusal
        return e.code if isinstance(e.code, int) else 2
    try:
        main(args)
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
