"""ADMM on a problem whose constrained optimum is known: a least-squares conv layer.

The target is produced by a weight in the KGRC sparse set plus a little noise, so the unconstrained optimum lies
near the set and the constrained optimum is the least-squares fit restricted to that set's support (solved here
in closed form, one filter at a time). ADMM with residual balancing must find that support and that optimum from
a random start; a fixed small rho, with the same steps, must not (otherwise the test could not tell them apart).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from admm import ADMM
from pruning import LayerRule, project

RULE = LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, (8, 4))
NAME = "weight"


class Layer(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone())


def least_squares_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cout, cin = 16, 8
    w_true, _ = project(torch.randn(cout, cin, 3, 3, 3, generator=g), RULE)
    w_true = w_true + 0.1 * torch.randn(w_true.shape, generator=g)  # near, not in, the set
    x = torch.randn(6, cin, 4, 6, 6, generator=g)
    # 3D im2col: every (n, t, h, w) output position as a row of the cin*27 inputs it reads
    xp = F.pad(x, (1, 1, 1, 1, 1, 1))
    patches = xp.unfold(2, 3, 1).unfold(3, 3, 1).unfold(4, 3, 1)  # n, cin, t, h, w, 3, 3, 3
    A = patches.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, cin * 27)
    y = A @ w_true.reshape(cout, -1).T  # positions x cout
    return A, y, w_true


def loss(layer: Layer, A: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A @ layer.weight.reshape(layer.weight.shape[0], -1).T - y).pow(2).mean()


def constrained_optimum(A: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Least squares over each filter's kept inputs only."""
    m = mask.reshape(mask.shape[0], -1)
    out = torch.zeros(m.shape, dtype=torch.float64)
    for o in range(m.shape[0]):
        keep = m[o].nonzero().flatten()
        if len(keep):
            sol = torch.linalg.lstsq(A[:, keep].double(), y[:, o:o + 1].double()).solution
            out[o, keep] = sol.flatten()
    return out.reshape(mask.shape).float()


def run_admm(schedule: str, steps: int = 1500, every: int = 20, seed: int = 0):
    A, y, w_true = least_squares_problem(seed)
    torch.manual_seed(seed + 1)
    layer = Layer(0.3 * torch.randn_like(w_true))
    solver = ADMM({NAME: RULE}, rho=1e-4, rho_num=1, schedule=schedule)
    solver.initialize(layer)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-5)  # Adam's noise floor shrinks
    for step in range(steps):
        opt.zero_grad()
        (loss(layer, A, y) + solver.penalty(layer)).backward()
        opt.step()
        sched.step()
        if (step + 1) % every == 0:
            solver.update(layer)
    return layer, solver, A, y, w_true


@pytest.mark.parametrize("schedule", ["residual", "balance"])
def test_adaptive_rho_reaches_the_exact_sparse_optimum(schedule):
    layer, solver, A, y, w_true = run_admm(schedule)
    res = solver.residuals(layer)[NAME]["residual"]
    assert res <= 0.05, res
    assert solver.rho[NAME] > 1e-4 * 2 ** 5  # rho was raised by the schedule
    _, mask = project(layer.weight.detach(), RULE)
    _, true_mask = project(w_true, RULE)
    assert torch.equal(mask, true_mask)  # the optimum's support
    opt = constrained_optimum(A, y, true_mask)
    pruned = layer.weight.detach() * mask
    assert (pruned - opt).norm() / opt.norm() < 0.01
    assert loss(Layer(pruned), A, y) < 1.005 * loss(Layer(opt), A, y)
    # better than the one-shot answer: projecting the unconstrained least-squares optimum
    naive = project(constrained_optimum(A, y, torch.ones_like(mask)), RULE)[0]
    assert loss(Layer(pruned), A, y) < 0.98 * loss(Layer(naive), A, y)


def test_fixed_small_rho_stays_far_from_the_set():
    layer, solver, *_ = run_admm("stages")
    assert solver.rho[NAME] == 1e-4
    assert solver.residuals(layer)[NAME]["residual"] > 0.2


