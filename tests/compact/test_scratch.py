"""compact/scratch.py: buffers reused best-fit, padded layouts keep their zeros, outputs never alias them."""

from __future__ import annotations

import pytest
import torch

from compact.convert import compile_sparse
from models import build_model
from pruning import hard_prune
from pruning.profile import load_profile
from tests.compact.conftest import (
    TOL,
    rel_err,
    small_c3d,
)


def test_scratch_pool_reuses_best_fit_and_keeps_only_the_largest():
    from compact.scratch import ScratchPool

    pool = ScratchPool(max_buffers=2, budget=1 << 40)  # no byte budget here
    like = torch.zeros(1)
    a, b = pool.take(1000, like), pool.take(5000, like)
    pa, pb = a.data_ptr(), b.data_ptr()
    pool.give(a)
    pool.give(b)
    assert pool.take(900, like).data_ptr() == pa  # best fit: the 1000, not the 5000
    assert pool.take(3000, like).data_ptr() == pb
    assert pool.take(6000, like, zero=True).abs().sum() == 0  # nothing fits: a new one
    c = pool.take(10, like)
    pool.give(c)
    pool.give(pool.take(7000, like))
    pool.give(pool.take(8000, like))
    assert sorted(t.numel() for t in pool._free) == [7000 * 4 + 32, 8000 * 4]  # bytes, rounded up to 64


def test_scratch_pool_padded_buffers_keep_their_zero_padding_per_layout():
    from compact.layout import flat_layout
    from compact.scratch import ScratchPool

    pool = ScratchPool(max_buffers=4, budget=1 << 40)
    like = torch.zeros(1)
    dims, pad = (3, 4, 5), (1, 1, 1)
    grid, s = flat_layout(dims, pad)

    def padding_sum(buf, data):
        data.fill_(0)
        return float(buf.abs().sum())

    buf, data = pool.take_padded(2, 3, grid, s, pad, dims, like, 7)
    assert buf.numel() == 2 * 3 * s + 7 and data.shape == (2, 3, *dims)
    assert padding_sum(buf, data) == 0  # a fresh buffer: zeroed everywhere but the data
    data.fill_(1.0)
    assert float(buf.sum()) == data.numel()
    buf[0] = 5.0  # (a padding position) breaks the holder's contract on purpose, to see whether the next take
    buf[-1] = 6.0  # zeroes again; the slack after the planes is zeroed on every take
    ptr = buf.data_ptr()
    pool.give(buf)
    again, data2 = pool.take_padded(2, 3, grid, s, pad, dims, like, 7)
    assert again.data_ptr() == ptr and float(again[0]) == 5.0 and float(again[-1]) == 0  # reused as it was
    again[0] = 0.0
    pool.give(again)
    fewer, _ = pool.take_padded(1, 2, grid, s, pad, dims, like, 7)  # same geometry, fewer planes: the same buffer
    assert fewer.data_ptr() == ptr and float(fewer[2 * s:2 * s + 7].abs().sum()) == 0  # its slack zeroed
    pool.give(fewer)
    again, _ = pool.take_padded(2, 3, grid, s, pad, dims, like, 7)
    assert again.data_ptr() == ptr
    pool.give(again)
    other_dims = (3, 5, 4)  # another layout that would fit: it gets a buffer of its own, zeroed for it
    g2, s2 = flat_layout(other_dims, pad)
    b2, d2 = pool.take_padded(2, 3, g2, s2, pad, other_dims, like, 7)
    assert b2.data_ptr() != ptr and padding_sum(b2, d2) == 0
    plain = pool.take(2 * 3 * s2 + 7, like)  # a plain take leaves a kept layout alone while it can
    assert plain.data_ptr() not in (ptr, b2.data_ptr())
    pool.give(b2)
    pool.give(plain)
    b3, d3 = pool.take_padded(2, 3, g2, s2, pad, other_dims, like, 7)
    assert b3.data_ptr() == b2.data_ptr()
    pool.give(b3)
    pool.give(again)
    pool.max_buffers = 1  # only the largest kept: the other layouts' buffers are dropped
    pool.give(pool.take(10, like))
    assert [b.data_ptr() for b in pool._free] == [ptr]
    assert pool.take(2 * 3 * s + 7, like).data_ptr() != ptr  # the only fit keeps a layout: not for a plain take


