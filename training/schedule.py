"""Per-iteration learning-rate schedules."""

from __future__ import annotations

import math

import torch


def build_scheduler(optimizer: torch.optim.Optimizer, *, kind: str, lr: float, total_iters: int,
                    warmup_iters: int = 0, warmup_lr: float = 1e-5, step_iters: int | None = None):
    """Linear warm-up from `warmup_lr` to `lr`, then cosine to ~0, step decay (x0.1), or constant."""
    start = warmup_lr / lr if lr > 0 else 1.0

    def factor(it: int) -> float:
        if it < warmup_iters:
            return start + (1.0 - start) * it / warmup_iters
        t = it - warmup_iters
        span = max(1, total_iters - warmup_iters)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(t, span) / span))
        if kind == "step":
            return 0.1 ** (t // max(1, step_iters or span // 3))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
