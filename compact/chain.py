"""Two sparse convs in a row without leaving the kernels' layout.

In R(2+1)D every (2+1)D conv is a spatial 1x3x3 conv, BatchNorm, ReLU and a temporal 3x1x1 conv. Run separately,
the spatial conv scatters its output into a dense tensor (the widest activation of the block) and the temporal conv
copies it straight back into its zero-padded layout. `SparseConvPair` has the spatial conv write, with its bias and
ReLU fused, directly into the temporal conv's input layout, which saves a write and a copy of that tensor.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._ext import load_kernels
from .modules import SLACK, SparseConv3d, _run, flat_layout, flat_positions, scatter_index
from .scratch import SCRATCH


def can_chain(first: nn.Module, second: nn.Module) -> bool:
    """`second` reads `first`'s output in a layout `first` can write straight into: stride 1, taps along time only."""
    return (isinstance(first, SparseConv3d) and isinstance(second, SparseConv3d)
            and first.out_channels == second.in_channels and second.stride == (1, 1, 1)
            and second.kernel_size[1:] == (1, 1) and second.padding[1:] == (0, 0))


class SparseConvPair(nn.Module):
    """`second(first(x))` (each with its fused bias and ReLU) with the activation between them kept in the layout
    `second` reads: `first` scatters its output into zero-padded time planes, `second` runs on them in place."""

    def __init__(self, first: SparseConv3d, second: SparseConv3d) -> None:
        super().__init__()
        if not can_chain(first, second):
            raise ValueError(f"cannot chain {first.name or first} into {second.name or second}")
        self.first, self.second = first, second
        self._oidx: dict = {}
        self._ident = np.arange(first.out_channels, dtype=np.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = load_kernels()
        if ext is None or x.dtype != torch.float32 or x.device.type != "cpu":
            return self.second.forward_torch(self.first.forward_torch(x))
        buf, ctx = self.first.prepare(x)
        n, (t, h, w) = ctx["n"], ctx["outd"]
        pt = self.second.padding[0]
        grid, s = flat_layout((t, h, w), self.second.padding)  # (t + 2pt, h, w) planes, then one zero row
        c = self.first.out_channels
        mid = SCRATCH.take(n * c * s + SLACK, buf)
        planes = mid[:n * c * s].view(n, c, s)
        planes[:, :, :pt * h * w].zero_()
        planes[:, :, (pt + t) * h * w:].zero_()
        mid[n * c * s:].zero_()
        _run(ext, self.first.plan, ctx["off"], buf, ctx["per_sample"], mid, c * s, s, 0, s, False, n, ctx["q"],
             self.first.bias, self.first.relu, None, self._scatter_index(ctx, pt))
        SCRATCH.give(buf)
        outd = [t + 2 * pt - self.second.kernel_size[0] + 1, h, w]
        ctx2 = {"n": n, "off": self.second.offsets(("pair", grid), self._ident, (1, 1, 1), grid, s),
                "per_sample": c * s, "q": flat_positions(outd, grid), "outd": outd, "grid": tuple(grid)}
        out = self.second.compute(ext, mid, ctx2)
        SCRATCH.give(mid)
        return out

    def _scatter_index(self, ctx: dict, pt: int) -> torch.Tensor:
        """Where each position `first` computes lands in `second`'s layout (after its `pt` zero time planes)."""
        key = (ctx["q"], tuple(ctx["outd"]), ctx["grid"], pt)
        idx = self._oidx.get(key)
        if idx is None:
            idx = self._oidx[key] = scatter_index(ctx["q"], ctx["grid"], ctx["outd"], pt)
        return idx


def chain_conv_pairs(chains: list[list[tuple[nn.Module, str, nn.Module]]]) -> int:
    """Replace every chainable SparseConv3d -> (Identity...) -> SparseConv3d run of a Sequential chain by a
    `SparseConvPair` (the second conv's slot becomes Identity). Returns the count."""
    count = 0
    for chain in chains:
        i = 0
        while i < len(chain):
            parent, attr, m = chain[i]
            j = i + 1
            while j < len(chain) and isinstance(chain[j][2], nn.Identity):
                j += 1
            if j < len(chain) and can_chain(m, chain[j][2]):
                setattr(parent, attr, SparseConvPair(m, chain[j][2]))
                setattr(chain[j][0], chain[j][1], nn.Identity())
                count += 1
                i = j + 1
            else:
                i += 1
    return count
