"""PyTorch's dense Conv3d paths, named once, and the timed choice between them.

A dense (unpruned, or masked-dense) conv can run through one of three PyTorch paths, whose speed depends on the
shape and the machine:

- "contiguous": F.conv3d on a contiguous input;
- "channels_last": F.conv3d on a channels_last_3d input;
- "onednn": oneDNN with the weight prepacked (torch.utils.mkldnn).

The engine adds two of its own: "kernel" (the compiled kernel with a dense plan) and "winograd" (`winograd.py`,
for (kt, 3, 3) stride-1 convs: up to 4x fewer multiplies). Both the engine
(`AutoConv3d`, the C3D engine) and the benchmark (`compact.bench`) use these names and `fastest_mode`; the
benchmark's JSON fields `dense_method`, `dense_all_ms` and `compact_path` carry them.
"""

from __future__ import annotations

import copy
import time
import warnings
import weakref

import torch
from torch import nn

from . import winograd

KERNEL = "kernel"
WINOGRAD = "winograd"
CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"
ONEDNN = "onednn"
DENSE_PATHS = (CONTIGUOUS, CHANNELS_LAST, ONEDNN)  # PyTorch's: the benchmark's dense baseline
ENGINE_PATHS = (KERNEL, WINOGRAD)

# names the engine used before the vocabulary was shared with the benchmark; a compact model saved then may carry
# them in its timed choices
_LEGACY = {"torch": CONTIGUOUS, "torch_cl": CHANNELS_LAST}


def canonical_path(path: str) -> str:
    """`path` in the shared vocabulary (a legacy engine name mapped); ValueError for an unknown one."""
    path = _LEGACY.get(path, path)
    if path not in DENSE_PATHS and path not in ENGINE_PATHS:
        raise ValueError(f"unknown conv path {path!r}: choose one of {', '.join((*ENGINE_PATHS, *DENSE_PATHS))}")
    return path


_ONEDNN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def onednn_conv(conv: nn.Conv3d) -> nn.Module | None:
    """`conv` with its weight prepacked for oneDNN (torch.utils.mkldnn), built on first use and kept outside the
    module, so that saving, copying and state_dict see only `conv` (whose weights must not change afterwards);
    None where PyTorch was built without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    m = _ONEDNN.get(conv)
    if m is None:
        from torch.utils import mkldnn

        # normal tensors even if first built under inference_mode, so later calls in any autograd mode can use it
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            m = _ONEDNN[conv] = mkldnn.to_mkldnn(copy.deepcopy(conv).float().eval())
    return m


_WINOGRAD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def winograd_conv(conv: nn.Conv3d, m: int = 4) -> winograd.WinogradConv3d:
    """`conv` as Winograd F(m x m, 3 x 3) (`winograd.supports(conv)` must hold), its transformed weight (4x the
    weight's size) built on first use and kept outside the module like oneDNN's prepacked one."""
    per_tile = _WINOGRAD.setdefault(conv, {})
    if m not in per_tile:
        with torch.inference_mode(False):
            per_tile[m] = winograd.WinogradConv3d(conv, m=m)
    return per_tile[m]


def run_winograd(conv: nn.Conv3d, x: torch.Tensor, out: torch.Tensor | None = None,
                 relu: bool = False) -> torch.Tensor:
    """`conv(x)` (ReLU fused if `relu`) as Winograd, at the tile size `winograd.tile_size` picks for the shape,
    written into `out` if given."""
    m = winograd.tile_size(x.shape, conv)
    return winograd_conv(conv, m)(x, out=out, relu=relu)


def run_onednn(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` through oneDNN with the prepacked weight; the input and output conversions included. At batch 1
    PyTorch sends several of C3D's and R(2+1)D's unpruned convs to its slow non-oneDNN kernel otherwise."""
    return onednn_conv(conv)(x.contiguous().to_mkldnn()).to_dense()


def run_dense(conv: nn.Conv3d, x: torch.Tensor, path: str) -> torch.Tensor:
    """`conv(x)` through one of PyTorch's dense paths (`DENSE_PATHS`) or Winograd, the input conversion included."""
    path = canonical_path(path)
    if path == WINOGRAD:
        return run_winograd(conv, x)
    if path == ONEDNN:
        return run_onednn(conv, x)
    if path == CHANNELS_LAST:
        return conv(x.contiguous(memory_format=torch.channels_last_3d))
    if path == CONTIGUOUS:
        return conv(x.contiguous())
    raise ValueError(f"run_dense runs the dense paths, not the kernel ({path!r})")


def fastest_mode(run, modes, rounds: int = 5) -> str:
    """The mode `run(mode)` runs fastest: all modes timed interleaved, `rounds` times each, the best time after a
    first call (with two timed calls per mode the choice followed the machine's noise: docs/bench/history.md)."""
    times: dict[str, list[float]] = {}
    for m in list(modes) * rounds:
        t0 = time.perf_counter()
        run(m)
        times.setdefault(m, []).append(time.perf_counter() - t0)
    return min(times, key=lambda m: min(times[m][1:]))


class DenseConv(nn.Module):
    """A copy of a (masked) dense Conv3d prepared for one dense path (channels_last weight, or prepacked for
    oneDNN); `forward` returns a tensor like F.conv3d, `conv(native_input(x))` runs without conversions."""

    def __init__(self, conv: nn.Conv3d, path: str) -> None:
        super().__init__()
        self.method = path = canonical_path(path)
        self.conv = copy.deepcopy(conv).eval()
        if path == CHANNELS_LAST:
            self.conv = self.conv.to(memory_format=torch.channels_last_3d)
        elif path == ONEDNN:
            self.conv = onednn_conv(self.conv)

    def native_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the layout this path's conv takes without converting."""
        if self.method == CHANNELS_LAST:
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x.to_mkldnn() if self.method == ONEDNN else x.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == CONTIGUOUS:
            return self.conv(x.contiguous())
        if self.method == CHANNELS_LAST:
            return self.conv(x.contiguous(memory_format=torch.channels_last_3d))
        return self.conv(x.to_mkldnn()).to_dense()
