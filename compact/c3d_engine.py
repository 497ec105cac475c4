"""The C3D engine: C3D's conv stack run by the kernels end to end, in their flat padded layout.

C3D is a plain stack (conv, ReLU, sometimes a pool), so its activations can stay in the kernels' layout from the
first conv to the last: each conv writes its output, bias and ReLU fused, straight into the next conv's input layout,
and a conv followed by a pool writes a grid that the C++ max-pool reads and re-pads. Unpruned convs run the kernel
with a dense plan or one of PyTorch's dense paths, whichever is faster for the shape (timed on first use).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._ext import load_kernels
from .convert import CompileJob, register_engine, swap_pruned_convs
from .dense_paths import CHANNELS_LAST, CONTIGUOUS, KERNEL, ONEDNN, fastest_mode, onednn_conv, run_dense
from .layout import SLACK, flat_layout, flat_positions, interior
from .modules import SparseConv3d, _run
from .scratch import SCRATCH


@register_engine("models.c3d.C3D", passes=(swap_pruned_convs,))  # by name: compact does not import models
class CompactC3D(nn.Module):
    """C3D with the conv stack run by the sparse kernels end to end.

    Activations stay in a flat zero-padded layout ([N][C][(T+2)(H+2)(W+2)]) from one conv to the next: each conv
    writes its output, with bias and ReLU fused and the padding positions zeroed, directly as the next conv's
    input; convs followed by a pool write a grid that the C++ max-pool reads and re-pads. fc layers are PyTorch.
    """

    def __init__(self, model: nn.Module, dense_layers: bool = True, autotune: bool = True) -> None:
        super().__init__()
        from models.c3d import CONVS, POOLS

        self.conv_names = [n for n, _ in CONVS]
        self.pool_of = {c: p[0] for c, p in POOLS.items()}
        self.convs = nn.ModuleDict()
        self.dense_convs = nn.ModuleDict()  # unpruned convs: the kernel or PyTorch, chosen by timing on first use
        self.autotune = autotune
        self.dense_mode: str | None = None  # force "kernel" or a dense_paths.DENSE_PATHS for the unpruned convs
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

    def _conv_step(self, ext, name, mode, buf, n, c, cout, t, h, w, grid, s, q, hw) -> torch.Tensor:
        """One conv + bias + ReLU from the padded layout into the next layout (pool grid or padded)."""
        one = (1, 1, 1)
        if mode != KERNEL:  # PyTorch's dense conv: leave and re-enter the layout
            conv = self.dense_convs[name] if name in self.dense_convs else self.convs[name]
            y = torch.relu_(run_dense(conv, interior(buf, n, c, grid, s, one, (t, h, w)), mode))
            out = SCRATCH.take(n * cout * s + SLACK, buf, zero=True)
            interior(out, n, cout, grid, s, (0, 0, 0) if name in self.pool_of else one, (t, h, w)).copy_(y)
            return out
        conv = self.convs[name]
        off = conv.layout_ctx(n, (t, h, w), grid, s).off
        out = SCRATCH.take(n * cout * s + SLACK, buf)
        if name in self.pool_of:
            _run(ext, conv.plan, off, buf, c * s, out, cout * s, s, 0, s, False, n, q, conv.bias, True, None)
        else:
            valid = self._valid_mask(grid, (t, h, w), q)
            _run(ext, conv.plan, off, buf, c * s, out, cout * s, s, hw + grid[2] + 1, s, True, n, q, conv.bias,
                 True, valid)
        return out

    def chosen_mode(self, name: str, batch_size: int) -> str | None:
        """The path an unpruned conv runs at this batch size (forced, or timed on an earlier call), else None."""
        if name not in self.dense_convs:
            return None
        chosen = [m for key, m in self._choice.items() if key[0] == name and key[1][0] == batch_size]
        return self.dense_mode or (chosen[0] if chosen else None)

    def _choose(self, ext, name, args) -> str:
        if self.dense_mode:
            return self.dense_mode
        key = (name, args[1:3] + args[4:7], torch.get_num_threads())
        mode = self._choice.get(key)
        if mode is None:
            if not self.autotune:
                mode = KERNEL
            else:
                modes = (KERNEL, CONTIGUOUS, CHANNELS_LAST)
                if onednn_conv(self.dense_convs[name]) is not None:
                    modes += (ONEDNN,)
                mode = fastest_mode(lambda m: SCRATCH.give(self._conv_step(ext, name, m, *args)), modes)
            self._choice[key] = mode
        return mode

    def features(self, x: torch.Tensor) -> torch.Tensor:
        ext = load_kernels()
        if ext is None or x.dtype != torch.float32:
            return self._torch_features(x)
        x = x.contiguous()
        n, c, t, h, w = x.shape
        one = (1, 1, 1)
        grid, s = flat_layout((t, h, w), one)
        buf = SCRATCH.take(n * c * s + SLACK, x, zero=True)
        interior(buf, n, c, grid, s, one, (t, h, w)).copy_(x)
        for name in self.conv_names:
            conv = self.convs[name]
            hw = grid[1] * grid[2]
            q = flat_positions((t, h, w), grid)
            cout = conv.out_channels
            mode = KERNEL if isinstance(conv, SparseConv3d) else CONTIGUOUS
            if name in self.dense_convs:  # unpruned layer: the kernel or oneDNN, whichever ran faster here
                mode = self._choose(ext, name, (buf, n, c, cout, t, h, w, grid, s, q, hw))
            out = self._conv_step(ext, name, mode, buf, n, c, cout, t, h, w, grid, s, q, hw)
            SCRATCH.give(buf)
            c = cout
            if name in self.pool_of:
                pool = self.pools[self.pool_of[name]]
                kt, kh, kw = pool.kernel_size
                _, ph, pw = pool.padding
                to, ho, wo = (t - kt) // kt + 1, (h + 2 * ph - kh) // kh + 1, (w + 2 * pw - kw) // kw + 1
                last = name == self.conv_names[-1]
                if last:
                    dest = x.new_empty(n * c * to * ho * wo)
                    ocs, oh, ow, ooff = to * ho * wo, ho, wo, 0
                else:
                    g2, s2 = flat_layout((to, ho, wo), one)
                    dest = SCRATCH.take(n * c * s2 + SLACK, x, zero=True)
                    ocs, oh, ow, ooff = s2, g2[1], g2[2], g2[1] * g2[2] + g2[2] + 1
                ext.maxpool(out, dest, n * c, s, grid[1], grid[2], t, h, w, kt, kh, kw, ph, pw, to, ho, wo, ocs,
                            oh, ow, ooff)
                SCRATCH.give(out)
                if last:
                    return dest.view(n, c, to, ho, wo)
                t, h, w, grid, s, buf = to, ho, wo, g2, s2, dest
            else:
                buf = out
        return interior(buf, n, c, grid, s, one, (t, h, w)).contiguous()  # never hand out a scratch buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        x = self.relu(self.fc6(x))
        x = self.relu(self.fc7(x))
        return self.fc8(x)
