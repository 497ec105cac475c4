"""Euclidean projections of a Conv3d weight onto each structured sparsity set
(docs/algorithms.md, "Sparsity types and their projections").

Every projection keeps the units with the most L2 energy under its type's count constraints and zeroes the
rest, which is the exact projection ADMM needs. All of them are vectorised over groups: R(2+1)D has layers
with thousands of kernel groups.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from .groups import GroupView, ceil_count, column_layout, group_view, round_half_up
from .sparsity_types import TYPES

SPARSITY_TYPES = tuple(TYPES)
SCORES = ("l2", "l2-per-weight")
KGRC_METHODS = ("exact", "product")
KGR_ROUNDINGS = ("half-up", "ceil")


@dataclass(frozen=True)
class LayerRule:
    """How one weight is pruned: its type, ratio(s) removed and group size.

    `ratios` maps each component type to its fraction removed: {"kgs": 0.85} or {"kgr": 0.5, "kgc": 0.67}.
    """

    sparsity: str
    ratios: dict[str, float]
    group_size: tuple[int, int] = (8, 8)
    balanced: bool = False  # kgs only: the same number of positions removed in every group
    score: str = "l2"  # "l2-per-weight" ranks by L2/sqrt(nnz) like RT3D (differs only on edge groups)
    kgrc_method: str = "exact"  # "product" multiplies independent KGR and KGC masks like TCAD
    kgr_rounding: str = "half-up"  # rows removed per group: round(rows * ratio) half up, or TCAD's ceil
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def ratio(self) -> float:
        """The single ratio of a one-component rule."""
        return self.ratios[self.sparsity]


def project(weight: torch.Tensor, rule: LayerRule) -> tuple[torch.Tensor, torch.Tensor]:
    """Project `weight` onto the rule's sparse set. Returns (projected weight, bool keep-mask)."""
    mask = projection_mask(weight, rule)
    return weight * mask, mask


@torch.no_grad()
def removed_fraction(weight: torch.Tensor, rule: LayerRule) -> float:
    """||W - Proj(W)|| / ||W||: the share of the layer's weight norm in the units the rule would remove."""
    w = weight.detach().float()
    return float((w - project(w, rule)[0]).norm() / w.norm().clamp(min=1e-12))


@torch.no_grad()
def projection_mask(weight: torch.Tensor, rule: LayerRule) -> torch.Tensor:
    """The bool keep-mask of the projection (same shape as `weight`)."""
    w = weight.detach().float()
    kind = rule.sparsity
    if kind == "irregular":
        return _layerwide(w.abs().flatten(), rule.ratio).view_as(w)
    if kind == "filter":
        keep = _layerwide(w.pow(2).flatten(1).sum(1), rule.ratio)
        return keep.view(-1, *[1] * (w.dim() - 1)).expand_as(w).clone()
    if kind == "channel":
        keep = _layerwide(w.pow(2).transpose(0, 1).flatten(1).sum(1), rule.ratio)
        return keep.view(1, -1, *[1] * (w.dim() - 2)).expand_as(w).clone()
    view = group_view(w, rule.group_size)
    energy = view.blocks.pow(2)
    if kind == "blk-vanilla":
        unit = energy.sum((2, 3, 4))
        unit = _rescore(unit, view.rows[:, None] * view.cols_in[None, :] * energy.shape[-1], rule.score)
        keep = _layerwide(unit.flatten(), rule.ratio).view_as(unit)
        return view.to_weight(keep[:, :, None, None, None].expand_as(view.blocks))
    if kind == "kgs":
        unit = energy.sum((2, 3))  # [nP, nQ, K]
        if rule.balanced:
            keep = _keep_top(unit, keep_count(unit.shape[-1], rule.ratio))
        else:
            size = (view.rows[:, None] * view.cols_in[None, :])[..., None].expand_as(unit)
            unit = _rescore(unit, size, rule.score)
            keep = _layerwide(unit.flatten(), rule.ratio).view_as(unit)
        return view.to_weight(keep[:, :, None, None, :].expand_as(view.blocks))
    if kind == "kgr":
        return view.to_weight(_kgr_keep(view, energy, rule.ratios["kgr"], rule.kgr_rounding))
    if kind == "kgc":
        return view.to_weight(_kgc_keep(view, energy, rule.ratios["kgc"]))
    if kind == "kgrc":
        rr, rc = rule.ratios["kgr"], rule.ratios["kgc"]
        if rule.kgrc_method == "product":
            keep = _kgr_keep(view, energy, rr, rule.kgr_rounding) & _kgc_keep(view, energy, rc)
        else:
            keep = _kgrc_exact_keep(view, energy, rr, rc, rule.kgr_rounding)
        return view.to_weight(keep)
    raise ValueError(f"unknown sparsity type {kind!r}")


