"""`compile_sparse`: a pruned model + masks -> a compact inference model that skips the pruned work.

Compiling is a list of passes over a masked dense copy of the model; which passes run depends on the model's type,
looked up in a small registry (`register_engine`). The passes shipped here:

    fold_bn        eval-mode BatchNorm3d after a Conv3d folded into the conv
    swap_convs     masked Conv3d -> SparseConv3d; unpruned Conv3d -> AutoConv3d (fastest of kernel / PyTorch)
    fuse_relu      a ReLU after a compact conv fused into its output write
    chain_pairs    a sparse conv writing straight into a following temporal sparse conv's layout (SparseConvPair)
    fuse_stages    stages of residual blocks run in the kernels' layout from block to block (SparseResidualStage)
    fuse_stem      VideoResNet's stem writing straight into layer1's layout (StemIntoStageVideoResNet)
    channels_last_pools  nn.MaxPool3d -> ChannelsLastMaxPool3d

torchvision's VideoResNet and S3D are registered below; C3D's engine registers itself in `c3d_engine.py`; a model
of no registered type gets `MODULE_PASSES`. Adding a model means registering its type, e.g.

    register_engine(MyNet, passes=(fold_bn, swap_convs, fuse_relu, chain_pairs))

or, for an engine module of its own that runs after the passes (constructed as `Engine.compile(model, job)`),

    @register_engine(MyNet, passes=(swap_pruned_convs,))
    class MyNetEngine(nn.Module): ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.video import S3D
from torchvision.models.video.resnet import VideoResNet

from pruning.sparsity_types import TYPES

from .chain import chain_conv_pairs
from .modules import AutoConv3d, ChannelsLastMaxPool3d, SparseConv3d
from .quant import check_precision, set_precision
from .residual import fuse_residual_stages, fuse_stem_into_stage
from .surgery import masked_dense_copy, set_submodule


@dataclass(frozen=True)
class CompileJob:
    """What every pass may read: the masks ({weight name: bool mask}), the LayerRules ({weight name: rule}) and
    whether an engine should also run the unpruned convs through the kernels."""

    masks: dict[str, torch.Tensor]
    rules: dict
    dense_layers: bool = True


Pass = Callable[[nn.Module, CompileJob], nn.Module]


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


def fuse_relu_into_convs(model: nn.Module) -> int:
    """Fuse every ReLU that follows a sparse or unpruned compact conv in a Sequential (Identity between them
    allowed) into the conv's output write; the ReLU becomes Identity. Returns the count."""
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


def _swap(model: nn.Module, job: CompileJob, unpruned_auto: bool) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Conv3d):
            continue
        wname = f"{name}.weight"
        mask = job.masks.get(wname)
        if mask is None:
            if unpruned_auto:  # unpruned: fastest of kernel / PyTorch paths
                set_submodule(model, name, AutoConv3d(mod, name=name))
            continue
        rule = job.rules.get(wname)
        block, union_only = 4, False
        if rule is not None:
            if TYPES[rule.sparsity].grouped:  # runs of input channels as wide as the kernel group
                block = max(1, min(int(rule.group_size[1]), 8))
            union_only = rule.sparsity == "irregular"
        set_submodule(model, name, SparseConv3d(mod, mask, block=block, union_only=union_only, name=name))
    return model


# ---- the passes: (model, job) -> model -------------------------------------------------------------------------

def fold_bn(model: nn.Module, job: CompileJob) -> nn.Module:
    fold_batchnorm(model)
    return model


def swap_convs(model: nn.Module, job: CompileJob) -> nn.Module:
    """Every masked Conv3d -> SparseConv3d (the rule sets the input-channel block from the group size; irregular
    layers run as the union of each 8-filter block), every unpruned one -> AutoConv3d."""
    return _swap(model, job, unpruned_auto=True)


def swap_pruned_convs(model: nn.Module, job: CompileJob) -> nn.Module:
    """`swap_convs` for the masked convs only; unpruned convs stay nn.Conv3d (for an engine that runs them)."""
    return _swap(model, job, unpruned_auto=False)


def fuse_relu(model: nn.Module, job: CompileJob) -> nn.Module:
    fuse_relu_into_convs(model)
    return model


