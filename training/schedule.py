"""Per-optimizer-step learning-rate schedules (factors of --lr for LambdaLR)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# TCAD's reweighted training: alpha is refreshed and the lr raised x1.6 at the start of these epochs (0-based);
# every other epoch from the second lowers it x0.98 (docs/recipes.md)
TCAD_REW_EPOCHS = (10, 20, 30, 40, 50, 75, 100, 125)
MULTISTEP_EPOCHS = (45, 90, 120)  # both papers' "multistep": x0.5 at each


def build_scheduler(optimizer: torch.optim.Optimizer, *, kind: str, lr: float, total_iters: int,
                    warmup_iters: int = 0, warmup_lr: float = 1e-5, step_iters: int | None = None,
                    steps_per_epoch: int = 1, epochs: int | None = None):
    """Linear warm-up from `warmup_lr` to `lr`, then (counting from the warm-up's end, as the papers'
    GradualWarmupScheduler does):
    cosine to ~0; step (x0.1 at 1/3 and 2/3); default (x0.5 every max(1, int(0.2 * epochs)) epochs); multistep
    (x0.5 at epochs 45, 90, 120); constant."""
    start = warmup_lr / lr if lr > 0 else 1.0
    epochs = epochs if epochs is not None else max(1, total_iters // max(1, steps_per_epoch))

    def factor(it: int) -> float:
        if it < warmup_iters:
            return start + (1.0 - start) * it / warmup_iters
        t = it - warmup_iters
        span = max(1, total_iters - warmup_iters)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(t, span) / span))
        if kind == "step":
            return 0.1 ** (t // max(1, step_iters or span // 3))
        if kind == "default":
            return 0.5 ** (t // (max(1, int(epochs * 0.2)) * steps_per_epoch))
        if kind == "multistep":
            return 0.5 ** sum(t >= e * steps_per_epoch for e in MULTISTEP_EPOCHS)
        if kind == "constant":
            return 1.0
        raise ValueError(f"unknown lr schedule {kind!r}")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def tcad_rew_factor(steps_per_epoch: int) -> Callable[[int], float]:
    """TCAD's reweighting lr: constant within an epoch; entering epoch e >= 1 multiplies it by 1.6 when e is an
    alpha-refresh epoch, else by 0.98."""
    def factor(it: int) -> float:
        epoch = it // max(1, steps_per_epoch)
        ups = sum(1 for e in TCAD_REW_EPOCHS if e <= epoch)
        return 1.6 ** ups * 0.98 ** (epoch - ups)
    return factor
