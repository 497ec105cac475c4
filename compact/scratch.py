"""Scratch buffers reused across forward calls.

A fresh multi-megabyte tensor is page-faulted in on first touch, on every call, which costs as much as a pruned
conv; the compact modules therefore take their layout buffers from here and give them back when the next kernel has
read them. Nothing returned to the caller aliases a scratch buffer.

Buffers in a layout whose non-data positions stay zero (the kernels' flat padded layout, `take_padded`; the
stride-phase planes, `take_zero_padded`) keep those zeros from call to call: each layout keeps a buffer of its
own, more memory for no zeroing at all in steady state, up to a byte budget: past it, layouts share buffers and
re-zero their padding (`ScratchPool`). `SCRATCH.clear()` gives the memory back; `SCRATCH.budget` sets the budget
(bytes; None: twice the largest activation). The figures behind these choices: docs/bench/history.md.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch

from .layout import interior, zero_padding


class ScratchPool:
    """Free byte buffers handed out again best-fit, as any dtype; a buffer that keeps a layout's zero padding goes
    only to a request for that layout while the budget allows. At most `max_buffers` free buffers are kept (the
    largest).

    Budget: the bytes of every buffer the pool made that is still alive, lent or free, stay within `budget` (None:
    `factor` x the largest single request, or the most ever lent at once if that is more: memory no reuse can
    avoid). Over it, a layout request takes another layout's free buffer and re-zeroes its padding, and free
    buffers are dropped, smallest first; a request that nothing free fits is still served (a new buffer)."""

    def __init__(self, max_buffers: int = 32, budget: int | None = None, factor: float = 2.0) -> None:
        self.max_buffers = max_buffers
        self.budget = budget
        self.factor = factor
        self._free: list[torch.Tensor] = []
        self._lock = threading.RLock()  # a buffer's finalizer (`_release`) may run while it is held
        self._largest = 0  # bytes of the largest request
        self._owned = 0  # bytes of the pool's buffers alive (lent or free)
        self._lending = 0  # bytes lent out now
        self._lent_peak = 0
        self.peak = 0  # the most bytes owned at once (since `clear`)
        self.allocations = 0  # buffers made (a steady-state call should make none)

    @property
    def limit(self) -> int:
        """The byte budget in force."""
        if self.budget is not None:
            return self.budget
        return max(int(self.factor * self._largest), self._lent_peak)

    def take(self, numel: int, like: torch.Tensor, zero: bool = False) -> torch.Tensor:
        """A flat buffer of `numel` elements of `like`'s dtype and device (contents undefined unless `zero`)."""
        buf = _typed(self._fit_or_new(numel * like.element_size(), like.device), numel, like.dtype)
        return buf.zero_() if zero else buf

    def take_padded(self, n: int, c: int, grid, s_chan: int, pad, dims, like: torch.Tensor,
                    slack: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A buffer in the flat padded layout (`layout.flat_layout`) with every position that is not data zero,
        and the view of its data positions [n, c, T, H, W] (contents undefined). The holder writes data positions
        only (the kernels' output runs, copies into the view), so a buffer given back keeps its zero padding and
        the next request for the same layout skips the zeroing (several ms per clip on R(2+1)D). Layouts of one
        geometry (grid, padding) share buffers whatever their sample and channel counts: every channel plane of
        such a buffer keeps its padding zero, and only the slack after the planes asked for is zeroed again."""
        key = ("flat", tuple(grid), s_chan, tuple(pad), tuple(dims))
        numel = n * c * s_chan + slack
        buf, fresh = self.take_zero_padded(key, numel, like, any_size=True)
        if fresh:  # the whole buffer past the planes asked for too, for a later request with more of them
            buf._p3d_base[n * c * s_chan * like.element_size():].zero_()
            return buf, zero_padding(buf, n, c, grid, s_chan, pad, dims)
        buf[n * c * s_chan:numel].zero_()
        return buf, interior(buf, n, c, grid, s_chan, pad, dims)

    def take_zero_padded(self, key: tuple, numel: int, like: torch.Tensor,
                         any_size: bool = False) -> tuple[torch.Tensor, bool]:
        """(buffer, fresh) for a layout named by `key` whose non-data positions the holder never writes: the
        buffer given back for the same key and size (`any_size`: the smallest of that key that holds `numel`), as
        it was (fresh False), or another one (fresh True: the caller zeroes what is not data). Each key keeps a
        buffer of its own while the budget allows."""
        nbytes = numel * like.element_size()
        key = (like.dtype, *key) if any_size else (numel, like.dtype, *key)
        with self._lock:
            same = [i for i, b in enumerate(self._free) if getattr(b, "_p3d_layout", None) == key
                    and b.device == like.device and b.numel() >= nbytes]
            if same:
                self._largest = max(self._largest, nbytes)
            base = self._free.pop(min(same, key=lambda i: self._free[i].numel())) if same else None
            if base is not None:
                self._lent(base)
        if base is not None:
            return _typed(base, numel, like.dtype), False
        base = self._fit_or_new(numel * like.element_size(), like.device)
        base._p3d_layout = key
        return _typed(base, numel, like.dtype), True

    def _fit_or_new(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """Pop the smallest free buffer (bytes) that fits and keeps no layout's zeros (over the budget: any that
        fits), or make one."""
        with self._lock:
            self._largest = max(self._largest, nbytes)
            fits = [i for i, b in enumerate(self._free) if b.numel() >= nbytes and b.device == device]
            plain = [i for i in fits if getattr(self._free[i], "_p3d_layout", None) is None]
            if not plain and self._owned + nbytes > self.limit:
                plain = fits
            if plain:
                base = self._free.pop(min(plain, key=lambda i: self._free[i].numel()))
                base._p3d_layout = None
                self._lent(base)
                return base
            self._trim(self.limit - nbytes)
        # a normal tensor even under torch.inference_mode(): an inference tensor, reused by a later call outside
        # that mode, would refuse the in-place writes (a normal one is writable in every autograd mode)
        with torch.inference_mode(False):
            base = torch.empty(max(64, -(-nbytes // 64) * 64), dtype=torch.uint8, device=device)
        base._p3d_state = state = {"size": base.numel(), "lent": False}
        with self._lock:
            self._owned += state["size"]
            self.allocations += 1
            self.peak = max(self.peak, self._owned)
            self._lent(base)
        weakref.finalize(base, self._release, state)  # however it dies: dropped from the pool, or lost by a caller
        return base

    def give(self, buf: torch.Tensor) -> None:
        """Return a buffer from `take`; the caller must not use it afterwards."""
        base = getattr(buf, "_p3d_base", None)
        with self._lock:
            if base is None or not base._p3d_state["lent"]:  # not from here, or given back already
                return
            self._lent(base, -1)
            self._free.append(base)
            self._free.sort(key=lambda b: b.numel(), reverse=True)  # (bytes)
            del self._free[self.max_buffers:]
            self._trim(self.limit)

    def clear(self) -> None:
        """Drop every kept buffer (frees the memory) and forget the sizes seen (the default budget is measured
        again from the next calls)."""
        with self._lock:
            self._free.clear()
            self._largest, self._lent_peak = 0, self._lending
            self.peak = self._owned

    def _lent(self, base: torch.Tensor, sign: int = 1) -> None:
        """Count a buffer going out (or, sign -1, coming back); under the lock."""
        state = base._p3d_state
        state["lent"] = sign > 0
        self._lending += sign * state["size"]
        self._lent_peak = max(self._lent_peak, self._lending)

    def _trim(self, limit: int) -> None:
        """Drop free buffers, smallest first, until the pool owns at most `limit` bytes (or none is free); under
        the lock. Their bytes leave `_owned` when their storage is freed (`_release`)."""
        excess = self._owned - limit
        while excess > 0 and self._free:
            b = self._free.pop()
            excess -= b.numel()

    def _release(self, state: dict) -> None:
        with self._lock:
            self._owned -= state["size"]
            if state["lent"]:  # never given back (an exception mid-forward)
                self._lending -= state["size"]


def _typed(base: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """The first `numel` elements of `dtype` of a byte buffer; the view holds the buffer (`give` finds it there,
    and a buffer its taker drops dies with the view)."""
    view = base[:numel * dtype.itemsize].view(dtype)
    view._p3d_base = base
    return view


SCRATCH = ScratchPool()


@contextlib.contextmanager
def using(pool: ScratchPool) -> Iterator[ScratchPool]:
    """Run the compact modules on `pool` instead of `SCRATCH` inside the block (e.g. to time two budgets side by
    side); not for concurrent use from several threads."""
    global SCRATCH
    prev, SCRATCH = SCRATCH, pool
    try:
        yield pool
    finally:
        SCRATCH = prev