@pytest.mark.parametrize("arch", ["c3d", "r2+1d"])
def test_outputs_never_alias_scratch_buffers(arch):
    """A second call reuses the scratch buffers: the first call's output must be untouched by it."""
    torch.manual_seed(0)
    if arch == "c3d":
        model, masks, rules = small_c3d("c3d_kgrc_3.04x")
        shape = (2, 3, 8, 32, 32)
    else:
        model = build_model(arch, 10).eval()
        rules = load_profile("r2+1d_kgrc_3.05x").resolve(model)
        masks = hard_prune(model, rules)
        shape = (1, 3, 4, 24, 24)
    cm = compile_sparse(model, masks, rules=rules)
    x1, x2 = torch.randn(shape), torch.randn(shape)
    with torch.no_grad():
        y1 = cm(x1)
        feats = cm.features(x1) if arch == "c3d" else None
        keep, keep_f = y1.clone(), feats.clone() if feats is not None else None
        cm(x2)
        cm(x2)
        assert torch.equal(y1, keep)
        if feats is not None:
            assert torch.equal(feats, keep_f)
        assert rel_err(cm(x1), model(x1)) < TOL


@pytest.mark.parametrize("arch,profile,clip", [("c3d", "c3d_kgrc_3.04x", (8, 32, 32)),
                                               ("r2+1d", "r2+1d_kgrc_3.05x", (4, 24, 24)),
                                               ("s3d", "s3d_kgs_1.84x", (8, 32, 32))])
@pytest.mark.parametrize("first", ["inference_mode", "no_grad"])
def test_every_autograd_mode_in_any_order(arch, profile, clip, first):
    """Scratch buffers made under torch.inference_mode() were inference tensors, and a later call outside it
    refused to write into them (RuntimeError): the model now runs under inference_mode, no_grad and grad mode in
    either order, always equal to the masked dense model."""
    from tests.compact.conftest import randomize_bn_stats

    torch.manual_seed(0)
    if arch == "c3d":
        model, masks, rules = small_c3d(profile)
    else:
        model = build_model(arch, 10).eval()
        randomize_bn_stats(model)
        rules = load_profile(profile).resolve(model)
        masks = hard_prune(model, rules)
    cm = compile_sparse(model, masks, rules=rules)
    x = torch.randn(2, 3, *clip)
    with torch.no_grad():
        ref = model(x)
    modes = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": torch.enable_grad}
    order = [first, "no_grad" if first == "inference_mode" else "inference_mode", "grad", first]
    for mode in order:
        with modes[mode]():
            assert rel_err(cm(x).detach(), ref) < TOL, mode


