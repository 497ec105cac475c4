"""Editing a model by name: replace a submodule, copy a model with its masks applied, read a mask off the zeros."""

from __future__ import annotations

import copy

import torch
from torch import nn


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where the dotted `name` ("layer1.0.conv1.0.0") points inside `model`."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def masked_dense_copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """An eval-mode float CPU copy of `model` with every masked weight zeroed (what the compact model computes)."""
    dense = copy.deepcopy(model).float().cpu().eval()
    params = dict(dense.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))
    return dense


def kept_mask(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`mask` as a bool CPU tensor, or without one, the weight's nonzeros (an unpruned conv keeps every weight that
    is not exactly zero)."""
    return (weight.detach().cpu() != 0) if mask is None else mask.detach().cpu().bool()
