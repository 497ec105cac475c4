"""Projections: brute-force optimality, exact counts per kernel group, idempotence, masks consistent with zeros."""

from __future__ import annotations

import itertools

import pytest
import torch

from models import build_model
from pruning import LayerRule, project, projection_mask, realized_ratio
from pruning.profile import load_profile
from pruning.projections import SPARSITY_TYPES
from pruning.sparsity_types import canonical_type
from tests import reference as ref


def energy(w, mask):
    return float((w.double() * mask).pow(2).sum())


def rule_for(kind, ratio, gs=(2, 2), **kw):
    if kind == "kgrc":
        return LayerRule("kgrc", {"kgr": ratio[0], "kgc": ratio[1]}, gs, **kw)
    if kind == "kgs-balanced":
        return LayerRule("kgs", {"kgs": ratio}, gs, balanced=True)
    return LayerRule(kind, {kind: ratio}, gs, **kw)


# Tiny shapes with edge groups (3 filters / 3 channels with groups of 2) and the kernel families of the models.
BRUTE_CASES = [
    ("irregular", (2, 2, 1, 1, 3), 0.5, (2, 2)),
    ("filter", (5, 2, 1, 2, 1), 0.4, (2, 2)),
    ("channel", (2, 5, 1, 1, 2), 0.6, (2, 2)),
    ("blk-vanilla", (5, 3, 1, 1, 2), 0.5, (2, 2)),
    ("kgs", (3, 3, 1, 1, 3), 0.5, (2, 2)),
    ("kgs-balanced", (3, 3, 1, 1, 3), 0.34, (2, 2)),
    ("kgr", (5, 3, 1, 1, 2), 0.5, (4, 2)),
    ("kgr", (6, 2, 3, 1, 1), 0.34, (3, 2)),
    ("kgc", (3, 3, 1, 2, 2), 0.5, (2, 2)),  # 4 spatial columns
    ("kgc", (4, 2, 3, 1, 1), 0.34, (2, 2)),  # temporal conv: columns are the 3 taps
    ("kgc", (2, 2, 2, 2, 1), 0.5, (2, 2)),  # a column holds both temporal taps
]


@pytest.mark.parametrize("kind,shape,ratio,gs", BRUTE_CASES)
def test_projection_is_optimal_by_brute_force(kind, shape, ratio, gs):
    for seed in range(3):
        torch.manual_seed(seed)
        w = torch.randn(shape)
        mask = projection_mask(w, rule_for(kind, ratio, gs))
        feasible = list(ref.feasible_masks(shape, kind, ratio, *gs))
        assert any(torch.equal(mask, m) for m in feasible), "projection mask violates the count constraints"
        best = max(energy(w, m) for m in feasible)
        assert energy(w, mask) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("shape,rr,rc,gs", [
    ((4, 3, 1, 2, 2), 0.5, 0.5, (4, 2)),
    ((5, 2, 3, 1, 1), 0.4, 0.34, (5, 2)),
    ((3, 2, 2, 1, 2), 0.34, 0.5, (3, 2)),
    # more row sets than column sets (C(6,3) = 20 > C(4,2) = 6, C(7,3) = 35 > 3): the columns are enumerated
    ((6, 2, 1, 2, 2), 0.5, 0.5, (6, 2)),
    ((7, 2, 3, 1, 1), 0.43, 0.34, (7, 2)),
])
def test_kgrc_exact_is_optimal_and_beats_product(shape, rr, rc, gs):
    strictly_better = 0
    for seed in range(12):
        torch.manual_seed(seed)
        w = torch.randn(shape) * torch.rand(shape[0], 1, 1, 1, 1) * torch.rand(1, 1, *shape[2:])
        exact = projection_mask(w, LayerRule("kgrc", {"kgr": rr, "kgc": rc}, gs))
        product = projection_mask(w, LayerRule("kgrc", {"kgr": rr, "kgc": rc}, gs, kgrc_method="product"))
        feasible = list(ref.feasible_kgrc_masks(shape, rr, rc, *gs))
        assert any(torch.equal(exact, m) for m in feasible)
        assert any(torch.equal(product, m) for m in feasible)
        best = max(energy(w, m) for m in feasible)
        assert energy(w, exact) == pytest.approx(best, rel=1e-12)
        assert energy(w, product) <= best + 1e-12
        strictly_better += energy(w, product) < best - 1e-9
    assert strictly_better > 0, "TCAD's product should be suboptimal on some weights"


