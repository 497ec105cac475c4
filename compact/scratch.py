"""Scratch buffers reused across forward calls.

A fresh multi-megabyte tensor is page-faulted in on first touch, on every call, which costs as much as a pruned
conv; the compact modules therefore take their layout buffers from here and give them back when the next kernel has
read them. Nothing returned to the caller aliases a scratch buffer.

Buffers in a layout whose non-data positions stay zero (the kernels' flat padded layout, `take_padded`; the
stride-phase planes, `take_zero_padded`) keep those zeros from call to call: each layout keeps a buffer of its
own, more memory for no zeroing at all in steady state. `SCRATCH.clear()` gives the memory back. The figures
behind both choices: docs/bench/history.md.
"""
from __future__ import annotations

import threading

import torch

from .layout import interior, zero_padding


class ScratchPool:
    """Free buffers handed out again best-fit; at most `max_buffers` are kept (the largest). A buffer that keeps a
    layout's zero padding goes only to a request for that layout."""

    def __init__(self, max_buffers: int = 32) -> None:
        self.max_buffers = max_buffers
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, numel: int, like: torch.Tensor, zero: bool = False) -> torch.Tensor:
        """A flat buffer of `numel` elements of `like`'s dtype and device (contents undefined unless `zero`)."""
        buf = self._fit_or_new(numel, like)[:numel]  # a view: `give` finds the whole buffer again through its base
        return buf.zero_() if zero else buf

    def take_padded(self, n: int, c: int, grid, s_chan: int, pad, dims, like: torch.Tensor,
                    slack: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A buffer in the flat padded layout (`layout.flat_layout`) with every position that is not data zero,
        and the view of its data positions [n, c, T, H, W] (contents undefined). The holder writes data positions
        only (the kernels' output runs, copies into the view), so a buffer given back keeps its zero padding and
        the next request for the same layout skips the zeroing (several ms per clip on R(2+1)D)."""
        key = ("flat", n, c, tuple(grid), s_chan, tuple(pad), tuple(dims))
        buf, fresh = self.take_zero_padded(key, n * c * s_chan + slack, like)
        return buf, (zero_padding if fresh else interior)(buf, n, c, grid, s_chan, pad, dims)

    def take_zero_padded(self, key: tuple, numel: int, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(buffer, fresh) for a layout named by `key` whose non-data positions the holder never writes: the
        buffer given back for the same key and size, as it was (fresh False), or a new one (fresh True: the caller
        zeroes what is not data). Each key keeps a buffer of its own rather than re-zero a shared one."""
        key = (numel, *key)
        with self._lock:
            same = [i for i, b in enumerate(self._free) if getattr(b, "_p3d_layout", None) == key
                    and b.dtype == like.dtype and b.device == like.device]
            base = self._free.pop(same[0]) if same else None
        if base is not None:
            return base[:numel], False
        base = self._fit_or_new(numel, like)
        base._p3d_layout = key
        return base[:numel], True

    def _fit_or_new(self, numel: int, like: torch.Tensor) -> torch.Tensor:
        """Pop the smallest free buffer that fits and keeps no layout's zeros, or allocate one."""
        with self._lock:
            fits = [i for i, b in enumerate(self._free)
                    if b.numel() >= numel and b.dtype == like.dtype and b.device == like.device
                    and getattr(b, "_p3d_layout", None) is None]
            if fits:
                return self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
        # a normal tensor even under torch.inference_mode(): an inference tensor, reused by a later call outside
        # that mode, would refuse the in-place writes (a normal one is writable in every autograd mode)
        with torch.inference_mode(False):
            return torch.empty(numel, dtype=like.dtype, device=like.device)

    def give(self, buf: torch.Tensor) -> None:
        """Return a buffer from `take`; the caller must not use it afterwards."""
        base = buf._base if buf._base is not None else buf
        with self._lock:
            if any(b is base for b in self._free):
                return
            self._free.append(base)
            self._free.sort(key=lambda b: b.numel(), reverse=True)
            del self._free[self.max_buffers:]

    def clear(self) -> None:
        """Drop every kept buffer (frees the memory)."""
        with self._lock:
            self._free.clear()


SCRATCH = ScratchPool()