def realized_ratio(mask: torch.Tensor) -> float:
    """Fraction of weights removed by a keep-mask."""
    return 1.0 - mask.sum().item() / mask.numel()


# ---------------------------------------------------------------------------------------------- helpers


def keep_count(n: int | torch.Tensor, ratio: float, rounding: str = "half-up") -> int | torch.Tensor:
    """Units kept of `n` when `ratio` of them is removed (rounded half up, or up)."""
    return n - (round_half_up(ratio * n) if rounding == "half-up" else ceil_count(ratio * n))


def _keep_top(score: torch.Tensor, keep: int | torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the `keep` best-scored units along the last dim (per leading index); stable on ties."""
    if valid is not None:
        score = score.masked_fill(~valid, float("-inf"))
    order = torch.argsort(score, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order))
    keep_t = torch.as_tensor(keep, device=score.device)
    mask = rank < keep_t.unsqueeze(-1) if keep_t.dim() else rank < keep_t
    return mask if valid is None else mask & valid


def _layerwide(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Layer-wide top-k by selection (O(n), no full sort); ties go to the lower index, as a stable sort would."""
    n = score.numel()
    keep = int(keep_count(n, ratio))
    if keep <= 0 or keep >= n:
        return torch.full_like(score, keep > 0, dtype=torch.bool)
    threshold = torch.kthvalue(score, n - keep + 1).values  # the keep-th largest
    mask = score > threshold
    ties = (score == threshold).nonzero().flatten()[: keep - int(mask.sum())]
    mask[ties] = True
    return mask


def _rescore(energy: torch.Tensor, size: torch.Tensor, score: str) -> torch.Tensor:
    if score == "l2":
        return energy
    if score == "l2-per-weight":
        # (||w|| / sqrt(n))^2 = energy / n; an empty unit (only padding) cannot occur.
        return energy / size.clamp(min=1).to(energy.dtype)
    raise ValueError(f"unknown score {score!r}; known: {', '.join(SCORES)}")


def column_index(shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, int]:
    """Map each flattened kernel position to its KGC column; returns (index [K], number of columns)."""
    kt, kh, kw = (tuple(shape[2:]) + (1, 1, 1))[:3]
    ncol, _ = column_layout((kt, kh, kw))
    k = torch.arange(kt * kh * kw, device=device)
    idx = k % (kh * kw) if kh * kw > 1 else k // (kh * kw)
    return idx, ncol


def _row_energy(view: GroupView, energy: torch.Tensor) -> torch.Tensor:
    return energy.sum((3, 4))  # [nP, nQ, gM]


def column_energy(view: GroupView, energy: torch.Tensor, over_rows: bool = True) -> torch.Tensor:
    idx, ncol = column_index(view.shape, energy.device)
    per_k = energy.sum((2, 3)) if over_rows else energy.sum(3)  # [nP, nQ, K] or [nP, nQ, gM, K]
    out = per_k.new_zeros(*per_k.shape[:-1], ncol)
    return out.index_add_(-1, idx, per_k)


def _row_valid(view: GroupView) -> torch.Tensor:
    gM = view.blocks.shape[2]
    return torch.arange(gM, device=view.rows.device)[None, :] < view.rows[:, None]  # [nP, gM]


def _kgr_keep(view: GroupView, energy: torch.Tensor, ratio: float, rounding: str = "half-up") -> torch.Tensor:
    nP, nQ = energy.shape[:2]
    valid = _row_valid(view)[:, None, :].expand(nP, nQ, -1)
    keep_rows = keep_count(view.rows, ratio, rounding)[:, None].expand(nP, nQ)
    rows = _keep_top(_row_energy(view, energy), keep_rows, valid)
    return rows[:, :, :, None, None].expand_as(view.blocks) & view.valid


def _kgc_keep(view: GroupView, energy: torch.Tensor, ratio: float) -> torch.Tensor:
    idx, ncol = column_index(view.shape, energy.device)
    cols = _keep_top(column_energy(view, energy), keep_count(ncol, ratio))  # [nP, nQ, ncol]
    return cols[:, :, None, None, :][..., idx].expand_as(view.blocks) & view.valid


def _kgrc_exact_keep(view: GroupView, energy: torch.Tensor, rr: float, rc: float,
                     rounding: str = "half-up") -> torch.Tensor:
    """Exact KGRC projection: for a fixed set of kept rows the best columns are the top columns by energy over
    those rows, so trying every row set of a group and keeping the best is exact (C(8,4) = 70 at most). By
    symmetry, trying every column set with its top rows is exact too: taken where it has fewer candidates (groups
    of 16 or 32 rows: C(32,16) row sets, against C(9,3) = 84 column sets)."""
    idx, ncol = column_index(view.shape, energy.device)
    E = column_energy(view, energy, over_rows=False)  # [nP, nQ, gM, ncol]
    nP, nQ, gM, _ = E.shape
    keep_c = keep_count(ncol, rc)
    row_mask = torch.zeros(nP, nQ, gM, dtype=torch.bool, device=E.device)
    col_mask = torch.zeros(nP, nQ, ncol, dtype=torch.bool, device=E.device)
    # Only the last band of groups can have fewer rows, so this loops at most twice.
    for rows in torch.unique(view.rows).tolist():
        bands = (view.rows == rows).nonzero().flatten()
        keep_r = int(keep_count(rows, rr, rounding))
        Eb = E[bands, :, :rows].reshape(-1, rows, ncol)  # [G, rows, ncol]
        if math.comb(rows, keep_r) <= math.comb(ncol, keep_c):
            best_rows, best_cols = _best_subsets(Eb, _subsets(rows, keep_r, E), keep_c)
        else:
            best_cols, best_rows = _best_subsets(Eb.transpose(1, 2), _subsets(ncol, keep_c, E), keep_r)
        row_mask[bands, :, :rows] = best_rows.reshape(len(bands), nQ, rows)
        col_mask[bands] = best_cols.reshape(len(bands), nQ, ncol)
    keep = row_mask[:, :, :, None, None] & col_mask[:, :, None, None, :][..., idx]
    return keep.expand_as(view.blocks) & view.valid


def _subsets(n: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """Every k-subset of range(n) as 0/1 rows [C(n, k), n]."""
    subsets = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long)
    S = torch.zeros(len(subsets), n, dtype=like.dtype, device=like.device)
    if k:
        S.scatter_(1, subsets.to(like.device), 1.0)
    return S


def _best_subsets(E: torch.Tensor, S: torch.Tensor, keep_c: int, chunk_elems: int = 1 << 24):
    """For groups E [G, R, C] and candidate row sets S [nS, R], the best (row mask, column mask) per group."""
    G, R, C = E.shape
    step = max(1, chunk_elems // max(1, S.shape[0] * C))
    rows_out, cols_out = [], []
    for start in range(0, G, step):
        e = E[start : start + step]
        col_e = torch.einsum("sr,grc->gsc", S, e)  # energy of each column over each row set
        top = torch.sort(col_e, dim=-1, descending=True, stable=True).values[..., :keep_c].sum(-1)  # [g, nS]
        best = torch.argmax(top, dim=1)  # first maximum: deterministic
        rows_out.append(S[best].bool())
        cols_out.append(_keep_top(col_e[torch.arange(len(e)), best], keep_c))
    return torch.cat(rows_out), torch.cat(cols_out)
