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
    activations of that many clips (all kept for backward when training, the two largest live at once else).
    Raises RuntimeError or ValueError (PyTorch's) when the model cannot take such a clip at all."""
    with torch.device("meta"):
        meta = build().eval()  # (BatchNorm in training mode refuses a single value per channel)
    weights = sum(p.numel() for p in meta.parameters()) * 4
    need = weights * (4 if trains else 1)
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(out.numel()))
             for m in meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty(1, *clip_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    if batch_size:
        per_clip = (sum(sizes) if trains else 2 * max(sizes, default=0)) * 4
        need += per_clip * batch_size
    return need


def takes_clip(build_at: Callable[[int, int], nn.Module], clip_len: int, crop_size: int) -> bool:
    """Whether the model `build_at(clip_len, crop_size)` builds runs on such a clip (on the meta device)."""
    try:
        with torch.device("meta"):
            meta = build_at(clip_len, crop_size).eval()
        with torch.no_grad():
            meta(torch.empty(1, 3, clip_len, crop_size, crop_size, device="meta"))
    except (RuntimeError, ValueError):
        return False
    return True


def smallest(ok: Callable[[int], bool], start: int, limit: int = 4096) -> int | None:
    """The smallest n >= start with ok(n) (ok monotonic), or None up to `limit`."""
    hi = start
    while not ok(hi):
        if hi >= limit:
            return None
        hi = min(2 * hi, limit)
    lo = start
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return hi


def machine_bytes() -> int:
    """This machine's physical memory (0 when the OS does not say). Not what is free now: the estimate counts
    every activation, an upper bound, and a run that would fit once others finish must not be refused."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def check_memory(build: Callable[[], nn.Module], arch: str, clip_shape: tuple[int, ...], batch_size: int,
                 trains: bool, build_at: Callable[[int, int], nn.Module] | None = None) -> None:
    """One line when the model cannot take such clips (`build_at(clip_len, crop_size)`: the smallest it takes) or
    the estimate exceeds the machine's memory; `batch_size` 0 for phases that run no clip."""
    try:
        need = estimate_bytes(build, clip_shape, batch_size, trains)
    except (RuntimeError, ValueError):
        clip_len, crop = clip_shape[1], clip_shape[2]
        hint = "use a longer clip or a larger crop"
        if build_at is not None:
            min_crop = smallest(lambda c: takes_clip(build_at, clip_len, c), crop + 1)
            min_len = smallest(lambda t: takes_clip(build_at, t, crop), clip_len + 1)
            options = [f"--crop-size {min_crop}" if min_crop else "", f"--clip-len {min_len}" if min_len else ""]
            if not any(options):  # both too small: the shortest clip at a large crop, then the smallest crop
                t = smallest(lambda t: takes_clip(build_at, t, max(crop, 256)), clip_len + 1)
                c = t and smallest(lambda c: takes_clip(build_at, t, c), crop + 1)
                options = [f"--clip-len {t} --crop-size {c}" if t and c else ""]
            hint = "use at least " + " or ".join(o for o in options if o) if any(options) else hint
        raise UserError(f"--arch {arch} at --clip-len {clip_len} --crop-size {crop}: the clip is too small for the "
                        f"model (its layers shrink it to nothing); {hint}") from None
    available = machine_bytes()
    if available and need > available:
        batch = f" --batch-size {batch_size}" if batch_size else ""
        raise UserError(f"--arch {arch} at --clip-len {clip_shape[1]} --crop-size {clip_shape[2]}{batch}: needs "
                        f"about {need / 2**30:.1f} GiB, this machine has {available / 2**30:.1f} GiB; use a "
                        "shorter clip or a smaller crop" + (" or batch" if batch else ""))
