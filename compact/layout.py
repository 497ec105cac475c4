"""The kernels' flat zero-padded activation layout: its geometry, views into it, and where outputs land.

A stride-1 conv reads its input as one flat row per channel in which every tap of every output position lands on
data or on a zero (`flat_layout`); the kernel computes a position for every flat index up to the last output,
separators included (`flat_positions`), and writes the ones that are outputs through runs of consecutive
destinations (`scatter_index`, `output_runs`). Strided convs read stride-phase planes instead (`copy_phases`).
A kernel call (`ext.sparse_conv`) takes a `LayoutCtx` (the prepared input and the plan that reads it) and an
`OutputSpec` (where and how to write). Everyone in `compact/` imports these from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .plan import TILE, KernelPlan

SLACK = TILE + 64
"""Extra zero floats after a layout buffer: the last tile's vector loads may read past the last position."""


def flat_layout(dims, pad) -> tuple[tuple[int, int, int], int]:
    """Grid and per-channel length of the flat zero-padded layout for a stride-1 conv.

    Rows and planes share their separators: W + pw columns per row (the pw zero columns left of a row are also
    the right padding of the row before), H + ph rows per plane, T + 2pt planes, and (ph + 1) zero rows at the
    end, so every tap of every valid output position reads either data or a zero.
    """
    grid = (dims[0] + 2 * pad[0], dims[1] + pad[1], dims[2] + pad[2])
    return grid, (grid[0] * grid[1] + pad[1] + 1) * grid[2]


def interior(buf: torch.Tensor, n: int, c: int, grid, s_chan: int, pad, dims) -> torch.Tensor:
    """View of the data positions of a flat padded buffer as [n, c, T, H, W]."""
    v = buf[:n * c * s_chan].view(n, c, s_chan)[:, :, :grid[0] * grid[1] * grid[2]].unflatten(2, tuple(grid))
    return v[:, :, pad[0]:pad[0] + dims[0], pad[1]:pad[1] + dims[1], pad[2]:pad[2] + dims[2]]


def zero_padding(buf: torch.Tensor, n: int, c: int, grid, s_chan: int, pad, dims, value=0) -> torch.Tensor:
    """Set every position of a flat padded buffer (and its slack) that is not data to zero (or `value`: a packed
    layout's encoding of zero); returns the data view [n, c, T, H, W]. Only the padding is written: the data
    positions are left for the caller to fill."""
    buf[n * c * s_chan:].fill_(value)
    chans = buf[:n * c * s_chan].view(n, c, s_chan)
    vol = grid[0] * grid[1] * grid[2]
    chans[:, :, vol:].fill_(value)
    v = chans[:, :, :vol].unflatten(2, tuple(grid))
    v[:, :, :pad[0]].fill_(value)
    v[:, :, pad[0] + dims[0]:].fill_(value)
    mid = v[:, :, pad[0]:pad[0] + dims[0]]
    if pad[1]:
        mid[:, :, :, :pad[1]].fill_(value)
    if pad[2]:
        mid[:, :, :, pad[1]:, :pad[2]].fill_(value)
    return mid[:, :, :, pad[1]:, pad[2]:]


def flat_positions(outd, grid) -> int:
    """Positions the kernel computes for outputs `outd` on a flat grid: up to the last output, separators included."""
    return (outd[0] - 1) * grid[1] * grid[2] + (outd[1] - 1) * grid[2] + outd[2]


def scatter_index(q: int, grid, outd, dest_grid=None, offset=(0, 0, 0)) -> torch.Tensor:
    """Index, within one output channel, of each of the `q` flat positions computed on `grid` (-1: a separator,
    not an output). The destination is dense [T', H, W] planes, or with `dest_grid` the flat layout of that grid
    (see `flat_layout`), output (t, h, w) landing at (t, h, w) + `offset`."""
    pos = np.arange(q)
    hw = grid[1] * grid[2]
    t, h, w = pos // hw, (pos % hw) // grid[2], pos % grid[2]
    ok = (h < outd[1]) & (w < outd[2])
    g = outd if dest_grid is None else dest_grid
    idx = ((t + offset[0]) * g[1] + h + offset[1]) * g[2] + w + offset[2]
    return torch.from_numpy(np.where(ok, idx, -1).astype(np.int32))


class OutputRuns(NamedTuple):
    """Where each computed position goes (`output_runs`)."""

    runs: torch.Tensor  # int32 [nruns, 3]: (first position, length, destination of the first)
    tile_runs: torch.Tensor  # int32 [ntiles + 1] into runs: the runs of each tile


