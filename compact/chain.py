"""Sparse convs in a row without leaving the kernels' layout.

Run module by module, a sparse conv scatters its output into a dense tensor and the next one copies it straight back
into its zero-padded layout. `run_into` has a conv write, with its bias and ReLU fused, directly into the layout the
next conv reads, which saves a write and a copy of every activation in between. `SparseConvPair` uses it for
R(2+1)D's and S3D's (2+1)D convs (spatial conv, BatchNorm, ReLU, temporal conv).
"""

from __future__ import annotations

import torch
from torch import nn

from . import scratch
from ._ext import load_kernels
from .layout import SLACK, LayoutCtx, flat_layout
from .modules import SparseConv3d


def run_into(ext, conv: SparseConv3d, buf: torch.Tensor, ctx: LayoutCtx,
             nxt: SparseConv3d) -> tuple[torch.Tensor, LayoutCtx]:
    """Run `conv` on its prepared input; returns `nxt`'s prepared input (a SCRATCH buffer and its context). A
    stride-1 `nxt` gets `conv`'s output written straight into its padded layout (at bf16 / int8, packed as its plan
    reads it); a strided one gets it through a dense scratch tensor and its own `prepare`."""
    n, outd, c = ctx.n, ctx.outd, conv.out_channels
    f32 = conv.weight_compact  # (buf may be a packed input: not the dtype of what is written here)
    if nxt.stride == (1, 1, 1):
        grid, s = flat_layout(outd, nxt.padding)
        if nxt.precision != "fp32":  # written as nxt's packed input: no fp32 activation, no packing pass of its own
            nctx = nxt.layout_ctx(n, outd, grid, s, packed=True)
            dest = nxt.take_packed_input(nctx, outd, nxt.padding)
            conv.write(ext, buf, ctx, dest, grid, nxt.padding, s, pack=nctx.plan)
            return dest, nctx
        dest = scratch.SCRATCH.take_padded(n, c, grid, s, nxt.padding, outd, f32, SLACK)[0]
        conv.write(ext, buf, ctx, dest, grid, nxt.padding, s)
        return dest, nxt.layout_ctx(n, outd, grid, s)
    dense = scratch.SCRATCH.take(n * c * outd[0] * outd[1] * outd[2], f32)
    y = dense.view(n, c, *outd)
    conv.write(ext, buf, ctx, y, outd)
    nbuf, nctx = nxt.prepare(y)
    scratch.SCRATCH.give(dense)
    return nbuf, nctx


def can_chain(first: nn.Module, second: nn.Module) -> bool:
    """`second` reads `first`'s output in a layout `first` can write straight into: stride 1, taps along time only."""
    return (isinstance(first, SparseConv3d) and isinstance(second, SparseConv3d)
            and first.out_channels == second.in_channels and second.stride == (1, 1, 1)
            and second.kernel_size[1:] == (1, 1) and second.padding[1:] == (0, 0))


class SparseConvPair(nn.Module):
    """`second(first(x))` (each with its fused bias and ReLU) with the activation between them kept in the layout
    `second` reads: `first` writes its output into zero-padded time planes, `second` runs on them in place."""

    def __init__(self, first: SparseConv3d, second: SparseConv3d) -> None:
        super().__init__()
        if not can_chain(first, second):
            raise ValueError(f"cannot chain {first.name or first} into {second.name or second}")
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = load_kernels()
        if ext is None or x.dtype != torch.float32 or x.device.type != "cpu":
            return self.second.forward_torch(self.first.forward_torch(x))
        buf, ctx = self.first.prepare(x)
        mid, ctx2 = run_into(ext, self.first, buf, ctx, self.second)
        scratch.SCRATCH.give(buf)
        out = self.second.compute(ext, mid, ctx2)
        scratch.SCRATCH.give(mid)
        return out


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