@pytest.mark.parametrize("kind", SPARSITY_TYPES)
@pytest.mark.parametrize("shape", [(20, 10, 3, 3, 3), (230, 64, 1, 3, 3), (64, 230, 3, 1, 1), (12, 7, 1, 1, 1)])
def test_idempotent_and_consistent(kind, shape):
    torch.manual_seed(1)
    w = torch.randn(shape)
    rule = rule_for(kind, (0.5, 0.67) if kind == "kgrc" else 0.6, (8, 4))
    projected, mask = project(w, rule)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(projected == 0, ~mask)  # random weights are never exactly zero
    again, mask2 = project(projected, rule)
    assert torch.equal(again, projected) and torch.equal(mask2, mask)
    # a 1x1x1 kernel has one KGC column: a ratio >= 0.5 removes it all (profiles refuse that, see test_profiles)
    assert 0 < realized_ratio(mask) < 1 or (kind in ("kgc", "kgrc") and shape[2:] == (1, 1, 1))


def _group_slices(shape, gs):
    for R, C in ref.groups(shape, *gs):
        yield slice(R[0], R[-1] + 1), slice(C[0], C[-1] + 1)


def check_group_counts(mask, rule):
    """Per kernel group: the exact number of rows / columns kept, each kept unit whole, nothing else kept."""
    shape = tuple(mask.shape)
    ncol = ref.n_columns(shape)
    col_of = torch.tensor([ref.column_of(shape, k) for k in range(mask[0, 0].numel())])
    for rs, cs in _group_slices(shape, rule.group_size):
        g = mask[rs, cs].flatten(2)  # [rows, cols_in, K]
        rows_kept = g.flatten(1).any(1)
        cols_kept = torch.stack([g[:, :, col_of == c].any() for c in range(ncol)])
        if "kgr" in rule.ratios:
            n = g.shape[0]
            assert int(rows_kept.sum()) == n - ref.removed(rule.ratios["kgr"], n)
        if "kgc" in rule.ratios and rows_kept.any():  # a one-row edge group at kgr 0.5 keeps nothing
            assert int(cols_kept.sum()) == ncol - ref.removed(rule.ratios["kgc"], ncol)
        expected = rows_kept[:, None, None] & cols_kept[col_of][None, None, :]
        if rule.sparsity == "kgr":
            expected = rows_kept[:, None, None].expand_as(g)
        if rule.sparsity == "kgc":
            expected = cols_kept[col_of][None, None, :].expand_as(g)
        assert torch.equal(g, expected.expand_as(g))


def _pruned_shapes():
    """Every distinct pruned conv shape of the shipped C3D and R(2+1)D profiles, with its rule."""
    seen = {}
    for arch, prof in (("c3d", "c3d_kgrc_3.04x"), ("r2+1d", "r2+1d_kgrc_3.05x"), ("r2+1d", "r2+1d_kgc_1.75x"),
                       ("c3d", "c3d_kgr_1.76x"), ("r2+1d", "r2+1d_kgr_1.84x")):
        model = build_model(arch, 10)
        params = dict(model.named_parameters())
        for name, rule in load_profile(prof).resolve(model).items():
            seen.setdefault((tuple(params[name].shape), rule.sparsity, tuple(rule.ratios.items())), rule)
    return sorted(seen.items(), key=str)


@pytest.mark.parametrize("key,rule", _pruned_shapes(), ids=lambda v: str(v) if isinstance(v, tuple) else "")
def test_exact_counts_per_group_on_model_shapes(key, rule):
    shape = key[0]
    torch.manual_seed(0)
    mask = projection_mask(torch.randn(shape), rule)
    check_group_counts(mask, rule)


@pytest.mark.parametrize("method", ["exact", "product"])
def test_kgrc_counts_with_edge_groups(method):
    torch.manual_seed(3)
    rule = LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.33}, (8, 8), kgrc_method=method)
    for shape in [(230, 64, 1, 3, 3), (128, 230, 3, 1, 1), (921, 12, 1, 3, 3), (13, 3, 3, 3, 3)]:
        check_group_counts(projection_mask(torch.randn(shape), rule), rule)