def output_runs(oidx: torch.Tensor) -> OutputRuns:
    """`scatter_index` as the kernel takes it: runs of consecutive positions going to consecutive destinations,
    cut at tile boundaries, so that the kernel writes each with a vectorized loop."""
    idx = oidx.numpy().astype(np.int64)
    q = len(idx)
    pos = np.arange(q)
    ok = idx >= 0
    prev_ok = np.r_[False, ok[:-1]]
    follows = prev_ok & (idx == np.r_[-2, idx[:-1]] + 1) & (pos % TILE != 0)
    starts = np.flatnonzero(ok & ~follows)
    ends_mask = ok & ~np.r_[follows[1:], False]  # last position of each run
    ends = np.flatnonzero(ends_mask) + 1
    runs = np.stack([starts, ends - starts, idx[starts]], 1).astype(np.int32)
    tile_runs = np.searchsorted(starts, np.arange(0, -(-q // TILE) + 1) * TILE).astype(np.int32)
    return OutputRuns(torch.from_numpy(np.ascontiguousarray(runs)), torch.from_numpy(tile_runs))


def copy_phases(x: torch.Tensor, phases: torch.Tensor, pad, stride) -> None:
    """Copy x ([N, C, T, H, W]) into zeroed stride-phase planes ([N, C, st, sh, sw, gt, gh, gw]): padded position
    s*i + r of a dimension goes to phase r, index i. One strided copy per phase, no padded temporary."""
    dims = x.shape[2:]
    ranges = []
    for d in range(3):  # per dimension and phase r: (phase index range, first input index)
        per = []
        for r in range(stride[d]):
            i0 = max(0, -(-(pad[d] - r) // stride[d]))
            i1 = (pad[d] + dims[d] - 1 - r) // stride[d] + 1
            per.append((r, i0, i1, stride[d] * i0 + r - pad[d]))
        ranges.append(per)
    for rt, t0, t1, xt in ranges[0]:
        for rh, h0, h1, xh in ranges[1]:
            for rw, w0, w1, xw in ranges[2]:
                if t1 > t0 and h1 > h0 and w1 > w0:
                    phases[:, :, rt, rh, rw, t0:t1, h0:h1, w0:w1].copy_(
                        x[:, :, xt::stride[0], xh::stride[1], xw::stride[2]])


@dataclass(frozen=True)
class LayoutCtx:
    """A conv's input as the kernel reads it: `n` samples of `per_sample` floats each on `grid` (flat layout or
    stride-phase planes), the conv's `plan` for that geometry, and the `q` flat positions computed for outputs of
    shape `outd`. The kernel reads `n`, `per_sample`, `q` and `plan` by name."""

    n: int
    plan: KernelPlan
    per_sample: int
    q: int
    outd: tuple[int, int, int]
    grid: tuple[int, int, int]
    packed: bool = False  # the input is already in `plan`'s bf16 / int8 layout (`per_sample` in its elements)


class OutputSpec(NamedTuple):
    """Where and how a kernel call writes its output; the kernel reads every field by name.

    Output position q of filter f, sample i goes to `i * sample_stride + f * chan_stride + shift + q` of the output
    tensor, or with `runs` to the destinations those give within the channel. `zero_rest` also zeroes the rest of
    each channel's `chan_len` floats; `valid` (float [q], 0/1) multiplies each position (zeros at separators);
    `accumulate` (with `runs`) adds the value already there before the ReLU (a fused residual). `pack` (with
    `runs`): the output is written as the next conv's packed bf16 / int8 input (its plan's precision code,
    `pack_inv_scale` and `pack_zero` its input quantization; strides in that layout's elements, `chan_stride` one
    plane's positions), what its kernel call would otherwise pack from fp32, bit for bit; with `pack_into`, the
    fp32 output is written as usual and its packed copy (residual and ReLU included) goes there.
    """

    sample_stride: int
    chan_stride: int
    shift: int = 0
    chan_len: int = 0
    zero_rest: bool = False
    relu: bool = False
    valid: torch.Tensor | None = None
    runs: OutputRuns | None = None
    accumulate: bool = False
    pack: int = 0
    pack_inv_scale: float = 0.0
    pack_zero: int = 0
    pack_into: torch.Tensor | None = None  # with pack: fp32 output as usual, and a packed copy here
    pack_sample_stride: int = 0  # (its sample stride in elements)
