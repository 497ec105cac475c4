"""Training losses beyond cross-entropy: the reweighted group-lasso penalty and distillation (docs/algorithms.md)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pruning import LayerRule
from pruning.groups import group_view
from pruning.projections import column_energy, column_index, projection_mask, removed_fraction


class UnitFamily:
    """One family of units a rule removes (filters, KGR rows, KGC columns, ...): their squared norms, and the way
    back from one value per unit to a tensor shaped like the weight."""

    def __init__(self, energy: torch.Tensor, spread: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.energy, self.spread = energy, spread  # energy: 1-D, differentiable


def unit_families(weight: torch.Tensor, rule: LayerRule) -> list[UnitFamily]:
    """The unit families of a rule; kgrc has two (rows, columns)."""
    kind = rule.sparsity
    if kind == "irregular":
        return [UnitFamily(weight.pow(2).flatten(), lambda v: v.view_as(weight))]
    if kind == "filter":
        return [UnitFamily(weight.pow(2).flatten(1).sum(1), lambda v: v.view(-1, *[1] * (weight.dim() - 1)))]
    if kind == "channel":
        return [UnitFamily(weight.pow(2).transpose(0, 1).flatten(1).sum(1),
                           lambda v: v.view(1, -1, *[1] * (weight.dim() - 2)))]
    view = group_view(weight, rule.group_size)
    energy = view.blocks.pow(2)
    idx, ncol = column_index(view.shape, weight.device)
    row_valid = view.valid.any(-1).any(-1)  # [nP, nQ, gM]: padding rows are no units

    def rows_back(v: torch.Tensor) -> torch.Tensor:
        full = v.new_zeros(row_valid.shape)
        full[row_valid] = v
        return view.to_weight(full[:, :, :, None, None].expand_as(view.blocks))

    def cols_back(v: torch.Tensor) -> torch.Tensor:
        per = v.view(*energy.shape[:2], ncol)[:, :, None, None, :][..., idx]
        return view.to_weight(per.expand_as(view.blocks))

    def kgs_back(v: torch.Tensor) -> torch.Tensor:
        return view.to_weight(v.view(*energy.shape[:2], 1, 1, -1).expand_as(view.blocks))

    def block_back(v: torch.Tensor) -> torch.Tensor:
        return view.to_weight(v.view(*energy.shape[:2], 1, 1, 1).expand_as(view.blocks))

    rows = UnitFamily(energy.sum((3, 4))[row_valid], rows_back)
    cols = UnitFamily(column_energy(view, energy).flatten(), cols_back)
    families = {"blk-vanilla": [UnitFamily(energy.sum((2, 3, 4)).flatten(), block_back)],
                "kgs": [UnitFamily(energy.sum((2, 3)).flatten(), kgs_back)], "kgr": [rows], "kgc": [cols],
                "kgrc": [rows, cols]}
    return families[kind]


def unit_energies(weight: torch.Tensor, rule: LayerRule) -> list[torch.Tensor]:
    """Squared L2 norms of the units a rule removes (differentiable); kgrc has two families (rows, columns)."""
    return [f.energy for f in unit_families(weight, rule)]


class ReweightedGroupLasso:
    """lambda_l * sum_g alpha_g * ||W_g||, alpha_g = 1 / (||W_g||^2 + eps) refreshed from the current weights.

    Two ways to apply it (docs/algorithms.md, "Reweighted group-lasso"):
    - ``prox`` (default): after every optimizer step, the penalty's proximal step, group soft-thresholding
      W_g <- W_g * max(0, 1 - lr * lambda_l * alpha_g / ||W_g||): units reach exactly zero instead of
      oscillating around it as a (sub)gradient step makes them;
    - ``gradient``: the penalty added to the loss, as the TCAD paper describes. Only alpha is detached: the
      penalty carries gradient (the TCAD release computed it on detached copies, so it had no effect).
    Which units: ``removed`` (default) penalises, at each refresh, only the units the profile's projection of the
    current weights removes (alpha = 0 for the kept ones), so the penalty empties exactly what the hard prune will
    cut; ``all`` penalises every unit, as the papers do, which on a short budget empties whole layers before the
    profile's share is reached (docs/algorithms.md).
    With a ``target``, lambda_l doubles at each alpha refresh while the share of layer l's norm that the hard
    prune would remove is above it.
    """

    def __init__(self, rules: dict[str, LayerRule], lam: float, eps: float, target: float = 0.0,
                 tau: float = 2.0, units: str = "removed", split: bool = False) -> None:
        if units not in ("removed", "all"):
            raise ValueError(f"unknown reweighting units {units!r}: expected 'removed' or 'all'")
        self.rules, self.eps, self.target, self.tau, self.units = rules, eps, target, tau, units
        self.split = split  # TCAD: a layer's lambda is shared by its unit families (KGRC: rows and columns, 1/2 each)
        self.lam: dict[str, float] = dict.fromkeys(rules, lam)
        self.alpha: dict[str, list[torch.Tensor]] = {}

    @torch.no_grad()
    def update_alpha(self, model: nn.Module) -> None:
        """Refresh alpha from the current weights; with a target, first raise lambda where it is not met."""
        params = dict(model.named_parameters())
        if self.alpha and self.target > 0:
            for name, rule in self.rules.items():
                if removed_fraction(params[name], rule) > self.target:
                    self.lam[name] *= self.tau
        self.alpha = {}
        for name, rule in self.rules.items():
            w = params[name].detach()
            alpha = [1.0 / (e + self.eps) for e in unit_energies(w, rule)]
            if self.units == "removed":  # a unit with any weight the projection keeps is not penalised
                kept = unit_energies(projection_mask(w, rule).to(w.dtype), rule)
                alpha = [a * (k == 0) for a, k in zip(alpha, kept)]
            self.alpha[name] = alpha

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if not self.alpha:
            self.update_alpha(model)
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(model.parameters()).device)
        for name, rule in self.rules.items():
            lam = self._family_lambda(name)
            for e, a in zip(unit_energies(params[name], rule), self.alpha[name]):
                total = total + lam * (a * torch.sqrt(e + 1e-12)).sum()
        return total

    def _family_lambda(self, name: str) -> float:
        return self.lam[name] / len(self.alpha[name]) if self.split else self.lam[name]

    @torch.no_grad()
    def shrink(self, model: nn.Module, lr: float) -> None:
        """The proximal step of lr * penalty, one unit family after the other."""
        if not self.alpha:
            self.update_alpha(model)
        params = dict(model.named_parameters())
        for name, rule in self.rules.items():
            w = params[name]
            for i, a in enumerate(self.alpha[name]):
                family = unit_families(w.data, rule)[i]  # recomputed: the previous family changed w
                norm = family.energy.sqrt()
                factor = (1 - lr * self._family_lambda(name) * a / norm.clamp(min=1e-12)).clamp(min=0)
                w.data.mul_(family.spread(factor.to(w.dtype)))

    def state_dict(self) -> dict:
        return {"alpha": {n: list(a) for n, a in self.alpha.items()}, "lam": dict(self.lam), "units": self.units}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = {n: list(a) for n, a in state["alpha"].items()}
        lam = state.get("lam")  # absent in checkpoints written before lambda was per layer
        if lam is not None:
            self.lam = {n: float(v) for n, v in lam.items()}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *, temperature: float,
                      alpha: float, ce: Callable, kind: str = "kl-t2") -> torch.Tensor:
    """(1 - alpha) * CE + alpha * soft term. kl-t2: T^2 * KL(teacher_T || student_T) (Hinton et al.: T^2 keeps
    the soft gradients' scale as T changes); soft-ce: -sum p_teacher_T * log p_student_T, no T^2, as the papers'
    code computes it (it differs from KL by the teacher's entropy, a constant, so only the T^2 scale differs)."""
    log_student = F.log_softmax(student / temperature, 1)
    if kind == "soft-ce":
        soft = -(log_student * F.softmax(teacher / temperature, 1)).sum(1).mean()
    elif kind == "kl-t2":
        soft = temperature ** 2 * F.kl_div(log_student, F.log_softmax(teacher / temperature, 1),
                                           reduction="batchmean", log_target=True)
    else:
        raise ValueError(f"unknown distillation loss {kind!r}")
    return (1 - alpha) * ce(student, target) + alpha * soft
