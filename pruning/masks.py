"""Applying projections to a model: hard pruning, explicit masks, and keeping pruned weights at zero."""

from __future__ import annotations

import torch
from torch import nn

from .projections import LayerRule, project


@torch.no_grad()
def hard_prune(model: nn.Module, rules: dict[str, LayerRule]) -> dict[str, torch.Tensor]:
    """Project every weight named in `rules` in place; returns {name: bool keep-mask} for those weights only."""
    params = dict(model.named_parameters())
    masks = {}
    for name, rule in rules.items():
        p = params[name]
        projected, mask = project(p, rule)
        p.copy_(projected)
        masks[name] = mask
    return masks


def intersect_masks(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Combine masks of a progressive step: a weight survives only if both keep it."""
    out = dict(old)
    for name, m in new.items():
        out[name] = m & old[name] if name in old else m
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights (after each optimizer step: momentum and weight decay must not revive them)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


@torch.no_grad()
def mask_gradients(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the gradients of pruned weights (after backward)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        g = params[name].grad
        if g is not None:
            g.mul_(mask.to(g.device, g.dtype))
