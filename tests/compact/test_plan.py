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