def test_kgc_prunes_temporal_convs():
    """TCAD padded K to 9, making KGC a no-op on (3,1,1) convs; here the temporal taps are the columns."""
    torch.manual_seed(0)
    mask = projection_mask(torch.randn(64, 144, 3, 1, 1), LayerRule("kgc", {"kgc": 0.67}, (8, 8)))
    assert realized_ratio(mask) == pytest.approx(2 / 3)


def test_kgs_layerwide_count_and_balanced():
    torch.manual_seed(0)
    w = torch.randn(128, 64, 3, 3, 3)
    units = (128 // 8) * (64 // 4) * 27
    m = projection_mask(w, LayerRule("kgs", {"kgs": 0.85}, (8, 4)))
    assert int(m.sum()) == (units - ref.removed(0.85, units)) * 32
    b = projection_mask(w, LayerRule("kgs", {"kgs": 0.85}, (8, 4), balanced=True))
    per_group = b.view(16, 8, 16, 4, 27).any(1).any(2).sum(-1)  # kept positions per group
    assert torch.all(per_group == 27 - ref.removed(0.85, 27))


def test_l2_per_weight_score_changes_edge_ranking():
    """RT3D's L2/sqrt(nnz) favours small edge groups; plain L2 is the default and the exact projection."""
    w = torch.ones(9, 4, 1, 1, 1)
    w[8] = 1.2  # a lone edge filter row: small energy, large per-weight norm
    plain = projection_mask(w, LayerRule("blk-vanilla", {"blk-vanilla": 0.5}, (8, 4)))
    rms = projection_mask(w, LayerRule("blk-vanilla", {"blk-vanilla": 0.5}, (8, 4), score="l2-per-weight"))
    assert plain[:8].all() and not plain[8].any()
    assert rms[8].all() and not rms[:8].any()


def test_type_aliases():
    assert canonical_type("blk-kgs") == "kgs" and canonical_type("KGRC") == "kgrc"
    with pytest.raises(ValueError):
        canonical_type("kgx")


def test_projection_is_deterministic_and_handles_ties():
    w = torch.ones(16, 8, 3, 3, 3)
    rules = [rule_for(k, (0.5, 0.67) if k == "kgrc" else 0.5, (8, 4)) for k in SPARSITY_TYPES]
    for rule in rules:
        a, b = projection_mask(w, rule), projection_mask(w.clone(), rule)
        assert torch.equal(a, b)
    # all ties: the counts are still exact
    check_group_counts(projection_mask(w, LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, (8, 8))),
                       LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, (8, 8)))


def test_brute_force_reference_agrees_with_itself():
    """Guard the oracle: the number of feasible masks is the product of binomials."""
    from math import comb
    n = sum(1 for _ in ref.feasible_masks((3, 3, 1, 1, 2), "kgr", 0.5, 2, 2))
    # groups: rows {2,1} x cols {2,1}: rows kept 1 of 2 (2 ways) twice, 0 of 1 (1 way) twice
    assert n == comb(2, 1) ** 2
    assert len(list(itertools.islice(ref.feasible_kgrc_masks((2, 2, 1, 2, 2), 0.5, 0.5, 2, 2), 100))) == 2 * 6


def test_the_sparsity_type_table_is_what_every_reader_uses():
    from pruning.profile import load_profile
    from pruning.search import _rule
    from pruning.sparsity_types import TYPES, canonical_type, default_group_size

    assert SPARSITY_TYPES == tuple(TYPES)
    assert canonical_type("blk-kgs") == "kgs" and canonical_type(" Vanilla ") == "blk-vanilla"
    assert default_group_size("kgs") == (8, 4) and default_group_size("kgrc") == (8, 8)
    rule = _rule("kgrc", 0.75, (8, 8))  # rows and columns split the density evenly: 0.5 x 0.5 kept
    assert rule.ratios == {"kgr": 0.5, "kgc": 0.5}
    assert load_profile("c3d_kgrc_3.04x").group_size == TYPES["kgrc"].group_size
    with pytest.raises(ValueError, match="known: irregular"):
        canonical_type("kgx")
