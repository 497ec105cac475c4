"""A memory estimate made on the meta device, so that sizes this machine cannot hold are refused before anything
is allocated (a --clip-len 100000 C3D has a 10^11-weight fc6)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from pruning import UserError


def estimate_bytes(build: Callable[[], nn.Module], clip_shape: tuple[int, ...], batch_size: int,
                   trains: bool) -> int:
    """Weights (x4 when training: gradients, optimizer state, a mask or copy) plus, for `batch_size` > 0, the
    activations of that many clips (all kept for backward when training, the two largest live at once else)."""
    with torch.device("meta"):
        meta = build()
    weights = sum(p.numel() for p in meta.parameters()) * 4
    need = weights * (4 if trains else 1)
    if batch_size:
        sizes: list[int] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(out.numel()))
                 for m in meta.modules() if not list(m.children())]
        with torch.no_grad():
            meta(torch.empty(1, *clip_shape, device="meta"))
        for h in hooks:
            h.remove()
        per_clip = (sum(sizes) if trains else 2 * max(sizes, default=0)) * 4
        need += per_clip * batch_size
    return need


def machine_bytes() -> int:
    """This machine's physical memory (0 when the OS does not say). Not what is free now: the estimate counts
    every activation, an upper bound, and a run that would fit once others finish must not be refused."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def check_memory(build: Callable[[], nn.Module], arch: str, clip_shape: tuple[int, ...], batch_size: int,
                 trains: bool) -> None:
    """One line when the estimate exceeds the machine's memory; `batch_size` 0 for phases that run no clip."""
    need, available = estimate_bytes(build, clip_shape, batch_size, trains), machine_bytes()
    if available and need > available:
        batch = f" --batch-size {batch_size}" if batch_size else ""
        raise UserError(f"--arch {arch} at --clip-len {clip_shape[1]} --crop-size {clip_shape[2]}{batch}: needs "
                        f"about {need / 2**30:.1f} GiB, this machine has {available / 2**30:.1f} GiB; use a "
                        "shorter clip or a smaller crop" + (" or batch" if batch else ""))
