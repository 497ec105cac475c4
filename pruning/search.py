"""Profile search: find per-layer ratios that reach a whole-model MAC reduction.

`uniform_profile` gives every prunable layer the same ratio (so each loses MACs in proportion to its own);
`sensitivity_profile` measures how much accuracy each layer loses at each ratio and removes MACs where they
cost least. Both check the result with the same report the tool prints, so the written profile meets its target.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from .masks import hard_prune
from .projections import DEFAULT_GROUP_SIZE, LayerRule
from .report import build_report


def prunable_layers(model: nn.Module) -> list[str]:
    """Conv3d weights worth pruning: not the first conv (3 input channels), not 1x1x1 convs (downsample,
    inception reduce), as the papers leave them dense."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv3d) and m.in_channels > 3 and math.prod(m.kernel_size) > 1:
            names.append(f"{name}.weight")
    return names


def _rule(kind: str, ratio: float, group_size) -> LayerRule:
    if kind == "kgrc":  # split the density evenly between rows and columns
        r = 1 - math.sqrt(1 - ratio)
        return LayerRule(kind, {"kgr": round(r, 4), "kgc": round(r, 4)}, group_size)
    return LayerRule(kind, {kind: round(ratio, 4)}, group_size)


def reduction_of(model: nn.Module, rules: dict[str, LayerRule], arch: str, input_shape) -> float:
    work = copy.deepcopy(model)
    torch.manual_seed(0)
    return build_report(work, hard_prune(work, rules), arch, input_shape, rules).reduction


def uniform_profile(model: nn.Module, arch: str, input_shape, target: float, kind: str,
                    group_size=None, layers: list[str] | None = None) -> dict[str, LayerRule]:
    """The smallest uniform ratio whose realized whole-model reduction reaches `target` (bisection)."""
    layers = layers or prunable_layers(model)
    gs = tuple(group_size or DEFAULT_GROUP_SIZE.get(kind, (8, 8)))
    lo, hi = 0.0, 0.97
    if reduction_of(model, {n: _rule(kind, hi, gs) for n in layers}, arch, input_shape) < target:
        raise ValueError(f"a {target}x MAC reduction is out of reach by pruning {len(layers)} layers with {kind}")
    for _ in range(18):
        mid = (lo + hi) / 2
        if reduction_of(model, {n: _rule(kind, mid, gs) for n in layers}, arch, input_shape) >= target:
            hi = mid
        else:
            lo = mid
    return {n: _rule(kind, hi, gs) for n in layers}


def sensitivity_profile(model: nn.Module, arch: str, input_shape, target: float, kind: str,
                        accuracy: Callable[[nn.Module], float], group_size=None,
                        ratios=(0.3, 0.5, 0.7, 0.85), layers: list[str] | None = None) -> tuple[dict, dict]:
    """Greedy allocation by measured sensitivity.

    One evaluation per layer and ratio (the others dense) gives the accuracy drop; layers are then raised
    step by step, always taking the step with the least accuracy lost per MAC removed, until the target is met.
    Returns (rules, the measured table {layer: {ratio: accuracy}}).
    """
    layers = layers or prunable_layers(model)
    gs = tuple(group_size or DEFAULT_GROUP_SIZE.get(kind, (8, 8)))
    base = accuracy(model)
    table: dict[str, dict[float, float]] = {}
    for name in layers:
        table[name] = {0.0: base}
        for r in ratios:
            work = copy.deepcopy(model)
            hard_prune(work, {name: _rule(kind, r, gs)})
            table[name][r] = accuracy(work)
    dense_macs = {lr.name: lr.macs_dense for lr in build_report(model, {}, arch, input_shape).layers}
    level = {n: 0 for n in layers}  # index into (0,) + ratios
    steps = (0.0,) + tuple(ratios)
    rules: dict[str, LayerRule] = {}
    while reduction_of(model, rules, arch, input_shape) < target:
        best, best_cost = None, float("inf")
        for n in layers:
            if level[n] + 1 >= len(steps):
                continue
            r0, r1 = steps[level[n]], steps[level[n] + 1]
            lost = max(0.0, table[n][r0] - table[n][r1]) + 1e-6
            cost = lost / ((r1 - r0) * dense_macs[n])
            if cost < best_cost:
                best, best_cost = n, cost
        if best is None:
            raise ValueError(f"a {target}x MAC reduction is out of reach with ratios up to {max(ratios)}")
        level[best] += 1
        rules[best] = _rule(kind, steps[level[best]], gs)
    return rules, table
