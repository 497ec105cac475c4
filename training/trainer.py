"""The epoch loop shared by every phase: steps, masks, penalties, evaluation, checkpoints, resume, signals.

A phase (dense training, ADMM, reweighting, masked retraining) is a `Trainer` plus hooks; the trainer owns what
must be identical across phases: deterministic data order, exact resume (weights, optimizer, scheduler, phase
state and every RNG), atomic checkpoints written by rank 0 only, and a checkpoint on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from datasets.metrics import clip_metrics, video_metrics
from pruning import UserError, apply_masks, mask_gradients

from . import distributed as dist_utils
from .checkpoint import save_checkpoint
from .data import make_loader
from .logger import RunLogger


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class PhaseHooks:
    """What a phase adds to plain training."""

    name: str
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None  # ADMM / group-lasso penalty
    masks: dict[str, torch.Tensor] | None = None  # fixed pattern (masked retraining, progressive)
    on_epoch_start: Callable[[int], None] | None = None
    on_iteration_end: Callable[[int], None] | None = None  # global iteration count
    on_epoch_end: Callable[[int], dict] | None = None  # returns extra log fields
    after_step: Callable[[float], None] | None = None  # after each optimizer step, given its learning rate
    teacher: nn.Module | None = None
    distill_until: int = 0  # epochs with distillation on
    state: Callable[[], dict] = field(default=lambda: {})  # phase state saved in checkpoints
    load_state: Callable[[dict], None] = field(default=lambda s: None)


class Trainer:
    def __init__(self, args: argparse.Namespace, model: nn.Module, train_set, val_set, hooks: PhaseHooks,
                 run_dir: Path, device: torch.device, profile: dict | None = None) -> None:
        self.args, self.model, self.hooks = args, model, hooks
        self.train_set, self.val_set = train_set, val_set
        self.run_dir, self.device, self.profile = run_dir, device, profile
        self.rank = dist_utils.rank()
        self.world = torch.distributed.get_world_size() if dist_utils.is_distributed() else 1
        self.ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None) if self.world > 1 else model)
        self.optimizer = self._optimizer()
        self.iters_per_epoch = self._iters_per_epoch()
        self.scheduler = hooks_scheduler(args, self.optimizer, self.iters_per_epoch, hooks.name)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.smooth_eps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=args.amp == "fp16" and device.type == "cuda")
        self.epoch, self.iteration, self.global_iter = 0, 0, 0
        self.best, self.history = -1.0, []
        self.load_errors: list[str] = []
        self.logger = RunLogger(run_dir, enabled=dist_utils.is_main())
        self._stop = False

    # ----------------------------------------------------------------------------------------------- setup
    def _optimizer(self) -> torch.optim.Optimizer:
        a = self.args
        params = [p for p in self.model.parameters() if p.requires_grad]
        if a.optimizer == "adam":
            return torch.optim.Adam(params, lr=a.lr, weight_decay=a.weight_decay)
        return torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)

    def _iters_per_epoch(self) -> int:
        per_rank = -(-len(self.train_set) // self.world)
        n = -(-per_rank // self.args.batch_size)
        return min(n, self.args.max_iters) if self.args.max_iters else n

    @property
    def total_epochs(self) -> int:
        return self.args.total_epochs

    # ----------------------------------------------------------------------------------------- checkpoints
    @property
    def _state_key(self) -> str:
        return self.hooks.name if self.hooks.name in ("admm", "rew") else "phase_state"

    def state_dict(self, metrics: dict | None = None) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "masks": {k: v.cpu() for k, v in (self.hooks.masks or {}).items()},
            "profile": self.profile,
            "phase": self.hooks.name,
            self._state_key: self.hooks.state(),  # "admm": Z, U, rho, stage; "rew": alpha, lambda
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,  # completed epochs
            "iteration": self.iteration,  # completed iterations of the current epoch (after a signal)
            "global_iter": self.global_iter,
            "best": self.best,
            "history": self.history,
            "args": {k: v for k, v in vars(self.args).items() if isinstance(v, (int, float, str, bool, list,
                                                                                  type(None)))},
            "metrics": metrics or (self.history[-1] if self.history else {}),
            "rng": capture_rng(),
        }

    def save(self, name: str, metrics: dict | None = None) -> Path | None:
        if not dist_utils.is_main():
            return None
        path = self.run_dir / name
        save_checkpoint(self.state_dict(metrics), path)
        return path

    def load_state(self, ckpt: dict) -> None:
        """Continue exactly where a checkpoint of this phase stopped."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["lr_scheduler"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt.get("iteration", 0))
        self.global_iter = int(ckpt.get("global_iter", 0))
        self.best, self.history = float(ckpt.get("best", -1.0)), list(ckpt.get("history", []))
        self.hooks.load_state(ckpt.get(self._state_key, {}))
        if self.hooks.masks is not None and ckpt.get("masks"):
            self.hooks.masks.clear()
            self.hooks.masks.update({k: v.to(self.device) for k, v in ckpt["masks"].items()})
        restore_rng(ckpt["rng"])

    # -------------------------------------------------------------------------------------------- signals
    @contextlib.contextmanager
    def _signals(self):
        def handler(signum, frame):
            self._stop = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ----------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        with self._signals():
            while self.epoch < self.total_epochs:
                epoch = self.epoch
                if self.hooks.on_epoch_start:
                    self.hooks.on_epoch_start(epoch)
                train_stats = self.train_one_epoch(epoch)
                if self._stop:
                    path = self.save("last.pth")
                    dist_utils.barrier()
                    print(f"interrupted: saved {path or 'checkpoint'} at epoch {epoch} iteration {self.iteration}; "
                          "continue with --resume auto", file=sys.stderr)
                    sys.exit(143)
                self._check_failures(f"epoch {epoch + 1}: training", train_stats["failed_clips"],
                                     train_stats["failed_clips"] + train_stats["loaded_clips"])
                self._check_finite(epoch, train_stats)
                extra = self.hooks.on_epoch_end(epoch) if self.hooks.on_epoch_end else {}
                self.epoch, self.iteration = epoch + 1, 0
                val = self.evaluate()
                record = {"phase": self.hooks.name, "epoch": epoch + 1, **train_stats, **val, **extra}
                self.history.append({k: v for k, v in record.items() if not isinstance(v, dict)})
                self.logger.log(record)
                is_best = val["video_top1"] >= self.best
                self.best = max(self.best, val["video_top1"])
                self.save("last.pth", record)
                if is_best:
                    self.save("best.pth", record)
                dist_utils.barrier()
        self.logger.close()
        return self.history[-1] if self.history else {}

    def _check_failures(self, what: str, failed: int, tried: int) -> None:
        """More clips failing to load than --max-failed allows is a data problem to fix, not noise to train
        through (a run where every clip fails would otherwise 'train' on nothing)."""
        if tried and failed / tried > self.args.max_failed:
            first = self.load_errors[-failed:][:3] if failed else []
            raise UserError(f"{what}: {failed} of {tried} clips failed to load ({failed / tried:.1%}, above "
                            f"--max-failed {self.args.max_failed:g}); first: {'; '.join(first)}; fix or re-extract "
                            "those videos, or raise --max-failed")

    def _check_finite(self, epoch: int, stats: dict) -> None:
        """A diverged run stops before it saves anything of this epoch: last.pth and best.pth keep the last finite
        model, and no phase result is written. The same verdict on every rank (the loss is all-reduced)."""
        loss, penalty = stats["loss"], stats["penalty"]
        finite_weights = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if np.isfinite(loss) and np.isfinite(penalty) and finite_weights:
            return
        what = f"the training loss is {loss:.4g}" if not np.isfinite(loss) else (
            f"the penalty is {penalty:.4g}" if not np.isfinite(penalty) else "the weights are not finite")
        raise UserError(f"epoch {epoch + 1}: {what}; stopped without saving this epoch (the last finite one is "
                        f"{self.run_dir / 'last.pth'} if any). Likely cause: --lr {self.args.lr:g} is too high for "
                        f"--optimizer {self.args.optimizer}; lower it, or add --warmup")

    def train_one_epoch(self, epoch: int) -> dict:
        a, model = self.args, self.ddp
        model.train()
        if self.hooks.teacher is not None:
            self.hooks.teacher.eval()
        loader = make_loader(self.train_set, batch_size=a.batch_size, workers=a.workers, train=True, seed=a.seed,
                             epoch=epoch, rank=self.rank, world=self.world, skip_batches=self.iteration)
        total = self.iters_per_epoch - self.iteration
        sums = {"loss": 0.0, "penalty": 0.0, "n": 0, "correct": 0}
        failed_before = len(self.load_errors)
        bar = tqdm(loader, total=total, desc=f"{self.hooks.name} {epoch + 1}/{self.total_epochs}", leave=False,
                   disable=not dist_utils.is_main(), dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        for step, (clips, labels, _, failed) in enumerate(bar):
            if step >= total:
                break
            self._record_failures(failed)
            if clips is not None:
                self._step(model, clips, labels, epoch, sums)
            self.iteration += 1
            self.global_iter += 1
            if self.hooks.on_iteration_end:
                self.hooks.on_iteration_end(self.global_iter)
            if sums["n"]:
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}", lr=f"{lr:.2e}")
            if self._stop:
                break
        n = max(sums["n"], 1)
        failed = len(self.load_errors) - failed_before
        loss, pen, acc, cnt, bad, used = dist_utils.all_reduce_sum([sums["loss"], sums["penalty"], sums["correct"], n,
                                                                    failed, sums["n"]])
        return {"loss": loss / cnt, "penalty": pen / cnt, "train_top1": acc / cnt,
                "lr": self.optimizer.param_groups[0]["lr"], "load_errors": len(self.load_errors),
                "failed_clips": int(bad), "loaded_clips": int(used)}

    def _step(self, model, clips, labels, epoch, sums) -> None:
        a, dev = self.args, self.device
        clips, labels = clips.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        amp = a.amp != "off" and dev.type == "cuda"
        dtype = torch.bfloat16 if a.amp == "bf16" else torch.float16
        mix = self._mixup(clips, labels, epoch) if a.mixup else None
        criterion = self.criterion
        if mix is not None:
            clips, other, lam = mix

            def criterion(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return lam * self.criterion(out, y) + (1 - lam) * self.criterion(out, other)
        with torch.autocast(dev.type, dtype=dtype, enabled=amp):
            logits = model(clips)
            if self.hooks.teacher is not None and epoch < self.hooks.distill_until:
                from .penalties import distillation_loss

                with torch.no_grad():
                    teacher_logits = self.hooks.teacher(clips)
                loss = distillation_loss(logits, teacher_logits, labels, temperature=a.kd_temperature,
                                         alpha=a.kd_alpha, ce=criterion, kind=a.kd_loss)
            else:
                loss = criterion(logits, labels)
        penalty = self.hooks.extra_loss(self.model) if self.hooks.extra_loss else None
        total = loss + penalty if penalty is not None else loss
        self.scaler.scale(total / a.accum_steps).backward()
        sums["loss"] += loss.item() * len(labels)
        sums["penalty"] += penalty.item() * len(labels) if penalty is not None else 0.0
        sums["correct"] += clip_metrics(logits, labels, (1,))["top1"] * len(labels)
        sums["n"] += len(labels)
        if self.global_iter % a.print_freq == 0:
            self.logger.scalar("train/iter_loss", loss.item(), self.global_iter)
        if (self.iteration + 1) % a.accum_steps and self.iteration + 1 < self.iters_per_epoch:
            return
        if self.hooks.masks:
            mask_gradients(self.model, self.hooks.masks)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.hooks.after_step:  # e.g. a proximal step
            self.hooks.after_step(self.optimizer.param_groups[0]["lr"])
        if self.hooks.masks:  # weight decay and momentum must not revive pruned weights
            apply_masks(self.model, self.hooks.masks)
        self.scheduler.step()

    def _mixup(self, clips: torch.Tensor, labels: torch.Tensor, epoch: int):
        """(mixed clips, the partner labels, lambda): lambda ~ Beta(alpha, alpha) and the partner order drawn
        from (seed, epoch, iteration, rank), so a resumed run mixes exactly as the uninterrupted one."""
        rng = np.random.default_rng([self.args.seed & 0xFFFFFFFF, epoch, self.iteration, self.rank])
        lam = float(rng.beta(self.args.alpha, self.args.alpha))
        order = torch.from_numpy(rng.permutation(len(labels))).to(clips.device)
        return lam * clips + (1 - lam) * clips[order], labels[order], lam

    def _record_failures(self, failed) -> None:
        for index, message in failed:
            self.load_errors.append(f"sample {index}: {message}")
            tqdm.write(f"load error: sample {index}: {message}", file=sys.stderr)

    @torch.no_grad()
    def evaluate(self) -> dict:
        metrics = evaluate(self.model, self.val_set, self.args, self.device, self.rank, self.world, self.load_errors)
        failed = metrics["val_load_errors"]
        self._check_failures("evaluation", failed, failed + metrics["val_clips"])
        return metrics


def evaluate(model: nn.Module, dataset, args: argparse.Namespace, device: torch.device, rank: int = 0,
             world: int = 1, load_errors: list[str] | None = None) -> dict:
    """Clip-level and video-level (softmax averaged over each video's clips) top-1/top-5, gathered over ranks."""
    model.eval()
    loader = make_loader(dataset, batch_size=args.batch_size, workers=args.workers, train=False, seed=args.seed,
                         epoch=0, rank=rank, world=world)
    logits, labels, vids, failed_all = [], [], [], []
    t0 = time.time()
    with torch.no_grad():
        for clips, y, v, failed in tqdm(loader, desc="eval", leave=False, disable=rank != 0, dynamic_ncols=True):
            failed_all += [f"sample {i}: {m}" for i, m in failed]
            if clips is None:
                continue
            logits.append(model(clips.to(device)).float().cpu())
            labels.append(y)
            vids.append(v)
    local = (torch.cat(logits) if logits else torch.zeros(0, 1), torch.cat(labels) if labels else torch.zeros(0),
             torch.cat(vids) if vids else torch.zeros(0), failed_all)
    parts = dist_utils.gather_objects(local)
    P = torch.cat([p[0] for p in parts if len(p[0])])
    Y = torch.cat([p[1] for p in parts if len(p[1])]).long()
    V = torch.cat([p[2] for p in parts if len(p[2])]).long()
    failures = [f for p in parts for f in p[3]]
    if load_errors is not None:
        load_errors.extend(failures)
    clip, video = clip_metrics(P, Y), video_metrics(P, Y, V)
    return {"clip_top1": clip["top1"], "clip_top5": clip["top5"], "video_top1": video["top1"],
            "video_top5": video["top5"], "val_clips": len(Y), "val_videos": video["num_videos"],
            "val_load_errors": len(failures), "eval_s": round(time.time() - t0, 2)}


def hooks_scheduler(args, optimizer, iters_per_epoch: int, phase: str):
    from .schedule import build_scheduler

    steps = -(-iters_per_epoch // max(1, args.accum_steps))  # optimizer steps per epoch: the last may be partial
    total = args.total_epochs * steps
    warm = args.warmup_epochs * steps if args.warmup else 0
    kind = args.admm_lr if phase == "admm" else args.lr_scheduler
    if phase == "rew" and args.rew_schedule == "tcad":
        from .schedule import tcad_rew_factor

        return torch.optim.lr_scheduler.LambdaLR(optimizer, tcad_rew_factor(steps))
    if kind == "cycle":
        from admm import rt3d_lr_cycle

        return torch.optim.lr_scheduler.LambdaLR(optimizer, rt3d_lr_cycle(args.admm_epochs * iters_per_epoch))
    return build_scheduler(optimizer, kind=kind, lr=args.lr, total_iters=total, warmup_iters=warm,
                           warmup_lr=args.warmup_lr, steps_per_epoch=steps, epochs=args.total_epochs)
