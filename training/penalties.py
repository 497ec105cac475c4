"""Training losses beyond cross-entropy: the reweighted group-lasso penalty (SPEC §6) and distillation (§7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pruning import LayerRule
from pruning.groups import group_view
from pruning.projections import _column_energy


def unit_energies(weight: torch.Tensor, rule: LayerRule) -> list[torch.Tensor]:
    """Squared L2 norms of the units a rule removes (differentiable); kgrc has two families (rows, columns)."""
    kind = rule.sparsity
    if kind == "irregular":
        return [weight.pow(2).flatten()]
    if kind == "filter":
        return [weight.pow(2).flatten(1).sum(1)]
    if kind == "channel":
        return [weight.pow(2).transpose(0, 1).flatten(1).sum(1)]
    view = group_view(weight, rule.group_size)
    energy = view.blocks.pow(2)
    rows = energy.sum((3, 4))[view.valid.any(-1).any(-1)]  # padding rows dropped
    cols = _column_energy(view, energy).flatten()
    families = {"blk-vanilla": [energy.sum((2, 3, 4)).flatten()], "kgs": [energy.sum((2, 3)).flatten()],
                "kgr": [rows], "kgc": [cols], "kgrc": [rows, cols]}
    return families[kind]


class ReweightedGroupLasso:
    """lambda * sum_g alpha_g * ||W_g||, alpha_g = 1 / (||W_g||^2 + eps) refreshed from the current weights.

    Only alpha is detached: the penalty itself carries gradient (the TCAD release computed it on detached
    copies, so it had no effect).
    """

    def __init__(self, rules: dict[str, LayerRule], lam: float, eps: float) -> None:
        self.rules, self.lam, self.eps = rules, lam, eps
        self.alpha: dict[str, list[torch.Tensor]] = {}

    @torch.no_grad()
    def update_alpha(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        self.alpha = {n: [1.0 / (e + self.eps) for e in unit_energies(params[n].detach(), r)]
                      for n, r in self.rules.items()}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if not self.alpha:
            self.update_alpha(model)
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(model.parameters()).device)
        for name, rule in self.rules.items():
            for e, a in zip(unit_energies(params[name], rule), self.alpha[name]):
                total = total + (a * torch.sqrt(e + 1e-12)).sum()
        return self.lam * total

    def state_dict(self) -> dict:
        return {"alpha": {n: list(a) for n, a in self.alpha.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = {n: list(a) for n, a in state["alpha"].items()}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *, temperature: float,
                      alpha: float, ce: nn.Module) -> torch.Tensor:
    """(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)."""
    kl = F.kl_div(F.log_softmax(student / temperature, 1), F.log_softmax(teacher / temperature, 1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce(student, target) + alpha * temperature ** 2 * kl