def test_scratch_pool_stays_within_its_byte_budget():
    """Over the budget a layout takes another layout's buffer (its padding zeroed again) instead of a new one, free
    buffers are dropped until the pool owns at most the budget, and a buffer a caller never gives back leaves the
    count when it is freed."""
    import gc

    from compact.layout import flat_layout
    from compact.scratch import ScratchPool

    like = torch.zeros(1)
    pad = (1, 1, 1)
    layouts = [(d, *flat_layout(d, pad)) for d in ((3, 4, 5), (3, 5, 4), (4, 4, 4), (2, 6, 5))]
    sizes = [2 * 3 * s + 7 for _, _, s in layouts]
    budget = 2 * max(sizes) * 4  # two of the largest
    pool = ScratchPool(budget=budget)
    made = []
    for _ in range(3):
        for dims, grid, s in layouts:
            buf, data = pool.take_padded(2, 3, grid, s, pad, dims, like, 7)
            data.fill_(0)
            assert float(buf.abs().sum()) == 0  # whoever held it before, its padding is zero for this layout
            data.fill_(7.0)
            pool.give(buf)
            assert pool._owned <= budget
        made.append(pool.allocations)
    assert made[0] < len(layouts) and made[0] == made[-1]  # layouts share the budget's buffers, none made later
    unbounded = ScratchPool(budget=1 << 40)
    for dims, grid, s in layouts:
        unbounded.give(unbounded.take_padded(2, 3, grid, s, pad, dims, like, 7)[0])
    assert unbounded.allocations == len(layouts) and unbounded._owned == sum(-(-4 * n // 64) * 64 for n in sizes)

    lost = pool.take(10 * max(sizes), like)  # nothing fits: served over the budget, then never given back
    assert pool._owned > budget and pool.peak == pool._owned
    del lost
    gc.collect()
    assert pool._owned <= budget and pool._lending == 0


def test_default_budget_is_twice_the_largest_request_or_what_is_lent_at_once():
    from compact.scratch import ScratchPool

    like = torch.zeros(1)
    pool = ScratchPool()
    a = pool.take(1024, like)
    assert pool.limit == 2 * 4096
    b, c = pool.take(1024, like), pool.take(1024, like)  # three lent at once: no reuse can avoid 12288 bytes
    assert pool.limit == 3 * 4096
    for t in (a, b, c):
        pool.give(t)
    assert pool._owned == 12288 and pool.allocations == 3
    del a, b, c, t  # the caller's views keep the buffers alive
    pool.clear()
    assert pool._owned == 0 and pool.limit == 0


@pytest.mark.parametrize("arch", ["c3d", "r2+1d"])
def test_models_reach_a_steady_state_within_the_default_budget(arch):
    """With the default budget the compact model makes no new buffer after its first calls, owns at most the
    budget, gives the masked dense model's output, and owns less than without a budget (R(2+1)D: a layout per
    conv)."""
    from compact import scratch
    from compact.scratch import ScratchPool

    torch.manual_seed(0)
    if arch == "c3d":
        model, masks, rules = small_c3d("c3d_kgrc_3.04x")
        x = torch.randn(2, 3, 8, 32, 32)
    else:
        model = build_model(arch, 10).eval()
        rules = load_profile("r2+1d_kgrc_3.05x").resolve(model)
        masks = hard_prune(model, rules)
        x = torch.randn(1, 3, 4, 24, 24)
    owned = {}
    cm = compile_sparse(model, masks, rules=rules)
    default = scratch.SCRATCH
    for budget in (None, 1 << 40):
        with scratch.using(ScratchPool(budget=budget)) as pool, torch.no_grad():
            ref = model(x)
            for _ in range(3):
                assert rel_err(cm(x), ref) < TOL
            made = pool.allocations
            cm(x)
        assert pool.allocations == made, budget  # steady state: every buffer reused
        assert pool._owned <= pool.limit
        owned[budget] = pool._owned
    assert scratch.SCRATCH is default
    if arch == "r2+1d":
        assert owned[None] < owned[1 << 40]


def test_layouts_of_one_geometry_share_a_buffer_and_every_plane_keeps_its_zero_padding():
    """A buffer first taken for fewer planes (made larger by best fit), then for more: the planes the first holder
    never saw have zero padding too, and data written by either holder never lands in padding."""
    from compact.layout import flat_layout
    from compact.scratch import ScratchPool

    pool = ScratchPool(budget=1 << 40)
    like = torch.zeros(1)
    dims, pad = (3, 4, 5), (1, 1, 1)
    grid, s = flat_layout(dims, pad)
    pool.give(pool.take(4 * 5 * s + 7, like).fill_(3.0))  # a used plain buffer, big enough for both requests
    small, data = pool.take_padded(1, 2, grid, s, pad, dims, like, 7)
    data.fill_(1.0)
    assert float(small.sum()) == data.numel()
    pool.give(small)
    big, data = pool.take_padded(4, 5, grid, s, pad, dims, like, 7)
    assert big.data_ptr() == small.data_ptr()
    data.fill_(0.0)
    assert float(big.abs().sum()) == 0  # every plane's padding and the slack are zero
