"""MAC and parameter report of a (pruned) model, counted from the model itself.

MACs are multiply-accumulates (papers' "FLOPs"/"GOPs" are often 2x MAC). A conv layer costs
(weights kept) x (output positions) MACs; output positions come from a forward pass on the meta device, so the
count is exact for any clip size and costs nothing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .projections import LayerRule


@dataclass
class LayerReport:
    name: str
    kind: str  # Conv3d / Linear
    shape: list[int]
    sparsity: str  # type or "dense"
    nominal: dict[str, float]
    realized: float  # fraction of the weight removed
    density: float
    macs_dense: int
    macs_pruned: int


@dataclass
class ModelReport:
    arch: str
    input_shape: list[int]
    macs_dense: int
    macs_pruned: int
    reduction: float
    params_dense: int
    params_pruned: int
    layers: list[LayerReport]

    def to_json(self) -> dict:
        return asdict(self)

    def write_json(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def format(self) -> str:
        """A per-layer table and the whole-model totals."""
        head = f"{'layer':<34} {'shape':<22} {'type':<11} {'nominal':<17} {'removed':>7} {'GMAC dense':>10} " \
               f"{'GMAC pruned':>11}"
        lines = [head, "-" * len(head)]
        for lr in self.layers:
            nominal = ",".join(f"{k}={v:g}" for k, v in lr.nominal.items()) or "-"
            lines.append(f"{lr.name:<34} {'x'.join(map(str, lr.shape)):<22} {lr.sparsity:<11} {nominal:<17} "
                         f"{lr.realized:>7.3f} {lr.macs_dense / 1e9:>10.4f} {lr.macs_pruned / 1e9:>11.4f}")
        lines.append("-" * len(head))
        clip = "x".join(map(str, self.input_shape))
        lines.append(f"{self.arch} on a {clip} clip: {self.macs_dense / 1e9:.3f} GMAC dense -> "
                     f"{self.macs_pruned / 1e9:.3f} GMAC pruned = {self.reduction:.2f}x MAC reduction; "
                     f"params {self.params_dense / 1e6:.2f} M -> {self.params_pruned / 1e6:.2f} M")
        return "\n".join(lines)


def output_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output positions per sample (T*H*W for convs, 1 for a Linear on a vector) of every Conv3d/Linear."""
    meta = copy.deepcopy(model).to("meta").eval()
    positions: dict[str, int] = {}
    hooks = []
    for name, m in meta.named_modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            def hook(mod, inp, out, name=name):
                positions[name] = out[0].numel() // (mod.out_channels if isinstance(mod, nn.Conv3d)
                                                     else mod.out_features)
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        meta(torch.empty(1, *input_shape, device="meta"))
    for h in hooks:
        h.remove()
    return positions


def build_report(model: nn.Module, masks: dict[str, torch.Tensor], arch: str,
                 input_shape: tuple[int, ...], rules: dict[str, LayerRule] | None = None) -> ModelReport:
    """Report for `model` with keep-masks `masks` (weights not in `masks` count as dense)."""
    rules = rules or {}
    positions = output_positions(model, input_shape)
    layers = []
    for name, m in model.named_modules():
        if name not in positions:
            continue
        wname = f"{name}.weight"
        w = m.weight
        kept = int(masks[wname].sum()) if wname in masks else w.numel()
        rule = rules.get(wname)
        layers.append(LayerReport(
            name=wname, kind=type(m).__name__, shape=list(w.shape),
            sparsity=rule.sparsity if rule else ("pruned" if kept < w.numel() else "dense"),
            nominal=dict(rule.ratios) if rule else {}, realized=1 - kept / w.numel(), density=kept / w.numel(),
            macs_dense=w.numel() * positions[name], macs_pruned=kept * positions[name]))
    dense = sum(lr.macs_dense for lr in layers)
    pruned = sum(lr.macs_pruned for lr in layers)
    params = sum(p.numel() for p in model.parameters())
    removed = sum(int((~masks[n]).sum()) for n in masks)
    return ModelReport(arch, list(input_shape), dense, pruned, dense / max(pruned, 1), params, params - removed,
                       layers)


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks of every conv/linear weight that has zeros: what a checkpoint's weights actually prune."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            nz = m.weight.detach() != 0
            if not bool(nz.all()):
                out[f"{name}.weight"] = nz
    return out
