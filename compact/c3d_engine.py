"""The C3D engine: C3D's conv stack run by the kernels end to end, in their flat padded layout.

C3D is a plain stack (conv, ReLU, sometimes a pool), so its activations can stay in the kernels' layout from the
first conv to the last: each conv writes its output, bias and ReLU fused, straight into the next conv's input layout,
and a conv followed by a pool writes a grid that the C++ max-pool reads and re-pads. Unpruned convs run the kernel
with a dense plan, Winograd or one of PyTorch's dense paths, whichever is faster for the shape (timed on first use).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import scratch, winograd
from ._ext import load_kernels
from .convert import CompileJob, register_engine, swap_pruned_convs
from .dense_paths import (
    CHANNELS_LAST,
    CONTIGUOUS,
    KERNEL,
    ONEDNN,
    WINOGRAD,
    fastest_mode,
    onednn_conv,
    run_dense,
    run_winograd,
)
from .layout import SLACK, OutputSpec, flat_layout, interior
from .modules import SparseConv3d

ONE = (1, 1, 1)  # every C3D conv: 3x3x3 taps, padding 1, the padding of the layout between convs
_MASKED_DENSE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # SparseConv3d -> its masked dense Conv3d


class Activation(NamedTuple):
    """An activation in the flat padded layout between convs: `n` samples of `c` channels of `s` floats on `grid`
    (`flat_layout(dims, ONE)`), data of shape `dims`."""

    buf: torch.Tensor
    n: int
    c: int
    dims: tuple[int, int, int]
    grid: tuple[int, int, int]
    s: int


@register_engine("models.c3d.C3D", passes=(swap_pruned_convs,))  # by name: compact does not import models
class CompactC3D(nn.Module):
    """C3D with the conv stack run by the sparse kernels end to end.

    Activations stay in a flat zero-padded layout ([N][C][(T+2)(H+2)(W+2)]) from one conv to the next: each conv
    writes its output, with bias and ReLU fused and the padding positions zeroed, directly as the next conv's
    input; convs followed by a pool write a grid that the C++ max-pool reads and re-pads. fc layers are PyTorch.
    """

    pruned_mode: str | None = None  # force "kernel" or "winograd" for the pruned convs (a class default: compact
    # models saved before it existed load with it)

    def __init__(self, model: nn.Module, dense_layers: bool = True, autotune: bool = True) -> None:
        super().__init__()
        from models.c3d import CONVS, POOLS

        self.conv_names = [n for n, _ in CONVS]
        self.pool_of = {c: p[0] for c, p in POOLS.items()}
        self.convs = nn.ModuleDict()
        self.dense_convs = nn.ModuleDict()  # unpruned convs: the kernel or PyTorch, chosen by timing on first use
        self.autotune = autotune
        self.dense_mode: str | None = None  # force an ENGINE_PATHS or DENSE_PATHS mode for the unpruned convs
        self._choice: dict = {}
        for n in self.conv_names:
            m = getattr(model, n)
            if not isinstance(m, SparseConv3d):
                if dense_layers:
                    self.dense_convs[n] = m
                    m = SparseConv3d(m, None, name=n)
                self.convs[n] = m
                continue
            self.convs[n] = m
        self.pools = nn.ModuleDict({p: getattr(model, p) for p in self.pool_of.values()})
        self.fc6, self.fc7, self.fc8 = model.fc6, model.fc7, model.fc8
        self.relu = nn.ReLU()
        self._valid: dict = {}

    @classmethod
    def compile(cls, model: nn.Module, job: CompileJob) -> CompactC3D:
        """The engine over a C3D whose masked convs are SparseConv3d already (`swap_pruned_convs`)."""
        return cls(model, dense_layers=job.dense_layers)

    def _torch_features(self, x: torch.Tensor) -> torch.Tensor:
        for n in self.conv_names:
            conv = self.convs[n]
            x = conv.forward_torch(x) if isinstance(conv, SparseConv3d) else conv(x)
            x = torch.relu(x)
            if n in self.pool_of:
                x = self.pools[self.pool_of[n]](x)
        return x

    def _valid_mask(self, grid, dims, q) -> torch.Tensor:
        key = (grid, dims)
        v = self._valid.get(key)
        if v is None:
            _, hp, wp = grid
            idx = np.arange(q)
            ok = ((idx % wp) < dims[2]) & (((idx // wp) % hp) < dims[1])
            v = self._valid[key] = torch.from_numpy(ok.astype(np.float32))
        return v

    def _conv_step(self, ext, name: str, mode: str, act: Activation) -> torch.Tensor:
        """One conv + bias + ReLU from the padded layout into the next layout: the flat grid the pool after it reads
        (positions from the plane origin), else the next conv's padded input."""
        conv = self.convs[name]
        n, c, dims, grid, s, cout = act.n, act.c, act.dims, act.grid, act.s, conv.out_channels
        pooled = name in self.pool_of
        if mode != KERNEL:  # Winograd or PyTorch's dense conv, from the layout's interior into the next one's
            out = scratch.SCRATCH.take(n * cout * s + SLACK, act.buf, zero=True)
            x, dest = interior(act.buf, n, c, grid, s, ONE, dims), interior(out, n, cout, grid, s,
                                                                             (0, 0, 0) if pooled else ONE, dims)
            if mode == WINOGRAD:  # bias and ReLU in its output transform
                run_winograd(self.dense_conv(name), x, out=dest, relu=True)
            else:
                dest.copy_(torch.relu_(run_dense(self.dense_conv(name), x, mode)))
            return out
        ctx = conv.layout_ctx(n, dims, grid, s)
        out = scratch.SCRATCH.take(n * cout * s + SLACK, act.buf)
        if pooled:
            write = OutputSpec(sample_stride=cout * s, chan_stride=s, chan_len=s, relu=True)
        else:  # shifted by one plane, row and column into the padding; separators and borders zeroed
            write = OutputSpec(sample_stride=cout * s, chan_stride=s, shift=grid[1] * grid[2] + grid[2] + 1,
                               chan_len=s, zero_rest=True, relu=True, valid=self._valid_mask(grid, dims, ctx.q))
        ext.sparse_conv(input=act.buf, ctx=ctx, bias=conv.bias, out=out, write=write)
        return out

    def dense_conv(self, name: str) -> nn.Conv3d:
        """The conv `name` as a dense nn.Conv3d: the unpruned one, or the pruned one's masked weight (built on first
        use, kept outside the module like the other paths' prepared weights)."""
        if name in self.dense_convs:
            return self.dense_convs[name]
        sc = self.convs[name]
        if not isinstance(sc, SparseConv3d):  # an unpruned conv kept as it is (dense_layers=False)
            return sc
        conv = _MASKED_DENSE.get(sc)
        if conv is None:
            with torch.inference_mode(False):
                conv = nn.Conv3d(sc.in_channels, sc.out_channels, sc.kernel_size, padding=sc.padding)
                conv.weight.data.copy_(sc.dense_weight())
                conv.bias.data.copy_(sc.bias if sc.bias is not None else torch.zeros(sc.out_channels))
                _MASKED_DENSE[sc] = conv
        return conv

    def chosen_mode(self, name: str, batch_size: int) -> str | None:
        """The path a conv runs at this batch size (forced, or timed on an earlier call), else None."""
        forced = self.dense_mode if name in self.dense_convs else self.pruned_mode
        chosen = [m for key, m in self._choice.items() if key[0] == name and key[1] == batch_size]
        return forced or (chosen[0] if chosen else None)

    def _choose(self, ext, name: str, act: Activation) -> str:
        """The path of conv `name`, timed on first use: an unpruned conv's among the kernel, Winograd and PyTorch's,
        a pruned one's between the kernel and Winograd on its masked weight (which can win on deep layers at large
        batches: docs/bench/history.md)."""
        unpruned = name in self.dense_convs
        forced = self.dense_mode if unpruned else self.pruned_mode
        if forced:
            return forced
        if self.convs[name].precision != "fp32":  # the other paths are fp32
            return KERNEL
        key = (name, act.n, act.c, act.dims, torch.get_num_threads())
        mode = self._choice.get(key)
        if mode is None:
            if not self.autotune:
                mode = KERNEL
            else:
                modes = (KERNEL, CONTIGUOUS, CHANNELS_LAST) if unpruned else (KERNEL,)
                if unpruned and onednn_conv(self.dense_convs[name]) is not None:
                    modes += (ONEDNN,)
                if winograd.supports(self.dense_conv(name)):
                    modes += (WINOGRAD,)
                mode = fastest_mode(lambda m: scratch.SCRATCH.give(self._conv_step(ext, name, m, act)), modes)
            self._choice[key] = mode
        return mode

    def features(self, x: torch.Tensor) -> torch.Tensor:
        ext = load_kernels()
        if ext is None or x.dtype != torch.float32:
            return self._torch_features(x)
        x = x.contiguous()
        n, c = x.shape[:2]
        dims = tuple(x.shape[2:])
        grid, s = flat_layout(dims, ONE)
        buf = scratch.SCRATCH.take(n * c * s + SLACK, x, zero=True)
        interior(buf, n, c, grid, s, ONE, dims).copy_(x)
        act = Activation(buf, n, c, dims, grid, s)
        for name in self.conv_names:
            conv = self.convs[name]
            mode = self._choose(ext, name, act) if isinstance(conv, SparseConv3d) else CONTIGUOUS
            out = self._conv_step(ext, name, mode, act)
            scratch.SCRATCH.give(act.buf)
            c = conv.out_channels
            if name not in self.pool_of:
                act = act._replace(buf=out, c=c)
                continue
            pool = self.pools[self.pool_of[name]]
            kt, kh, kw = pool.kernel_size
            _, ph, pw = pool.padding
            t, h, w = act.dims
            pdims = ((t - kt) // kt + 1, (h + 2 * ph - kh) // kh + 1, (w + 2 * pw - kw) // kw + 1)
            last = name == self.conv_names[-1]
            if last:  # dense output, the fc layers' input
                dest = x.new_empty(n * c * pdims[0] * pdims[1] * pdims[2])
                g2, s2, chan_stride, shift = pdims, 0, pdims[0] * pdims[1] * pdims[2], 0
            else:  # the next conv's padded input
                g2, s2 = flat_layout(pdims, ONE)
                dest = scratch.SCRATCH.take(n * c * s2 + SLACK, x, zero=True)
                chan_stride, shift = s2, g2[1] * g2[2] + g2[2] + 1
            ext.maxpool(input=out, out=dest, planes=n * c, in_chan_stride=act.s, Hg=act.grid[1], Wg=act.grid[2],
                        T=t, H=h, W=w, kt=kt, kh=kh, kw=kw, ph=ph, pw=pw, To=pdims[0], Ho=pdims[1], Wo=pdims[2],
                        out_chan_stride=chan_stride, oH=g2[1], oW=g2[2], out_off=shift)
            scratch.SCRATCH.give(out)
            if last:
                return dest.view(n, c, *pdims)
            act = Activation(dest, n, c, pdims, g2, s2)
        return interior(act.buf, n, c, act.grid, act.s, ONE, act.dims).contiguous()  # never hand out scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        x = self.relu(self.fc6(x))
        x = self.relu(self.fc7(x))
        return self.fc8(x)
