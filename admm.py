"""Scaled ADMM for structured pruning (SPEC §5).

minimise f(W) subject to W_l in S_l. With auxiliary Z and scaled dual U:
    W-step:  SGD on f(W) + sum_l rho/2 * ||W_l - Z_l + U_l||^2
    Z-step:  Z = Proj(W + U)
    U-step:  U = U + W - Z
rho grows x10 per stage; the unscaled dual rho*U carries over, so U is divided by the same factor.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning import LayerRule, project


class ADMM:
    def __init__(self, rules: dict[str, LayerRule], rho: float = 1e-4, rho_num: int = 4,
                 keep_masks: dict[str, torch.Tensor] | None = None) -> None:
        self.rules = rules
        self.rho0, self.rho_num = rho, rho_num
        self.stage = 0
        self.rho = rho
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        # --combine-progressive: weights already pruned stay pruned, in Z too.
        self.keep_masks = keep_masks or {}

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        return {n: params[n] for n in self.rules}

    def _project(self, name: str, w: torch.Tensor) -> torch.Tensor:
        old = self.keep_masks.get(name)
        if old is not None:
            w = w * old.to(w.device, w.dtype)
        z, _ = project(w, self.rules[name])
        return z if old is None else z * old.to(w.device, w.dtype)

    @torch.no_grad()
    def initialize(self, model: nn.Module) -> None:
        """Z = Proj(W), U = 0."""
        for name, p in self._params(model).items():
            self.Z[name] = self._project(name, p.detach())
            self.U[name] = torch.zeros_like(p)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """sum rho/2 ||W - Z + U||^2 (carries gradient to W)."""
        total = None
        for name, p in self._params(model).items():
            term = (p - self.Z[name] + self.U[name]).pow(2).sum()
            total = term if total is None else total + term
        return 0.5 * self.rho * total if total is not None else torch.zeros(())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Z = Proj(W + U); U = U + W - Z."""
        for name, p in self._params(model).items():
            w = p.detach()
            self.Z[name] = self._project(name, w + self.U[name])
            self.U[name] = self.U[name] + w - self.Z[name]

    def set_stage(self, stage: int) -> None:
        """Move to rho stage `stage` (rho0 * 10^stage), rescaling U so rho*U is unchanged."""
        if stage == self.stage:
            return
        factor = 10.0 ** (stage - self.stage)
        for name in self.U:
            self.U[name] = self.U[name] / factor
        self.stage, self.rho = stage, self.rho0 * 10.0 ** stage

    @torch.no_grad()
    def residuals(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Per layer: primal residual ||W - Z|| / ||W|| and the fraction of W already in the sparse set."""
        out = {}
        for name, p in self._params(model).items():
            w = p.detach()
            res = float((w - self.Z[name]).norm() / w.norm().clamp(min=1e-12))
            in_set = float((self._project(name, w) == w).float().mean())
            out[name] = {"residual": res, "in_set": in_set}
        return out

    def state_dict(self) -> dict:
        return {"Z": dict(self.Z), "U": dict(self.U), "rho": self.rho, "rho0": self.rho0, "stage": self.stage,
                "rho_num": self.rho_num}

    def load_state_dict(self, state: dict) -> None:
        self.Z = {k: v.clone() for k, v in state["Z"].items()}
        self.U = {k: v.clone() for k, v in state["U"].items()}
        self.rho, self.rho0, self.stage = float(state["rho"]), float(state["rho0"]), int(state["stage"])
        self.rho_num = int(state["rho_num"])