def test_rho_change_rescales_u_so_rho_u_is_unchanged():
    torch.manual_seed(0)
    layer = Layer(torch.randn(16, 8, 3, 3, 3))
    solver = ADMM({NAME: RULE}, rho=1e-3, schedule="balance", mu=10.0, tau=2.0)
    solver.initialize(layer)
    u0 = torch.randn_like(layer.weight) * 0.1
    solver.U[NAME] = u0.clone()
    with torch.no_grad():  # W barely moves: the dual residual is small, the primal one large -> rho up
        layer.weight.add_(1e-4)
    w = layer.weight.detach()
    z = project(w + u0, RULE)[0]
    u_step = u0 + w - z
    solver.update(layer)
    assert solver.rho[NAME] == 2e-3
    torch.testing.assert_close(solver.Z[NAME], z)
    torch.testing.assert_close(solver.rho[NAME] * solver.U[NAME], 1e-3 * u_step)
    # and the other way: Z jumps while W sits on it -> the dual residual dominates -> rho down, rho*U kept
    solver2 = ADMM({NAME: RULE}, rho=1.0, schedule="balance")
    solver2.initialize(layer)
    solver2.Z[NAME] = torch.randn_like(w) * 10
    solver2.U[NAME] = torch.zeros_like(w)
    with torch.no_grad():
        layer.weight.copy_(project(layer.weight, RULE)[0])  # W in the set: primal residual 0 after the step
    solver2.update(layer)
    assert solver2.rho[NAME] == 0.5
    assert not solver2.U[NAME].any()


def test_residual_schedule_doubles_rho_only_while_the_residual_shrinks_too_slowly():
    torch.manual_seed(1)
    layer = Layer(torch.randn(16, 8, 3, 3, 3))
    solver = ADMM({NAME: RULE}, rho=1.0, schedule="residual", gamma=0.5, rho_max=3.0)
    solver.initialize(layer)
    solver.update(layer)  # the first step only records r
    assert solver.rho[NAME] == 1.0
    u = solver.U[NAME].clone()
    solver.update(layer)  # W unchanged: r did not halve -> rho x2, U / 2 (rho * U kept)
    assert solver.rho[NAME] == 2.0
    torch.testing.assert_close(solver.rho[NAME] * solver.U[NAME], 1.0 * (u + layer.weight.detach() - solver.Z[NAME]))
    with torch.no_grad():  # W lands in the set with U = 0: r drops to 0 -> rho kept
        layer.weight.copy_(solver.Z[NAME])
    solver.U[NAME].zero_()
    solver.update(layer)
    assert solver.primal[NAME] == 0 and solver.rho[NAME] == 2.0
    with torch.no_grad():  # and leaves it again: r grows -> rho x2, bounded by rho_max
        layer.weight.add_(torch.randn_like(layer.weight))
    solver.update(layer)
    assert solver.rho[NAME] == 3.0


def test_stages_schedule_is_the_published_one():
    layer = Layer(torch.randn(16, 8, 3, 3, 3))
    solver = ADMM({NAME: RULE}, rho=1e-4, rho_num=4, schedule="stages")
    solver.initialize(layer)
    solver.U[NAME] = torch.ones_like(layer.weight)
    solver.set_stage(3)
    assert solver.rho[NAME] == 1e-4 * 10 ** 3
    torch.testing.assert_close(solver.U[NAME], torch.full_like(layer.weight, 1e-3))
    solver.update(layer)  # no balancing in this schedule
    assert solver.rho[NAME] == 1e-4 * 10 ** 3


def test_state_round_trip_keeps_per_layer_rho_and_reads_old_checkpoints():
    layer = Layer(torch.randn(16, 8, 3, 3, 3))
    solver = ADMM({NAME: RULE}, rho=1e-3)
    solver.initialize(layer)
    solver._set_rho(NAME, 0.25)
    other = ADMM({NAME: RULE}, rho=1e-3)
    other.load_state_dict(solver.state_dict())
    assert other.rho == {NAME: 0.25} and other.schedule == "residual"
    old = {k: v for k, v in solver.state_dict().items() if k in ("Z", "U", "rho0", "stage", "rho_num")}
    old["rho"] = 0.1  # one float before rho was per layer
    other.load_state_dict(old)
    assert other.rho == {NAME: 0.1} and other.schedule == "stages"


def test_cadence_and_rt3d_cycle():
    from admm import Cadence, rho_bound, rt3d_lr_cycle

    per_epoch = Cadence(every_epochs=2, stage_epochs=3)
    assert [per_epoch.z_u_after_epoch(e) for e in range(4)] == [False, True, False, True]
    assert not per_epoch.z_u_after_iteration(10)
    assert [per_epoch.stage(e, 2) for e in (0, 2, 3, 5, 9)] == [0, 0, 1, 1, 1]
    per_iter = Cadence(every_iters=5)
    assert [per_iter.z_u_after_iteration(i) for i in (4, 5, 10)] == [False, True, True]
    assert not per_iter.z_u_after_epoch(0)  # iterations, not epochs, when both could apply
    cycle = rt3d_lr_cycle(9)
    assert [cycle(i) for i in range(10)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 1]
    assert rho_bound("sgd", 1e-3, 0.9) == 100.0 and rho_bound("adam", 1e-3, 0.9) == 1e4
