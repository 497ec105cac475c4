"""Kernel groups: views of a Conv3d weight as blocks of gM filters x gN input channels.

Edge groups (Cout or Cin not a multiple of the group size) are real, smaller groups. To stay vectorised the
weight is zero-padded to whole groups, and a validity mask records which entries are real, so padding never
counts as a pruned weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def round_half_up(x: float | torch.Tensor) -> int | torch.Tensor:
    """Round half up; the small epsilon absorbs float error such as 0.85 * 20 = 16.999999."""
    if isinstance(x, torch.Tensor):
        return torch.floor(x + 0.5 + 1e-9).long()
    return math.floor(x + 0.5 + 1e-9)


def ceil_count(x: float | torch.Tensor) -> int | torch.Tensor:
    """Round up; the small epsilon keeps float error such as 0.5 * 8 = 4.0000001 from adding one."""
    if isinstance(x, torch.Tensor):
        return torch.ceil(x - 1e-9).long()
    return math.ceil(x - 1e-9)


def kernel_volume(weight: torch.Tensor) -> int:
    return int(math.prod(weight.shape[2:]))


def column_layout(kernel: tuple[int, ...]) -> tuple[int, int]:
    """(columns, taps per column) of a KGC column for a kernel (kt, kh, kw).

    A column is one spatial position with all temporal taps; for kh*kw == 1 (temporal convs) the columns are
    the temporal taps themselves, so KGC still prunes something on R(2+1)D's (3,1,1) convs.
    """
    kt, kh, kw = kernel
    if kh * kw > 1:
        return kh * kw, kt
    return kt, 1


@dataclass(frozen=True)
class GroupView:
    """A weight reshaped to [nP, nQ, gM, gN, K] (zero-padded), with its validity mask and row counts."""

    blocks: torch.Tensor  # [nP, nQ, gM, gN, K]
    valid: torch.Tensor  # bool, same shape
    rows: torch.Tensor  # real rows (filters) in each group row-band, [nP]
    cols_in: torch.Tensor  # real input channels in each group column-band, [nQ]
    shape: torch.Size
    group_size: tuple[int, int]

    @property
    def n_groups(self) -> int:
        return self.blocks.shape[0] * self.blocks.shape[1]

    def to_weight(self, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of `group_view` for a tensor shaped like `blocks` (values or masks)."""
        nP, nQ, gM, gN, _ = blocks.shape
        cout, cin = self.shape[0], self.shape[1]
        full = blocks.permute(0, 2, 1, 3, 4).reshape(nP * gM, nQ * gN, *self.shape[2:])
        return full[:cout, :cin].contiguous()


def group_view(weight: torch.Tensor, group_size: tuple[int, int]) -> GroupView:
    if weight.dim() != 5:
        raise ValueError(f"kernel groups need a Conv3d weight [Cout, Cin, kt, kh, kw], got {tuple(weight.shape)}")
    gM, gN = (int(g) for g in group_size)
    cout, cin = weight.shape[:2]
    # Groups never exceed the layer: a 3-channel conv with gN=4 has one group of 3 columns.
    gM, gN = min(gM, cout), min(gN, cin)
    nP, nQ = -(-cout // gM), -(-cin // gN)
    K = kernel_volume(weight)
    w = weight.reshape(cout, cin, K)
    padded = w.new_zeros(nP * gM, nQ * gN, K)
    padded[:cout, :cin] = w
    valid = torch.zeros(nP * gM, nQ * gN, K, dtype=torch.bool, device=weight.device)
    valid[:cout, :cin] = True
    blocks = padded.reshape(nP, gM, nQ, gN, K).permute(0, 2, 1, 3, 4)
    valid = valid.reshape(nP, gM, nQ, gN, K).permute(0, 2, 1, 3, 4)
    starts_p = torch.arange(nP, device=weight.device) * gM
    starts_q = torch.arange(nQ, device=weight.device) * gN
    rows = torch.clamp(cout - starts_p, max=gM)
    cols_in = torch.clamp(cin - starts_q, max=gN)
    return GroupView(blocks, valid, rows, cols_in, weight.shape, (gM, gN))
