"""Scaled ADMM for structured pruning, with the penalty rho adapted by residual balancing.

minimise f(W) subject to W_l in S_l. With auxiliary Z and scaled dual U, per pruned layer l:
    W-step:  SGD on f(W) + sum_l rho_l/2 * ||W_l - Z_l + U_l||^2
    Z-step:  Z_l = Proj(W_l + U_l)
    U-step:  U_l = U_l + W_l - Z_l
Whenever rho_l changes by a factor c, U_l is divided by c: the unscaled dual rho_l * U_l is what carries over.

Three rho schedules, per layer (docs/algorithms.md, "ADMM"), with r = ||W - Z|| / ||W|| the primal residual at a
Z/U step and s = rho ||Z - Z_prev|| / ||W|| the dual one:
- ``residual`` (default): the augmented-Lagrangian penalty update (Bertsekas 1982; Nocedal & Wright, Numerical
  Optimization, Algorithm 17.4): rho is multiplied by tau whenever r did not shrink by the factor gamma since the
  previous Z/U step and is still above tol. It raises rho exactly as long as the constraint is not being met fast
  enough, and stops once it is met: a larger rho would only hold the kept weights still.
- ``balance``: residual balancing (Boyd et al. 2011, section 3.4.1): rho x tau when r > mu * s, rho / tau when
  s > mu * r. With SGD's noise the kept weights keep moving, so s stays near r and rho stalls.
- ``stages``: the published schedule, rho0 * 10^stage over ``rho_num`` stages of equal length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pruning import LayerRule, project

SCHEDULES = ("balance", "residual", "stages")


@dataclass(frozen=True)
class Cadence:
    """When ADMM's outer steps happen: a Z/U step every `every_epochs` epochs (at the epoch's end) or, when
    `every_iters` is set, every that many iterations; with the 'stages' schedule, a new rho stage every
    `stage_epochs` epochs."""

    every_epochs: int = 1
    every_iters: int | None = None
    stage_epochs: int = 1

    def z_u_after_iteration(self, global_iter: int) -> bool:
        return bool(self.every_iters) and global_iter % self.every_iters == 0

    def z_u_after_epoch(self, epoch: int) -> bool:
        return not self.every_iters and (epoch + 1) % self.every_epochs == 0

    def stage(self, epoch: int, stages: int) -> int:
        return min(epoch // self.stage_epochs, stages - 1)


def rt3d_lr_cycle(cycle_iters: int) -> Callable[[int], float]:
    """RT3D's learning-rate factor inside each Z/U cycle of `cycle_iters` iterations: 1, 1/2, 1/4 by thirds."""
    cycle = max(1, cycle_iters)
    return lambda it: 0.5 ** ((it % cycle) * 3 // cycle)


def rho_bound(optimizer: str, lr: float, momentum: float) -> float:
    """The default upper bound of rho. SGD moves W towards Z - U by lr * rho / (1 - momentum) of the gap per step:
    above 1 it overshoots. Adam normalises the step, so no such bound (and a coupled penalty acts weakly)."""
    return float(f"{(1 - momentum) / lr:.6g}") if optimizer == "sgd" else 1e4


class ADMM:
    def __init__(self, rules: dict[str, LayerRule], rho: float = 1e-4, rho_num: int = 4,
                 keep_masks: dict[str, torch.Tensor] | None = None, schedule: str = "residual",
                 mu: float = 10.0, tau: float = 2.0, rho_max: float = 1e4, gamma: float = 0.5,
                 tol: float = 0.01) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown rho schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
        self.rules = rules
        self.rho0, self.rho_num = rho, rho_num
        self.schedule, self.mu, self.tau, self.rho_max = schedule, mu, tau, rho_max
        self.gamma, self.tol = gamma, tol
        self.stage = 0
        self.rho: dict[str, float] = {name: rho for name in rules}
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.dual: dict[str, float] = {}  # last dual residual s = rho ||Z - Z_prev|| / ||W|| per layer
        self.primal: dict[str, float] = {}  # last primal residual ||W - Z|| / ||W|| per layer, at the Z/U step
        # --combine-progressive: weights already pruned stay pruned, in Z too.
        self.keep_masks = keep_masks or {}

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        return {n: params[n] for n in self.rules}

    def _project(self, name: str, w: torch.Tensor) -> torch.Tensor:
        keep = self.keep_masks.get(name)
        if keep is not None:
            w = w * keep.to(w.device, w.dtype)
        z, _ = project(w, self.rules[name])
        return z if keep is None else z * keep.to(w.device, w.dtype)

    @torch.no_grad()
    def initialize(self, model: nn.Module) -> None:
        """Z = Proj(W), U = 0."""
        for name, p in self._params(model).items():
            self.Z[name] = self._project(name, p.detach())
            self.U[name] = torch.zeros_like(p)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """sum_l rho_l/2 ||W_l - Z_l + U_l||^2 (carries gradient to W)."""
        total = None
        for name, p in self._params(model).items():
            term = 0.5 * self.rho[name] * (p - self.Z[name] + self.U[name]).pow(2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Z = Proj(W + U); U = U + W - Z; then rho per layer as the schedule says."""
        for name, p in self._params(model).items():
            w = p.detach()
            z_prev = self.Z[name]
            self.Z[name] = self._project(name, w + self.U[name])
            self.U[name] = self.U[name] + w - self.Z[name]
            scale = max(float(w.norm()), 1e-12)
            primal = float((w - self.Z[name]).norm()) / scale
            dual = self.rho[name] * float((self.Z[name] - z_prev).norm()) / scale
            previous = self.primal.get(name)
            self.primal[name], self.dual[name] = primal, dual
            self._adapt_rho(name, primal, dual, previous)

    def _adapt_rho(self, name: str, primal: float, dual: float, previous: float | None) -> None:
        if self.schedule == "balance":
            if primal > self.mu * dual:
                self._set_rho(name, min(self.rho[name] * self.tau, self.rho_max))
            elif dual > self.mu * primal:
                self._set_rho(name, self.rho[name] / self.tau)
        elif self.schedule == "residual" and previous is not None:
            if primal > max(self.tol, self.gamma * previous):  # not met, and not shrinking fast enough
                self._set_rho(name, min(self.rho[name] * self.tau, self.rho_max))

    def _set_rho(self, name: str, rho: float) -> None:
        self.U[name] = self.U[name] * (self.rho[name] / rho)
        self.rho[name] = rho

    def set_stage(self, stage: int) -> None:
        """Schedule 'stages': move to rho stage `stage` (rho0 * 10^stage), rescaling U so rho*U is unchanged."""
        if self.schedule != "stages" or stage == self.stage:
            return
        for name in self.rho:
            self._set_rho(name, self.rho0 * 10.0 ** stage)
        self.stage = stage

    def rho_summary(self) -> float:
        """The geometric mean of the layers' rho (one number for logs)."""
        return math.exp(sum(math.log(r) for r in self.rho.values()) / max(1, len(self.rho)))

    @torch.no_grad()
    def residuals(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Per layer: primal residual ||W - Z|| / ||W||, the fraction of W already in the sparse set, rho, and the
        last Z/U step's dual residual rho ||Z - Z_prev|| / ||W||."""
        out = {}
        for name, p in self._params(model).items():
            w = p.detach()
            res = float((w - self.Z[name]).norm() / w.norm().clamp(min=1e-12))
            in_set = float((self._project(name, w) == w).float().mean())
            out[name] = {"residual": res, "in_set": in_set, "rho": self.rho[name],
                         "dual": self.dual.get(name, float("nan"))}
        return out

    def log(self, model: nn.Module) -> dict:
        """The epoch's record: rho, residuals (mean, max, per layer), the share in the set, the dual residual."""
        res = self.residuals(model)
        per_layer = {key: {k: v[key] for k, v in res.items()} for key in ("residual", "in_set", "dual")}
        return {"rho": self.rho_summary(), "mean_residual": sum(r["residual"] for r in res.values()) / len(res),
                "max_residual": max(r["residual"] for r in res.values()), "rho_layer": dict(self.rho),
                **per_layer}

    def state_dict(self) -> dict:
        return {"Z": dict(self.Z), "U": dict(self.U), "rho": dict(self.rho), "rho0": self.rho0, "stage": self.stage,
                "rho_num": self.rho_num, "schedule": self.schedule, "mu": self.mu, "tau": self.tau,
                "rho_max": self.rho_max, "gamma": self.gamma, "tol": self.tol, "dual": dict(self.dual),
                "primal": dict(self.primal)}

    def load_state_dict(self, state: dict) -> None:
        self.Z = {k: v.clone() for k, v in state["Z"].items()}
        self.U = {k: v.clone() for k, v in state["U"].items()}
        rho = state["rho"]  # one float in checkpoints written before rho was per layer
        self.rho = {k: float(rho[k]) for k in self.rules} if isinstance(rho, dict) else dict.fromkeys(
            self.rules, float(rho))
        self.rho0, self.stage = float(state["rho0"]), int(state["stage"])
        self.rho_num = int(state["rho_num"])
        self.schedule = state.get("schedule", "stages")
        self.mu, self.tau = float(state.get("mu", self.mu)), float(state.get("tau", self.tau))
        self.rho_max = float(state.get("rho_max", self.rho_max))
        self.gamma, self.tol = float(state.get("gamma", self.gamma)), float(state.get("tol", self.tol))
        self.dual = {k: float(v) for k, v in state.get("dual", {}).items()}
        self.primal = {k: float(v) for k, v in state.get("primal", {}).items()}
