"""Winograd convolution for unpruned 3x3 spatial convs: fewer multiplies than any direct kernel.

A conv with taps (kt, 3, 3), stride 1 and spatial padding 1 (C3D's 3x3x3, R(2+1)D's and S3D's 1x3x3) computes
F(m x m, 3 x 3) per frame (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) and sums the kt
temporal taps directly: each (m+2) x (m+2) input tile is transformed (B^T d B), multiplied element by element with
the transformed kernels (G g G^T) summed over channels and temporal taps, which is one GEMM per transformed
element, and transformed back (A^T M A) into m x m outputs. Per output, (m+2)^2 / m^2 multiplies instead of 9:
2.25x fewer at m = 2, 4x at m = 4.

The transforms (csrc/winograd.cpp; in PyTorch without a compiler) keep channels innermost: the transformed input
is [element][T' x N x tiles][kt x C], each tile's element written once per temporal tap that reads its frame, so
every element's product is one plain GEMM [T' N tiles, kt C] x [kt C, K]. The GEMMs run in oneDNN, whose fp32 GEMM
uses AVX-512 on AMD CPUs too, where MKL's (torch.mm) ran at 0.4x of it. Exactness: relative error ~1e-5 at m = 4,
~1e-6 at m = 2, within the engine's 1e-4 (tests/compact/test_winograd.py checks every shape of the three models).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from . import scratch
from ._ext import load_kernels

log = logging.getLogger("prune3d.compact")

# F(m, 3) over the interpolation points 0, +-1 (m = 2) and 0, +-1, +-2 (m = 4), Lavin & Gray's matrices
_MATRICES = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}
TILE_SIZES = tuple(_MATRICES)


def supports(conv: nn.Conv3d) -> bool:
    """Whether `conv` has the shape Winograd F(m x m, 3 x 3) here computes: (kt, 3, 3) taps, stride 1, padding
    (pt, 1, 1), no dilation or groups."""
    return (isinstance(conv, nn.Conv3d) and tuple(conv.kernel_size[1:]) == (3, 3) and tuple(conv.stride) == (1, 1, 1)
            and not isinstance(conv.padding, str) and tuple(conv.padding[1:]) == (1, 1)
            and tuple(conv.dilation) == (1, 1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def geometry(x_shape, kt: int, pt: int, m: int) -> tuple[int, int, int]:
    """(output frames, tile rows, tile columns) of a conv with `kt` temporal taps and padding `pt` on input
    [N, C, T, H, W] at tile size m."""
    _, _, t, h, w = x_shape
    return t + 2 * pt - kt + 1, -(-h // m), -(-w // m)


def tile_size(x_shape, conv: nn.Conv3d) -> int:
    """The tile to run `conv` at on input of `x_shape`: F(4x4) unless its GEMMs would have fewer than 64 rows
    (T' x N x tiles), where their overhead outweighs the multiplies saved and F(2x2) was faster (C3D conv5 and
    R(2+1)D layer4 at batch 1: docs/bench/history.md)."""
    to, th, tw = geometry(x_shape, conv.kernel_size[0], conv.padding[0], 4)
    return 4 if to * x_shape[0] * th * tw >= 64 else 2


def multiplies(conv: nn.Conv3d, out_dims, m: int) -> int:
    """Multiplies per clip of `conv` computed as Winograd F(m x m, 3 x 3) for outputs of `out_dims` (T, H, W)."""
    t, th, tw = geometry((1, 1, *out_dims), 1, 0, m)
    return conv.out_channels * conv.in_channels * conv.kernel_size[0] * t * th * tw * (m + 2) ** 2


class WinogradConv3d(nn.Module):
    """`conv` (bias included, ReLU fused on request) as Winograd F(m x m, 3 x 3) per frame; equal to F.conv3d up to fp32
    rounding. The transformed weight is computed once (in float64, then rounded)."""

    def __init__(self, conv: nn.Conv3d, m: int = 4) -> None:
        super().__init__()
        if not supports(conv):
            raise ValueError(f"Winograd needs (kt, 3, 3) taps, stride 1, padding (pt, 1, 1), no groups: got {conv}")
        if m not in _MATRICES:
            raise ValueError(f"Winograd tile size {m}: choose one of {TILE_SIZES}")
        bt, g, at = (torch.tensor(a, dtype=torch.float64) for a in _MATRICES[m])
        a = m + 2
        w = conv.weight.detach().to(torch.float64)  # [K, C, kt, 3, 3]
        k, c, kt = w.shape[:3]
        u = torch.einsum("ik,ocdkl,jl->ijodc", g, w, g)  # [a, a, K, kt, C]: columns (tap, channel)
        self.register_buffer("u", u.reshape(a * a, k, kt * c).float().contiguous())
        self.register_buffer("bb", torch.kron(bt, bt).float())  # vec(B^T d B) = (B^T x B^T) vec(d)
        self.register_buffer("aa", torch.kron(at, at).float())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.m, self.kt, self.pt = m, kt, conv.padding[0]
        self.in_channels, self.out_channels = c, k

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kt={self.kt}, m={self.m}"

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        """conv(x) (then ReLU if `relu`) for x [N, C, T, H, W], written into `out` (a [N, K, T', H, W] tensor or
        view, e.g. the interior of a padded layout) if given, else into a new tensor."""
        n, c, _, h, w = x.shape
        m, a, kt, k = self.m, self.m + 2, self.kt, self.out_channels
        to, th, tw = geometry(x.shape, kt, self.pt, m)
        rows = to * n * th * tw
        if out is None:
            out = x.new_empty(n, k, to, h, w, dtype=torch.float32)
        ext = load_kernels()
        x = x.float()
        if ext is not None:  # a reused buffer: a fresh one this size would be page-faulted in on every call
            vbuf = scratch.SCRATCH.take(a * a * rows * kt * c, x)
            v = vbuf.view(a * a, rows, kt * c)
            ext.winograd_input(x=x.contiguous(memory_format=torch.channels_last_3d), v=v, m=m, pt=self.pt, kt=kt)
        else:
            v = self._transform_input(x)
        mt = [_gemm(v[e], self.u[e]) for e in range(a * a)]  # [T' N th tw, K] each
        if ext is not None:
            scratch.SCRATCH.give(vbuf)
            ext.winograd_output(mt=mt, bias=self.bias, y=out, m=m, relu=relu)
            return out
        y = torch.mm(self.aa, torch.stack(mt).view(a * a, -1)).view(m, m, to, n, th, tw, k)
        y = y.permute(3, 6, 2, 4, 0, 5, 1).reshape(n, k, to, th * m, tw * m)[:, :, :, :h, :w]
        if self.bias is not None:
            y = y + self.bias.view(1, k, 1, 1, 1)
        return out.copy_(y.relu_() if relu else y)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """csrc/winograd.cpp's input transform in PyTorch (no compiler): [a*a][T' N th tw][kt C]."""
        n, c, _, h, w = x.shape
        m, a, kt = self.m, self.m + 2, self.kt
        to, th, tw = geometry(x.shape, kt, self.pt, m)
        xp = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h, self.pt, self.pt))
        tiles = xp.unfold(3, a, m).unfold(4, a, m).unfold(2, kt, 1)  # [N, C, T', th, tw, a, a, kt], a view
        d = tiles.permute(5, 6, 2, 0, 3, 4, 7, 1).reshape(a * a, -1)
        return torch.mm(self.bb, d).view(a * a, to * n * th * tw, kt * c)


def _gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T through oneDNN where PyTorch has it: its fp32 GEMM runs AVX-512 on every x86 CPU, where MKL's (torch.mm)
    takes a slower path on AMD's (docs/bench/history.md). The oneDNN op is PyTorch-internal: if a release drops or
    changes it, torch.mm takes over (said once)."""
    global _ONEDNN_LINEAR
    if _ONEDNN_LINEAR:
        try:
            return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        except (RuntimeError, TypeError, AttributeError) as e:
            _ONEDNN_LINEAR = False
            log.warning("compact: oneDNN's linear op failed (%s); Winograd's GEMMs use torch.mm (slower on AMD)",
                        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    return torch.mm(x, w.t())


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
