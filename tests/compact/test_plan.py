"""compact/plan.py: the work lists of a pruned conv and the order the kernel runs them in."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import compact
from compact.modules import SparseConv3d
from compact.plan import KernelPlan
from tests.compact.conftest import (
    SPATIAL,
    check_conv,
    make_conv,
    make_kgrc_conv,
)


def test_piece_schedule_partitions_every_task():
    """Pieces cover each task's pairs exactly once, stay inside their chunk, and run superblock by superblock."""
    from compact.plan import piece_schedule

    conv, mask = make_conv(40, 72, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgrc")
    plan = SparseConv3d(conv, mask).plan
    chan = plan.pair_c  # buffer channel = original channel here
    pcstart, ptask, rng, last = (t.numpy() for t in piece_schedule(plan, chan, seg_channels=8, sb_channels=16))
    assert len(pcstart) == len(plan.chunk_fstart) and pcstart[-1] == len(ptask)
    covered = np.zeros(len(plan.pair_c), int)
    for c in range(len(pcstart) - 1):
        tasks = range(plan.chunk_tstart[c], plan.chunk_tstart[c + 1])
        sbs = []
        for i in range(pcstart[c], pcstart[c + 1]):
            t, (b, e) = ptask[i], rng[i]
            assert t in tasks and plan.task_pstart[t] <= b < e <= plan.task_pstart[t + 1]
            assert chan[b] // 8 == chan[e - 1] // 8  # one 8-channel segment per piece
            covered[b:e] += 1
            sbs.append((chan[b] // 16, chan[b] // 8))
        assert sbs == sorted(sbs)  # superblock by superblock, segment by segment
        # each row of the chunk is completed (flagged) once, by the last piece that adds to it
        touched = [(i, plan.task_rows[ptask[i] * 8 + g]) for i in range(pcstart[c], pcstart[c + 1])
                   for g in range(plan.task_G[ptask[i]])]
        lasts = {r: i for i, r in touched}
        flagged = [(i, plan.task_rows[ptask[i] * 8 + g]) for i in range(pcstart[c], pcstart[c + 1])
                   for g in range(8) if last[i] >> g & 1]
        assert sorted(flagged) == sorted((i, r) for r, i in lasts.items())
    assert (covered == 1).all()
    assert plan.chunk_fstart[1] > 8  # several 8-filter sharing groups share one accumulator tile


@pytest.mark.parametrize("kind", ["kgrc", "kgr", "kgs", "irregular"])
@pytest.mark.parametrize("geom", [((3, 3, 3), (1, 1, 1), (1, 1, 1)), ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
                                  ((3, 1, 1), (1, 1, 1), (1, 0, 0))], ids=["333", "133s2", "311"])
def test_tiny_cache_budgets_split_work_into_many_pieces(monkeypatch, kind, geom):
    """With budgets of a few bytes every task is cut at every channel block and every superblock: still exact."""
    import compact.plan as plan_mod

    monkeypatch.setattr(plan_mod, "L1_BUDGET", 1)
    monkeypatch.setattr(plan_mod, "L2_BUDGET", 1)
    k, s, p = geom
    conv, mask = make_conv(40, 40, k, s, p, True, kind, seed=7)
    sc = check_conv(conv, mask, kind)
    _, ctx = sc.prepare(torch.randn(1, 40, *SPATIAL))
    order = ctx.plan.piece_task.tolist()
    # merged tasks (kgs, irregular) are cut; single-block tasks (kgr, kgrc) are interleaved across superblocks
    assert len(order) > len(sc.plan.task_G) or order != sorted(order)


def test_kernel_plan_fields_are_the_ones_plan_h_lists():
    """KernelPlan and csrc/plan.h's P3D_PLAN_ARRAYS / P3D_PLAN_SCALARS name the same fields with the same types: the
    two places a new plan field goes."""
    header = (Path(compact.__file__).parent / "csrc" / "plan.h").read_text()
    ctype = {"int32_t": torch.int32, "int64_t": torch.int64, "float": torch.float32}

    def listed(macro: str) -> dict[str, str]:
        body = []  # the macro's lines: up to the first that does not continue
        for line in header[header.index(f"#define {macro}(X)"):].splitlines():
            body.append(line)
            if not line.rstrip().endswith("\\"):
                break
        return dict(re.findall(r"X\((\w+), (\w+)\)", "\n".join(body)))

    arrays, scalars = listed("P3D_PLAN_ARRAYS"), listed("P3D_PLAN_SCALARS")
    assert set(KernelPlan._fields) == set(arrays) | set(scalars) and not set(arrays) & set(scalars)
    conv, mask = make_conv(16, 24, (1, 3, 3), (1, 2, 2), (0, 1, 1), True, "kgs")
    _, ctx = SparseConv3d(conv, mask).prepare(torch.randn(1, 16, *SPATIAL))
    for name, t in arrays.items():
        field = getattr(ctx.plan, name)
        assert isinstance(field, torch.Tensor) and field.dtype == ctype[t] and field.is_contiguous(), name
    ptype = {"int64_t": int, "float": float}
    assert all(isinstance(getattr(ctx.plan, name), ptype[t]) for name, t in scalars.items())


def test_output_spec_scalars_are_the_ones_plan_h_lists():
    """csrc/plan.h's P3D_OUTPUT_SCALARS reads OutputSpec's scalar fields, each once, with a type its default has;
    the fields it leaves out are the tensors ext.cpp reads and checks one by one."""
    from compact.layout import OutputSpec

    header = (Path(compact.__file__).parent / "csrc" / "plan.h").read_text()
    body = []
    for line in header[header.index("#define P3D_OUTPUT_SCALARS(X)"):].splitlines():
        body.append(line)
        if not line.rstrip().endswith("\\"):
            break
    listed = re.findall(r"X\((\w+), (\w+), (\w+)\)", "\n".join(body))
    fields = [f for _, f, _ in listed]
    assert len(fields) == len(set(fields)) and len({m for m, _, _ in listed}) == len(listed)
    assert set(fields) | {"valid", "runs", "pack_into"} == set(OutputSpec._fields)
    pytype = {"int64_t": int, "int": int, "int32_t": int, "bool": bool, "float": float}
    spec = OutputSpec(sample_stride=1, chan_stride=1)
    assert all(isinstance(getattr(spec, f), pytype[t]) for _, f, t in listed)


@pytest.mark.parametrize("kind", ["kgrc", "kgr", "kgc"])
def test_dropped_filters_never_cost_extra_macs(kind):
    """KGRC-type masks on a (3,1,1) conv with edge groups (20 channels, 36 filters) that drop whole filters: packing
    the kept filters across kernel groups used to take union pair lists, computing more multiply-adds than kept
    (seeds 174, 334, 352, 394, 488, 491, 765 of 1000 under kgrc). Every seed here computes exactly the kept ones."""
    from compact.plan import build_plan

    seeds = [174, 334, 352, 394, 488, 491, 765] + list(range(40))
    for seed in seeds:
        conv, mask = make_conv(20, 36, (3, 1, 1), (1, 1, 1), (1, 0, 0), True, kind, seed=seed)
        assert build_plan(conv.weight, mask).computed_macs_per_position == int(mask.sum()), seed
    conv, mask = make_conv(20, 36, (3, 1, 1), (1, 1, 1), (1, 0, 0), True, "kgrc", seed=174)
    assert (~mask.flatten(1).any(1)).sum() == 3  # the case: three filters dropped
    check_conv(conv, mask, "kgrc")


@pytest.mark.parametrize("gm", [16, 32])
@pytest.mark.parametrize("kernel,padding", [((3, 3, 3), 1), ((1, 3, 3), (0, 1, 1))], ids=["333", "133"])
def test_wide_kernel_groups_give_full_tasks(gm, kernel, padding):
    """KGRC groups of 16 or 32 filters keep 8 or 16 per channel block: the plan takes chunks of the group's size,
    so every task has 8 rows (32: two tasks reading the same pairs back to back, AMX's twins), instead of the ~4
    that 8-filter chunks cut them into; exact, and exactly the kept work."""
    from compact.plan import build_plan

    conv, mask = make_kgrc_conv(24, 64, kernel, padding, (gm, 8))
    sc = check_conv(conv, mask, "kgrc")
    plan = sc.plan
    assert set(plan.task_G.tolist()) == {8}
    pairs = [tuple(plan.pair_c[b:e] * 100 + plan.pair_tap[b:e]) for b, e in zip(plan.task_pstart[:-1],
                                                                              plan.task_pstart[1:])]
    if gm == 32:
        assert all(pairs[i] == pairs[i + 1] for i in range(0, len(pairs), 2))
    narrow = build_plan(conv.weight, mask, chunk=8)
    assert narrow.computed_macs_per_position == plan.computed_macs_per_position == int(mask.sum())
    assert len(narrow.task_G) > len(plan.task_G)


@pytest.mark.parametrize("kind", ["kgrc", "kgs", "irregular", "dense"])
def test_eight_filter_groups_plan_as_before(kind):
    """Kernel groups of 8 filters whose groups keep different pairs, and dense or unstructured weights: the plan is
    the one of 8-filter chunks, task for task."""
    from compact.plan import build_plan

    if kind == "dense":
        torch.manual_seed(0)
        conv, mask = torch.nn.Conv3d(24, 40, 3, padding=1), None
    else:
        conv, mask = make_conv(24, 40, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, kind)
    auto, eight = build_plan(conv.weight, mask), build_plan(conv.weight, mask, chunk=8)
    for field in ("chunk_fstart", "chunk_filters", "chunk_tstart", "task_G", "task_rows", "task_pstart", "pair_c",
                  "pair_tap", "weights"):
        assert np.array_equal(getattr(auto, field), getattr(eight, field)), field


def test_kgr_rows_of_neighbouring_groups_share_a_task():
    """KGR keeps whole kernels of a channel block, so the kept rows of two 8-filter groups read the same pairs:
    16-filter chunks join them into one task (3 + 3 rows here, for 3 of 8 per group), exact, same work."""
    from compact.plan import build_plan

    conv, mask = make_conv(24, 48, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgr")
    plan = check_conv(conv, mask, "kgr").plan
    eight = build_plan(conv.weight, mask, chunk=8)
    assert set(eight.task_G.tolist()) == {3} and set(plan.task_G.tolist()) == {6}
    assert plan.computed_macs_per_position == eight.computed_macs_per_position
