"""Profile search: find per-layer ratios that reach a whole-model MAC reduction.

`uniform_profile` gives every prunable layer the same ratio (so each loses MACs in proportion to its own);
`sensitivity_profile` measures how much accuracy each layer loses at each ratio and removes MACs where they
cost least. Both check the result with the same report the tool prints, so the written profile meets its target.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

from torch import nn

from .masks import hard_prune
from .projections import LayerRule, projection_mask
from .report import build_report, output_positions
from .sparsity_types import TYPES, default_group_size


def prunable_layers(model: nn.Module) -> list[str]:
    """Conv3d weights worth pruning: not the first conv (3 input channels), not 1x1x1 convs (downsample,
    inception reduce), as the papers leave them dense."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv3d) and m.in_channels > 3 and math.prod(m.kernel_size) > 1:
            names.append(f"{name}.weight")
    return names


def _rule(kind: str, ratio: float, group_size) -> LayerRule:
    return LayerRule(kind, TYPES[kind].even_ratios(ratio), group_size)


class MacModel:
    """Whole-model MACs as a sum over layers: a layer's pruned MACs depend only on its own rule, so each
    (layer, rule) is projected once and cached while a search tries many combinations."""

    def __init__(self, model: nn.Module, arch: str, input_shape) -> None:
        self.params = dict(model.named_parameters())
        self.positions = output_positions(model, tuple(input_shape))
        self.dense = build_report(model, {}, arch, tuple(input_shape)).macs_dense
        self._kept: dict[tuple, int] = {}

    def removed(self, name: str, rule: LayerRule) -> int:
        key = (name, rule.sparsity, tuple(sorted(rule.ratios.items())), rule.group_size)
        if key not in self._kept:
            w = self.params[name].detach()
            kept = int(projection_mask(w, rule).sum())
            self._kept[key] = (w.numel() - kept) * self.positions[name.removesuffix(".weight")]
        return self._kept[key]

    def reduction(self, rules: dict[str, LayerRule]) -> float:
        return self.dense / (self.dense - sum(self.removed(n, r) for n, r in rules.items()))


def reduction_of(model: nn.Module, rules: dict[str, LayerRule], arch: str, input_shape) -> float:
    return MacModel(model, arch, input_shape).reduction(rules)


def uniform_profile(model: nn.Module, arch: str, input_shape, target: float, kind: str,
                    group_size=None, layers: list[str] | None = None) -> dict[str, LayerRule]:
    """The same ratio for every prunable layer, found by bisection; then, because counts are whole numbers
    (9 KGC columns, 8 KGR rows), the largest layers are stepped back down while the target still holds, so
    the result meets the target without overshooting by a whole count step."""
    layers = layers or prunable_layers(model)
    gs = tuple(group_size or default_group_size(kind))
    macs = MacModel(model, arch, input_shape)
    lo, hi = 0.0, 0.97
    if macs.reduction({n: _rule(kind, hi, gs) for n in layers}) < target:
        raise ValueError(f"a {target}x MAC reduction is out of reach by pruning {len(layers)} layers with {kind}")
    for _ in range(20):
        mid = (lo + hi) / 2
        if macs.reduction({n: _rule(kind, mid, gs) for n in layers}) >= target:
            hi = mid
        else:
            lo = mid
    rules = {n: _rule(kind, hi, gs) for n in layers}
    for name in sorted(layers, key=lambda n: -macs.removed(n, rules[n])):
        for lower in (hi - d for d in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)):
            trial = {**rules, name: _rule(kind, max(lower, 0.0), gs)}
            if macs.reduction(trial) >= target:
                rules = trial
    return rules


def sensitivity_profile(model: nn.Module, arch: str, input_shape, target: float, kind: str,
                        accuracy: Callable[[nn.Module], float], group_size=None,
                        ratios=(0.3, 0.5, 0.7, 0.85), layers: list[str] | None = None) -> tuple[dict, dict]:
    """Greedy allocation by measured sensitivity.

    One evaluation per layer and ratio (the others dense) gives the accuracy drop; layers are then raised
    step by step, always taking the step with the least accuracy lost per MAC removed, until the target is met.
    Returns (rules, the measured table {layer: {ratio: accuracy}}).
    """
    layers = layers or prunable_layers(model)
    gs = tuple(group_size or default_group_size(kind))
    base = accuracy(model)
    table: dict[str, dict[float, float]] = {}
    for name in layers:
        table[name] = {0.0: base}
        for r in ratios:
            work = copy.deepcopy(model)
            hard_prune(work, {name: _rule(kind, r, gs)})
            table[name][r] = accuracy(work)
    macs = MacModel(model, arch, input_shape)
    dense_macs = {lr.name: lr.macs_dense for lr in build_report(model, {}, arch, input_shape).layers}
    level = {n: 0 for n in layers}  # index into (0,) + ratios
    steps = (0.0,) + tuple(ratios)
    rules: dict[str, LayerRule] = {}
    while macs.reduction(rules) < target:
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
    # The last whole step overshoots; lower that layer's ratio to the least that still meets the target.
    lo, hi = steps[level[best] - 1], steps[level[best]]
    for _ in range(20):
        mid = (lo + hi) / 2
        if macs.reduction({**rules, best: _rule(kind, mid, gs)}) >= target:
            hi = mid
        else:
            lo = mid
    rules[best] = _rule(kind, hi, gs)
    return rules, table


def profile_header(method: str, target: float, arch: str, input_shape, reached: float,
                   table: dict | None = None, measured_on: str = "") -> str:
    """The comment lines a searched profile starts with: what was asked, what the report gives, and for the
    sensitivity search the measured table (so the choice can be checked without rerunning it)."""
    header = (f"# {method} search for {target:g}x on {arch} at {'x'.join(map(str, input_shape))}:"
              f" the report gives {reached:.3f}x\n")
    if table:
        header += f"# measured on {measured_on} (clip top-1)\n"
        header += "".join(f"# sensitivity {n}: " + ", ".join(f"{r:g}->{a:.3f}" for r, a in t.items()) + "\n"
                          for n, t in table.items())
    return header
