"""Compact inference for pruned 3D CNNs: sparse Conv3d kernels that skip the pruned work."""

from ._ext import kernel_isa, kernels_available, load_kernels
from .modules import SparseConv3d

__all__ = ["SparseConv3d", "kernel_isa", "kernels_available", "load_kernels"]