def chain_pairs(model: nn.Module, job: CompileJob) -> nn.Module:
    chain_conv_pairs(_chains(model))
    return model


def fuse_stages(model: nn.Module, job: CompileJob) -> nn.Module:
    fuse_residual_stages(model)
    return model


def fuse_stem(model: nn.Module, job: CompileJob) -> nn.Module:
    fuse_stem_into_stage(model)
    return model


def channels_last_pools(model: nn.Module, job: CompileJob) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.MaxPool3d:
            set_submodule(model, name, ChannelsLastMaxPool3d.from_pool(mod))
    return model


MODULE_PASSES: tuple[Pass, ...] = (fold_bn, swap_convs, fuse_relu, chain_pairs, fuse_stages, fuse_stem,
                                   channels_last_pools)
"""Module-by-module compaction, for any model: each pass changes only what it recognises."""


# ---- the registry: model type -> passes ------------------------------------------------------------------------

ENGINES: dict[type | str, tuple[Pass, ...]] = {}


def register_engine(model_type: type | str, passes: Sequence[Pass] = MODULE_PASSES):
    """Compile models of `model_type` (or a subclass; a dotted "module.Class" name registers a type without importing
    it) with `passes`, in order. Registers at once; used as a decorator on an engine (a class or function with
    `compile(model, job)`, or a callable (model, job) -> module), appends building that engine as the last pass."""
    ENGINES[model_type] = tuple(passes)

    def decorate(engine):
        build = getattr(engine, "compile", engine)
        ENGINES[model_type] = (*passes, build)
        return engine

    return decorate


def engine_passes(model: nn.Module) -> tuple[Pass, ...]:
    """The passes registered for `model`'s type (nearest registered base class first), else `MODULE_PASSES`."""
    for cls in type(model).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            if key in ENGINES:
                return ENGINES[key]
    return MODULE_PASSES


register_engine(VideoResNet, MODULE_PASSES)  # R(2+1)D-18 and the other torchvision video ResNets
register_engine(S3D, (fold_bn, swap_convs, fuse_relu, chain_pairs, channels_last_pools))


@torch.no_grad()
def compile_sparse(model: nn.Module, masks: dict[str, torch.Tensor], *, rules: dict | None = None,
                   fuse: bool = True, dense_layers: bool | None = None, precision: str = "fp32",
                   ranges: dict[str, list[float]] | None = None, weight_bits: int | None = None) -> nn.Module:
    """Compact inference copy of `model` whose output equals the masked dense model's.

    Every Conv3d whose weight is named in `masks` becomes a `SparseConv3d` (all-zero filters and channels dropped,
    only kept (channel, tap) pairs computed). `rules` ({weight name: LayerRule}, optional) sets the input-channel
    block from the group size; irregular layers run as the union of each 8-filter block (nearly dense). With
    `fuse=True` the passes registered for the model's type run (see the module docstring): for C3D its engine
    runs the whole conv stack in the kernels' padded layout with bias + ReLU fused and max-pooling in C++
    (`dense_layers`, default: same as fuse, also runs the unpruned convs through the kernels); for other models
    BatchNorm is folded, ReLUs fused, (2+1)D conv pairs chained, residual stages run in the kernels' layout and
    max-pooling in channels_last_3d. `fuse=False` only swaps the masked convs. The model is copied and put in
    eval mode; the input is untouched. `precision` "bf16" or "int8" runs the compact convs at that precision
    (`quant.set_precision`; int8 needs `ranges`, the calibrated conv inputs of `quant.calibrate`, and takes
    `weight_bits`, default `quant.default_weight_bits()`).
    """
    check_precision(precision)
    model = masked_dense_copy(model, masks)
    job = CompileJob(masks, rules or {}, fuse if dense_layers is None else dense_layers)
    for run in engine_passes(model) if fuse else (swap_pruned_convs,):
        model = run(model, job)
    return set_precision(model, precision, ranges, weight_bits)


def __getattr__(name: str):
    if name == "CompactC3D":  # compact models saved when the C3D engine lived here
        from .c3d_engine import CompactC3D

        return CompactC3D
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
