"""`compile_sparse`: a pruned model + masks -> a compact inference model that skips the pruned work."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .c3d_engine import CompactC3D
from .chain import chain_conv_pairs
from .modules import AutoConv3d, ChannelsLastMaxPool3d, SparseConv3d
from .residual import fuse_residual_stages, fuse_stem_into_stage

KG_TYPES = ("kgs", "kgr", "kgc", "kgrc", "blk-vanilla")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _leaves(seq: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) of the leaves of a Sequential in execution order, through nested Sequentials."""
    out = []
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            out.extend(_leaves(child))
        else:
            out.append((seq, name, child))
    return out


def _chains(model: nn.Module) -> list[list[tuple[nn.Module, str, nn.Module]]]:
    mods = dict(model.named_modules())
    chains = []
    for name, m in mods.items():
        parent = mods.get(name.rpartition(".")[0]) if name else None
        if isinstance(m, nn.Sequential) and not isinstance(parent, nn.Sequential):
            chains.append(_leaves(m))
    return chains


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm3d that directly follows a Conv3d in a Sequential into the conv (weight scaled
    per filter, bias added) and replace it by Identity. Zeros of the weight stay zeros. Returns the count folded."""
    count = 0
    for chain in _chains(model):
        for (_, _, conv), (bparent, bname, bn) in zip(chain, chain[1:]):
            if not (isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d)) or bn.training:
                continue
            if not bn.track_running_stats or bn.running_var is None:
                continue
            scale = torch.rsqrt(bn.running_var.float() + bn.eps)
            if bn.affine:
                scale = scale * bn.weight.float()
            shift = -bn.running_mean.float() * scale
            if bn.affine:
                shift = shift + bn.bias.float()
            conv.weight.mul_(scale.view(-1, 1, 1, 1, 1).to(conv.weight.dtype))
            bias = conv.bias.float() * scale + shift if conv.bias is not None else shift
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
            setattr(bparent, bname, nn.Identity())
            count += 1
    return count


def _fuse_relu(model: nn.Module) -> int:
    count = 0
    for chain in _chains(model):
        for i, (_, _, m) in enumerate(chain):
            if not isinstance(m, (SparseConv3d, AutoConv3d)) or m.relu:
                continue
            j = i + 1
            while j < len(chain) and isinstance(chain[j][2], nn.Identity):
                j += 1
            if j < len(chain) and isinstance(chain[j][2], nn.ReLU):
                m.relu = True
                setattr(chain[j][0], chain[j][1], nn.Identity())
                count += 1
    return count


@torch.no_grad()
def compile_sparse(model: nn.Module, masks: dict[str, torch.Tensor], *, rules: dict | None = None,
                   fuse: bool = True, dense_layers: bool | None = None) -> nn.Module:
    """Compact inference copy of `model` whose output equals the masked dense model's.

    Every Conv3d whose weight is named in `masks` becomes a `SparseConv3d` (all-zero filters and channels dropped,
    only kept (channel, tap) pairs computed). `rules` ({weight name: LayerRule}, optional) sets the input-channel
    block from the group size; irregular layers run as the union of each 8-filter block (nearly dense). For C3D
    with `fuse=True` the result runs the whole conv stack in the kernels' padded layout with bias + ReLU fused and
    max-pooling in C++; `dense_layers` (default: same as fuse) also runs the unpruned convs through the kernels.
    For other models `fuse=True` folds eval-mode BatchNorm3d into the preceding conv, fuses a following ReLU
    into the sparse conv's output write, chains a sparse conv straight into a following temporal sparse conv
    (R(2+1)D's and S3D's (2+1)D convs, `SparseConvPair`), runs each stage of residual blocks whose convs are all
    sparse in the kernels' layout from block to block with the residual add and ReLU fused
    (`SparseResidualStage`) and runs max-pooling in channels_last_3d. The model is
    copied and put in eval mode; the input is untouched.
    """
    from models.c3d import C3D  # local: keep compact importable on its own

    model = copy.deepcopy(model).float().cpu().eval()
    params = dict(model.named_parameters())
    for wname, mask in masks.items():
        params[wname].mul_(mask.to(params[wname].dtype))
    if fuse and not isinstance(model, C3D):
        fold_batchnorm(model)
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Conv3d):
            continue
        wname = f"{name}.weight"
        mask = masks.get(wname)
        if mask is None:
            if fuse and not isinstance(model, C3D):  # unpruned: fastest of kernel / PyTorch paths
                _set_module(model, name, AutoConv3d(mod, name=name))
            continue
        rule = (rules or {}).get(wname)
        block, union_only = 4, False
        if rule is not None:
            if rule.sparsity in KG_TYPES:
                block = max(1, min(int(rule.group_size[1]), 8))
            union_only = rule.sparsity == "irregular"
        _set_module(model, name, SparseConv3d(mod, mask, block=block, union_only=union_only, name=name))
    if fuse and isinstance(model, C3D):
        return CompactC3D(model, dense_layers=fuse if dense_layers is None else dense_layers)
    if fuse:
        _fuse_relu(model)
        chain_conv_pairs(_chains(model))
        fuse_residual_stages(model)
        fuse_stem_into_stage(model)
        for name, mod in list(model.named_modules()):
            if type(mod) is nn.MaxPool3d:
                _set_module(model, name, ChannelsLastMaxPool3d.from_pool(mod))
    return model
