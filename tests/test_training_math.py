"""ADMM, reweighting, masks and distillation: the mathematics, on tiny layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admm import ADMM
from models import build_model
from pruning import LayerRule, apply_masks, hard_prune, mask_gradients, project
from training.penalties import ReweightedGroupLasso, distillation_loss, unit_energies
from training.schedule import build_scheduler


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(4, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3, 4)))


RULES = {"conv.weight": LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, (8, 4))}


def test_admm_penalty_gradient_is_rho_times_w_minus_z_plus_u():
    torch.manual_seed(0)
    model = Tiny()
    solver = ADMM(RULES, rho=0.3)
    solver.initialize(model)
    solver.U["conv.weight"] = torch.randn_like(model.conv.weight)
    model.zero_grad()
    solver.penalty(model).backward()
    w = model.conv.weight.detach()
    expected = 0.3 * (w - solver.Z["conv.weight"] + solver.U["conv.weight"])
    torch.testing.assert_close(model.conv.weight.grad, expected)


def test_admm_z_u_update_by_hand():
    torch.manual_seed(1)
    model = Tiny()
    solver = ADMM(RULES, rho=1e-2, schedule="stages")  # no rebalancing: U is exactly the U-step
    solver.initialize(model)
    w0 = model.conv.weight.detach().clone()
    z0, _ = project(w0, RULES["conv.weight"])
    torch.testing.assert_close(solver.Z["conv.weight"], z0)
    assert not solver.U["conv.weight"].any()
    with torch.no_grad():
        model.conv.weight.add_(0.1 * torch.randn_like(w0))
    u_prev = torch.randn_like(w0)
    solver.U["conv.weight"] = u_prev.clone()
    solver.update(model)
    w1 = model.conv.weight.detach()
    z1, _ = project(w1 + u_prev, RULES["conv.weight"])
    torch.testing.assert_close(solver.Z["conv.weight"], z1)
    torch.testing.assert_close(solver.U["conv.weight"], u_prev + w1 - z1)


def test_rho_stage_rescales_u():
    model = Tiny()
    solver = ADMM(RULES, rho=1e-4, rho_num=4, schedule="stages")
    solver.initialize(model)
    solver.U["conv.weight"] = torch.ones_like(model.conv.weight)
    solver.set_stage(2)
    assert solver.rho["conv.weight"] == pytest.approx(1e-2)
    torch.testing.assert_close(solver.U["conv.weight"], torch.full_like(model.conv.weight, 0.01))
    # the unscaled dual rho*U is unchanged
    assert solver.rho["conv.weight"] * solver.U["conv.weight"][0, 0, 0, 0, 0] == pytest.approx(1e-4)


def test_admm_drives_weights_into_the_set():
    torch.manual_seed(2)
    model = Tiny()
    solver = ADMM(RULES, rho=1.0, rho_max=1 / 0.2)  # lr * rho <= 1: the penalty's step never overshoots
    solver.initialize(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    first = solver.residuals(model)["conv.weight"]["residual"]
    for it in range(60):
        opt.zero_grad()
        solver.penalty(model).backward()
        opt.step()
        if it % 10 == 9:
            solver.update(model)
    assert solver.residuals(model)["conv.weight"]["residual"] < 0.05 * first


def test_masks_hold_after_many_steps_with_momentum_and_weight_decay():
    torch.manual_seed(3)
    model = Tiny()
    masks = hard_prune(model, RULES)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-2)
    with torch.no_grad():  # a zero bias must stay trainable: masks are explicit, not derived from zeros
        model.conv.bias[:4] = 0
    for _ in range(50):
        opt.zero_grad()
        loss = model(torch.randn(2, 4, 3, 5, 5)).pow(2).sum()
        loss.backward()
        mask_gradients(model, masks)
        opt.step()
        apply_masks(model, masks)
    assert torch.all(model.conv.weight[~masks["conv.weight"]] == 0)
    assert torch.all(model.conv.weight[masks["conv.weight"]] != 0)
    assert torch.all(model.conv.bias[:4] != 0)


def test_reweighted_penalty_carries_gradient_and_shrinks_small_groups():
    torch.manual_seed(4)
    model = Tiny()
    rules = {"conv.weight": LayerRule("kgr", {"kgr": 0.5}, (8, 4))}
    pen = ReweightedGroupLasso(rules, lam=1e-2, eps=1e-3)
    pen.update_alpha(model)
    before = model.conv.weight.detach().clone()
    p = pen.penalty(model)
    assert p.requires_grad
    p.backward()
    assert model.conv.weight.grad.abs().sum() > 0
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        pen.penalty(model).backward()
        opt.step()
    assert not torch.equal(before, model.conv.weight.detach())
    rows_before = unit_energies(before, rules["conv.weight"])[0]
    rows_after = unit_energies(model.conv.weight.detach(), rules["conv.weight"])[0]
    # reweighting shrinks the weakest rows relatively more than the strongest
    weak, strong = rows_before.argmin(), rows_before.argmax()
    assert rows_after[weak] / rows_before[weak] < rows_after[strong] / rows_before[strong]


@pytest.mark.parametrize("kind", ["irregular", "filter", "channel", "blk-vanilla", "kgs", "kgr", "kgc", "kgrc"])
def test_unit_energies_sum_to_weight_energy(kind):
    torch.manual_seed(5)
    w = torch.randn(13, 6, 3, 3, 3)
    rule = LayerRule(kind, {"kgrc": {"kgr": .5, "kgc": .5}}.get(kind, {kind: 0.5}), (8, 4))
    for e in unit_energies(w, rule):
        assert float(e.sum()) == pytest.approx(float(w.pow(2).sum()), rel=1e-5)


def test_kd_loss_is_ce_at_equal_logits_so_kl_term_is_zero():
    logits = torch.randn(4, 7)
    y = torch.tensor([0, 1, 2, 3])
    ce = nn.CrossEntropyLoss()
    full = distillation_loss(logits, logits.clone(), y, temperature=3.0, alpha=0.5, ce=ce)
    assert float(full) == pytest.approx(0.5 * float(ce(logits, y)), abs=1e-6)
    kd_only = distillation_loss(logits, logits.clone(), y, temperature=3.0, alpha=1.0, ce=ce)
    assert abs(float(kd_only)) < 1e-6
    assert float(distillation_loss(logits, torch.randn(4, 7), y, temperature=3.0, alpha=1.0, ce=ce)) > 1e-3


def test_combine_progressive_keeps_the_earlier_zeros():
    """--combine-progressive through the driver's own functions: the starting checkpoint's masks are applied
    (progressive_masks) and the new hard prune is intersected with them (prune_to_profile)."""
    import argparse

    from opt_main import progressive_masks, prune_to_profile

    torch.manual_seed(6)
    model = build_model("c3d", 5, width_mult=0.25, clip_len=8, crop_size=32)
    first = hard_prune(model, {"conv2.weight": LayerRule("kgs", {"kgs": 0.5}, (8, 4))})
    with torch.no_grad():  # training moved every weight, the pruned ones too (as without masks)
        model.conv2.weight.add_(torch.randn_like(model.conv2.weight))
    args = argparse.Namespace(combine_progressive=True, load_path="start.pth")
    keep = progressive_masks(args, {"masks": first}, model)
    assert torch.equal(keep["conv2.weight"], first["conv2.weight"])
    assert torch.all(model.conv2.weight[~first["conv2.weight"]] == 0)  # applied to the weights at once
    masks = prune_to_profile(model, {"conv2.weight": LayerRule("kgs", {"kgs": 0.7}, (8, 4))}, keep)
    assert not torch.any(masks["conv2.weight"] & ~first["conv2.weight"])  # nothing pruned before comes back
    assert torch.all(model.conv2.weight[~masks["conv2.weight"]] == 0)
    assert masks["conv2.weight"].float().mean() < 0.31  # and the new, higher ratio holds (counts round half up)
    assert progressive_masks(argparse.Namespace(combine_progressive=False), {"masks": first}, model) == {}


def test_warmup_then_cosine():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, kind="cosine", lr=0.1, total_iters=100, warmup_iters=10, warmup_lr=1e-5)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[10] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))
    assert lrs[-1] < 1e-3


@pytest.mark.parametrize("kind", ["kgr", "kgc", "kgs", "blk-vanilla", "filter", "channel", "irregular"])
def test_unit_families_spread_back_onto_their_own_weights(kind):
    """Scaling unit u by v_u multiplies its energy by v_u^2 and nothing else: each family's `spread` is the exact
    inverse of its grouping (edge groups included: 20 filters, 6 input channels)."""
    from training.penalties import unit_families

    torch.manual_seed(5)
    w = torch.randn(20, 6, 3, 3, 3)
    rule = LayerRule(kind, {kind: 0.5}, (8, 4))
    (family,) = unit_families(w, rule)
    v = torch.rand(family.energy.shape) + 0.5
    (scaled,) = unit_families(w * family.spread(v), rule)
    torch.testing.assert_close(scaled.energy, family.energy * v ** 2)


def test_prox_step_soft_thresholds_each_kgr_row_by_hand():
    """shrink() against a loop over every (group, row): W_row *= max(0, 1 - lr * lambda * alpha / ||W_row||)."""
    torch.manual_seed(6)
    model = Tiny()
    with torch.no_grad():
        model.conv.weight[:8, :4] *= 0.01  # weak rows: thresholded to exactly zero
    rule = LayerRule("kgr", {"kgr": 0.5}, (8, 4))
    pen = ReweightedGroupLasso({"conv.weight": rule}, lam=0.05, eps=1e-3, units="all")
    pen.update_alpha(model)
    w0 = model.conv.weight.detach().clone()
    pen.shrink(model, lr=0.1)
    expected = w0.clone()
    alpha = pen.alpha["conv.weight"][0]
    k = 0
    for p in range(2):  # 16 filters / 8
        for q in range(1):  # 4 channels / 4
            for r in range(8):
                row = w0[p * 8 + r, q * 4:(q + 1) * 4]
                a = 1 / (row.pow(2).sum() + 1e-3)
                assert float(alpha[k]) == pytest.approx(float(a), rel=1e-5)
                expected[p * 8 + r, q * 4:(q + 1) * 4] = row * max(0.0, 1 - 0.1 * 0.05 * a / row.norm())
                k += 1
    torch.testing.assert_close(model.conv.weight.detach(), expected)
    assert not model.conv.weight[:8, :4].any() and model.conv.weight[8:].abs().sum() > 0


def test_rew_removed_units_penalises_exactly_what_the_projection_removes():
    """units='removed': the kept rows and columns (exact KGRC projection) are untouched, the others shrink; a
    strong enough step leaves exactly the projection."""
    torch.manual_seed(8)
    model = Tiny()
    rule = RULES["conv.weight"]
    pen = ReweightedGroupLasso(RULES, lam=1.0, eps=1e-3)
    pen.update_alpha(model)
    w0 = model.conv.weight.detach().clone()
    z, mask = project(w0, rule)
    pen.shrink(model, lr=1e-4)  # a small step: removed units shrink a little, kept ones not at all
    w1 = model.conv.weight.detach()
    assert torch.equal(w1[mask], w0[mask])
    assert torch.all(w1[~mask].abs() < w0[~mask].abs() + 1e-12) and not torch.equal(w1[~mask], w0[~mask])
    pen.shrink(model, lr=100.0)
    torch.testing.assert_close(model.conv.weight.detach(), z)


def test_rew_lambda_doubles_only_where_the_removed_share_is_above_target():
    from pruning.projections import removed_fraction

    torch.manual_seed(7)
    model = Tiny()
    rule = LayerRule("kgr", {"kgr": 0.5}, (8, 4))
    pen = ReweightedGroupLasso({"conv.weight": rule}, lam=1e-3, eps=1e-3, target=0.01)
    pen.update_alpha(model)  # the first refresh only sets alpha
    assert pen.lam["conv.weight"] == 1e-3
    pen.update_alpha(model)
    assert removed_fraction(model.conv.weight, rule) > 0.01 and pen.lam["conv.weight"] == 2e-3
    with torch.no_grad():
        model.conv.weight.copy_(project(model.conv.weight, rule)[0])
    pen.update_alpha(model)
    assert pen.lam["conv.weight"] == 2e-3


def test_each_clip_is_augmented_from_seed_epoch_and_index_alone():
    from torch.utils.data import Dataset

    from training.data import FailuresAsRecords

    class Draws(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            import random

            return torch.rand(3), random.random()

    items = FailuresAsRecords(Draws(), (7, 2))
    a = [items[i] for i in range(10)]
    b = [items[i] for i in reversed(range(10))][::-1]  # another order, as other workers would load them
    assert all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert not torch.equal(FailuresAsRecords(Draws(), (7, 3))[4][0], a[4][0])  # another epoch, other draws
    assert not torch.equal(a[3][0], a[4][0])
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    items[5]
    assert torch.equal(torch.rand(1), before)  # the caller's stream (dropout in the main process) is untouched
