"""Compact sparse engine: equal to the masked dense model for every sparsity type and every conv shape of C3D,
R(2+1)D-18 and S3D; the pure-PyTorch fallback equals the compiled kernels; pruned work is really skipped."""

from __future__ import annotations

import time
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compact
from compact import _ext
from compact.c3d_engine import CompactC3D
from compact.chain import SparseConvPair
from compact.convert import compile_sparse
from compact.modules import AutoConv3d, ChannelsLastMaxPool3d, SparseConv3d
from compact.residual import SparseResidualStage, can_fuse_stage
from models import build_model
from pruning import LayerRule, hard_prune, project
from pruning.profile import load_profile

TYPES = ("irregular", "filter", "channel", "blk-vanilla", "kgs", "kgr", "kgc", "kgrc")
TOL = 1e-5
SPATIAL = (8, 16, 16)


def rule_for(kind: str) -> LayerRule:
    if kind == "kgrc":
        return LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}, (8, 8))
    gs = (8, 4) if kind in ("kgs", "blk-vanilla") else (8, 8)
    return LayerRule(kind, {kind: 0.6}, gs)


def conv_shapes() -> list[tuple]:
    seen: dict[tuple, str] = {}
    for arch in ("c3d", "r2+1d", "s3d"):
        model = build_model(arch, 10)
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv3d):
                key = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.bias is not None)
                seen.setdefault(key, f"{arch}:{name}")
    return [(*k, v) for k, v in seen.items()]


SHAPES = conv_shapes()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def make_conv(cin, cout, k, s, p, bias, kind, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv3d(cin, cout, k, s, p, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_()
        w, mask = project(conv.weight, rule_for(kind))
        conv.weight.copy_(w)
    return conv, mask


def check_conv(conv, mask, kind, batches=(1, 3)):
    sc = SparseConv3d(conv, mask)
    w = conv.weight * mask
    for n in batches:
        x = torch.randn(n, conv.in_channels, *SPATIAL)
        ref = F.conv3d(x, w, conv.bias, conv.stride, conv.padding)
        with torch.no_grad():
            y = sc(x)
        assert y.shape == ref.shape
        assert rel_err(y, ref) < TOL, (kind, n)
    # pruned work is skipped: the kernel runs exactly the kept weights for structured types
    if kind != "irregular":
        assert sc.plan.computed_macs_per_position == int(mask.sum())
    assert len(sc.kept_filters) == int(mask.flatten(1).any(1).sum())
    assert len(sc.kept_channels) == int(mask.transpose(0, 1).flatten(1).any(1).sum())
    return sc


def test_kernels_built():
    assert compact.kernels_available(), "the C++ kernels did not build (g++ and ninja are needed)"
    assert compact.kernel_isa() in ("avx512", "avx2", "generic")


@pytest.mark.parametrize("i", range(len(SHAPES)), ids=[s[-1] for s in SHAPES])
def test_every_model_conv_shape(i):
    cin, cout, k, s, p, bias, _ = SHAPES[i]
    kind = TYPES[i % len(TYPES)]
    conv, mask = make_conv(cin, cout, k, s, p, bias, kind, seed=i)
    check_conv(conv, mask, kind)


GEOMETRIES = sorted({(s[2], s[3], s[4]) for s in SHAPES})


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("geom", GEOMETRIES, ids=[str(g) for g in GEOMETRIES])
def test_every_type_every_geometry(kind, geom):
    k, s, p = geom
    cin = 3 if k[1] == 7 else 20  # 20 channels: edge groups of 4 (kgs) and 8 (kgr/kgc/kgrc)
    # a seed stable across runs (hash() of a tuple of str changes with PYTHONHASHSEED)
    conv, mask = make_conv(cin, 36, k, s, p, True, kind, seed=zlib.crc32(repr((kind, geom)).encode()) % 1000)
    sc = check_conv(conv, mask, kind)
    x = torch.randn(2, cin, *SPATIAL)
    with torch.no_grad():
        assert rel_err(sc(x), sc.forward_torch(x)) < TOL  # fallback path equals compiled path


def test_dropped_filters_and_channels():
    conv, _ = make_conv(16, 24, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgc")
    mask = torch.ones_like(conv.weight, dtype=torch.bool)
    mask[3:9] = False
    mask[:, 5:7] = False
    with torch.no_grad():
        conv.weight.mul_(mask)
    sc = check_conv(conv, mask, "filter")
    assert len(sc.kept_filters) == 18 and len(sc.kept_channels) == 14
    assert sc.weight_compact.shape == (18, 14, 3, 3, 3)


def test_wrong_weights_are_detected():
    """The check itself must catch a kernel that ignores a kept weight."""
    conv, mask = make_conv(16, 24, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgs")
    sc = SparseConv3d(conv, mask)
    sc.plan.weights[0] += 1.0
    x = torch.randn(1, 16, *SPATIAL)
    assert rel_err(sc(x), F.conv3d(x, conv.weight * mask, conv.bias, 1, 1)) > TOL


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


@pytest.mark.parametrize("case", [((4, 7, 9), (4, 5, 7), None, (0, 0, 0)), ((3, 30, 30), (3, 28, 28), None, (0, 0, 0)),
                                  ((2, 9, 9), (2, 8, 8), (4, 9, 9), (1, 0, 0)),
                                  ((5, 17, 65), (5, 16, 64), (5, 17, 65), (0, 1, 1))])
def test_output_runs_write_what_the_scatter_index_says(case):
    """Brute force: expanding the runs gives back the per-position index, and no run crosses a tile."""
    from compact.layout import output_runs, scatter_index
    from compact.plan import TILE

    grid, outd, dest_grid, offset = case
    q = (outd[0] - 1) * grid[1] * grid[2] + (outd[1] - 1) * grid[2] + outd[2]
    oidx = scatter_index(q, grid, outd, dest_grid, offset).numpy()
    runs, tile_runs = (t.numpy() for t in output_runs(torch.from_numpy(oidx)))
    expanded = np.full(q, -1)
    for tile in range(len(tile_runs) - 1):
        for p0, n, d in runs[tile_runs[tile]:tile_runs[tile + 1]]:
            assert n > 0 and tile * TILE <= p0 and p0 + n <= (tile + 1) * TILE
            assert (expanded[p0:p0 + n] == -1).all()
            expanded[p0:p0 + n] = np.arange(d, d + n)
    assert tile_runs[-1] == len(runs) and (expanded == oidx).all()


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


def small_c3d(profile: str):
    torch.manual_seed(0)
    model = build_model("c3d", 10, width_mult=0.25, clip_len=8, crop_size=32).eval()
    rules = load_profile(profile).resolve(model)
    masks = hard_prune(model, rules)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                m.bias.normal_(0, 0.05)
    return model, masks, rules


@pytest.mark.parametrize("profile", ["c3d_kgrc_3.04x", "c3d_kgs_3.57x"])
def test_whole_c3d(profile):
    model, masks, rules = small_c3d(profile)
    cm = compile_sparse(model, masks, rules=rules)
    assert isinstance(cm, CompactC3D)
    unfused = compile_sparse(model, masks, rules=rules, fuse=False)
    for n in (1, 3):
        x = torch.randn(n, 3, 8, 32, 32)
        with torch.no_grad():
            ref_f, ref = model.features(x), model(x)
            assert rel_err(cm.features(x), ref_f) < TOL
            assert rel_err(cm(x), ref) < TOL
            assert rel_err(cm._torch_features(x), ref_f) < TOL
            assert rel_err(unfused(x), ref) < TOL
            for mode in ("kernel", "contiguous", "channels_last", "onednn"):  # every path an unpruned conv may take
                cm.dense_mode = mode
                assert rel_err(cm(x), ref) < TOL, mode
            cm.dense_mode = None


def test_fallback_without_compiler(monkeypatch, caplog):
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    x = torch.randn(2, 3, 8, 32, 32)
    cm = compile_sparse(model, masks, rules=rules)
    with torch.no_grad():
        compiled = cm(x)
        monkeypatch.setattr(_ext, "_state", {})
        monkeypatch.setenv("PRUNE3D_NO_KERNELS", "1")
        assert not compact.kernels_available()
        fallback = cm(x)
    assert rel_err(fallback, compiled) < TOL
    assert rel_err(fallback, model(x)) < TOL


def test_fastest_mode_times_interleaved_and_skips_each_first_call():
    from compact.dense_paths import fastest_mode

    calls: list[str] = []

    def run(m):
        first = m not in calls
        calls.append(m)
        time.sleep({"a": (0.0, 0.004), "b": (0.03, 0.001)}[m][0 if first else 1])

    assert fastest_mode(run, ["a", "b"], rounds=3) == "b"  # b's slow first call (a warm-up) does not count
    assert calls == ["a", "b"] * 3


def test_dense_paths_one_vocabulary():
    """Every dense path computes conv(x); the engine's old names still read (saved models), unknown ones refused."""
    from compact.dense_paths import DENSE_PATHS, DenseConv, canonical_path, run_dense

    conv = nn.Conv3d(4, 6, 3, padding=1).eval()
    x = torch.randn(2, 4, 3, 5, 5)
    with torch.no_grad():
        ref = conv(x)
        for path in DENSE_PATHS:
            assert rel_err(run_dense(conv, x, path), ref) < TOL, path
            assert rel_err(DenseConv(conv, path)(x), ref) < TOL, path
    assert canonical_path("torch") == "contiguous" and canonical_path("torch_cl") == "channels_last"
    with pytest.raises(ValueError, match="unknown conv path"):
        run_dense(conv, x, "cuda")


@pytest.mark.parametrize("threads", [1, 3, 7])
def test_any_thread_count_runs_every_unit_once(threads):
    """The kernel splits its (sample, tile, chunk) units into contiguous ranges of equal estimated work, one per
    thread: with a short last tile, chunks of unequal work and more threads than units, every unit must still run
    exactly once (a unit run twice would add its residual twice; one skipped would leave its outputs unwritten)."""
    ext = _ext.load_kernels()
    if ext is None:
        pytest.skip("no kernels")
    conv, mask = make_conv(20, 80, (3, 1, 1), (1, 1, 1), (1, 0, 0), True, "kgrc")  # 2 chunks: 64 + 16 filters
    mask[64:, :10] = False  # the second chunk with less work
    with torch.no_grad():
        conv.weight.mul_(mask)
    sc = SparseConv3d(conv, mask)
    res = torch.randn(2, 80, 3, 10, 11)  # 330 positions per sample: a full tile and a short one
    x = torch.randn(2, 20, 3, 10, 11)
    ref = F.conv3d(x, conv.weight, conv.bias, 1, (1, 0, 0)) + res
    try:
        ext.set_num_threads(threads)
        buf, ctx = sc.prepare(x)
        out = res.clone()
        sc.write(ext, buf, ctx, out, ctx.outd, accumulate=True)
        assert rel_err(out, ref) < TOL
        assert rel_err(sc(x), ref - res) < TOL
    finally:
        ext.set_num_threads(torch.get_num_threads())


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_other_isas(isa):
    ext = _ext.load_kernels()
    if ext is None:
        pytest.skip("no kernels")
    order = ["generic", "avx2", "avx512"]
    best = ext.isa()
    if order.index(isa) > order.index(best):
        pytest.skip(f"CPU lacks {isa}")
    conv, mask = make_conv(20, 36, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgrc")
    try:
        ext.set_isa(isa)
        check_conv(conv, mask, "kgrc")
        conv, mask = make_conv(20, 36, (1, 3, 3), (1, 2, 2), (0, 1, 1), True, "kgs")
        check_conv(conv, mask, "kgs")
    finally:
        ext.set_isa(best)


def test_export_and_save(tmp_path):
    import onnx

    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    path = compact.export_onnx(model, masks, tmp_path / "m.onnx", (3, 8, 32, 32))
    onnx_model = onnx.load(str(path))
    onnx.checker.check_model(onnx_model)
    conv2 = next(t for t in onnx_model.graph.initializer if t.name == "conv2.weight")
    w = torch.from_numpy(onnx.numpy_helper.to_array(conv2).copy())
    assert torch.equal(w != 0, masks["conv2.weight"] & (model.conv2.weight != 0))
    cm = compile_sparse(model, masks, rules=rules)
    x = torch.randn(2, 3, 8, 32, 32)
    cm.dense_mode = "onednn"  # prepacked oneDNN weights in use: kept outside the module, not saved with it
    with torch.no_grad():
        cm(x)
    cm.dense_mode = None
    compact.save_compact(cm, tmp_path / "c.pt")
    loaded = compact.load_compact(tmp_path / "c.pt")
    with torch.no_grad():
        assert rel_err(loaded(x), model(x)) < TOL


def test_benchmark_smoke():
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    r = compact.benchmark(model, masks, (3, 8, 32, 32), batch_size=2, threads=1, repeats=1, warmup=0, rules=rules)
    for key in ("dense_ms", "sparse_ms", "speedup", "ideal", "max_rel_err", "layers"):
        assert key in r
    assert r["max_rel_err"] < TOL and r["max_rel_err_features"] < TOL  # fc8's input: fc7's output
    assert len(r["layers"]) == 8 and all(lr["compact_ms"] > 0 for lr in r["layers"])
    # the path each conv of the compact model runs; C3D's unpruned conv1 by the engine's own timed choice
    assert {lr["compact_path"] for lr in r["layers"]} <= {"kernel", "contiguous", "channels_last", "onednn"}
    assert r["layers"][1]["compact_path"] == "kernel"  # conv2 is pruned
    assert 2.5 < r["ideal"] < 3.5
    assert 0 < r["sparse_min_ms"] <= r["sparse_ms"] and 0 < r["dense_min_ms"] <= r["dense_ms"]
    assert r["speedup_min"] == pytest.approx(r["dense_min_ms"] / r["sparse_min_ms"])
    assert r["speedup_paired"] == pytest.approx(r["speedup"])  # one round: its ratio is the ratio of the medians
    assert "whole model" in compact.format_table(r) and "fastest of the repeats" in compact.format_table(r)


def test_pattern_rates_times_each_pattern_exactly_computed():
    """The kernel-rate benchmark: every pattern's plan equals masked dense, and lighter pruning shares more pairs."""
    from compact.bench import pattern_rates

    conv = nn.Conv3d(16, 24, (1, 3, 3), padding=(0, 1, 1))
    rules = {"kgrc": LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.67}), "kgr": LayerRule("kgrc", {"kgr": 0.5, "kgc": 0.0}),
             "unpruned": None}
    r = pattern_rates(conv, rules, (1, 16, 3, 10, 10), threads=1, repeats=1, warmup=0)
    rows = {row["pattern"]: row for row in r["patterns"]}
    assert list(rows) == list(rules) and set(r["dense"]) == {"contiguous", "channels_last", "onednn"}
    assert all(row["max_rel_err"] < TOL and row["compact_ms"] > 0 and row["gmacs"] > 0 for row in rows.values())
    assert rows["kgrc"]["pairs_per_task"] < rows["kgr"]["pairs_per_task"] < rows["unpruned"]["pairs_per_task"]
    assert rows["unpruned"]["macs"] == conv.weight.numel() * 3 * 10 * 10
    assert rows["kgr"]["macs"] * 2 == rows["unpruned"]["macs"]


def test_interleaved_reports_median_and_fastest():
    from compact.bench import interleaved

    delays = iter([0.004, 0.001, 0.003] * 2)
    best: dict[str, float] = {}
    raw: dict[str, list[float]] = {}
    med = interleaved({"a": lambda: time.sleep(next(delays))}, repeats=3, warmup=0, best=best, raw=raw)
    assert best["a"] < med["a"]  # 1 ms fastest, 3 ms median
    assert len(raw["a"]) == 3 and best["a"] == min(raw["a"]) and med["a"] == sorted(raw["a"])[1]


@pytest.mark.parametrize("arch,profile,clip", [("r2+1d", "r2+1d_kgs_3.20x", (4, 24, 24)),
                                               ("s3d", "s3d_kgs_1.84x", (8, 32, 32))])
def test_whole_video_nets(arch, profile, clip):
    """torchvision R(2+1)D-18 / S3D: BatchNorm folded, ReLU fused, strided convs; equal to the masked dense model."""
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    rules = load_profile(profile).resolve(model)
    masks = hard_prune(model, rules)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    cm = compile_sparse(model, masks, rules=rules)
    inner = {id(m.kernel) for m in cm.modules() if isinstance(m, AutoConv3d)}
    sparse = {f"{m.name}.weight" for m in cm.modules() if isinstance(m, SparseConv3d) and id(m) not in inner}
    assert sparse == set(masks)
    pairs = [m for m in cm.modules() if isinstance(m, SparseConvPair)]
    if arch == "r2+1d":  # every (2+1)D conv with a stride-1 temporal half runs chained
        expect = [n for n in masks if n.endswith(".0.3.weight") and n.replace(".0.3.", ".0.0.") in masks
                  and model.get_submodule(n[:-7]).stride == (1, 1, 1)]
        assert expect and len(pairs) == len(expect)
    assert sum(isinstance(m, nn.BatchNorm3d) for m in cm.modules()) < sum(
        isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert any(m.relu for m in cm.modules() if isinstance(m, SparseConv3d))
    x = torch.randn(2, 3, *clip)
    autos = [m for m in cm.modules() if isinstance(m, AutoConv3d)]
    with torch.no_grad():
        ref = model(x)
        assert rel_err(cm(x), ref) < TOL
        # the trunk, not only the logits: activations that died out on the way would make equal logits prove nothing
        trunk = {"r2+1d": lambda m: m.layer4(m.layer3(m.layer2(m.layer1(m.stem(x))))), "s3d": lambda m: m.features(x)}
        ref_trunk = trunk[arch](model)
        assert ref_trunk.std() > 1e-2 * ref.std() and rel_err(trunk[arch](cm), ref_trunk) < TOL
        if arch == "s3d":
            assert any(isinstance(m, ChannelsLastMaxPool3d) for m in cm.modules())
            assert not any(type(m) is nn.MaxPool3d for m in cm.modules())
        for p in pairs:  # the chained layout equals the two convs run apart
            xin = torch.randn(2, p.first.in_channels, 4, 12, 12)
            assert rel_err(p(xin), p.second(p.first(xin))) < TOL
            assert rel_err(p(xin), p.second.forward_torch(p.first.forward_torch(xin))) < TOL
        for mode in ("kernel", "contiguous", "channels_last", "onednn"):  # every path an unpruned conv may take
            for m in autos:
                m.mode = mode
            assert rel_err(cm(x), ref) < TOL, mode


@pytest.mark.parametrize("ceil", [False, True])
def test_channels_last_max_pool_equals_max_pool(ceil):
    pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), ceil_mode=ceil)
    fast = ChannelsLastMaxPool3d.from_pool(pool)
    x = torch.randn(2, 5, 3, 9, 10)
    y = fast(x)
    assert y.is_contiguous() and torch.equal(y, pool(x))


def test_scratch_pool_reuses_best_fit_and_keeps_only_the_largest():
    from compact.scratch import ScratchPool

    pool = ScratchPool(max_buffers=2)
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
    assert sorted(t.numel() for t in pool._free) == [7000, 8000]


def test_scratch_pool_padded_buffers_keep_their_zero_padding_per_layout():
    from compact.layout import flat_layout
    from compact.scratch import ScratchPool

    pool = ScratchPool(max_buffers=4)
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
    buf[-1] = 5.0  # breaks the holder's contract on purpose, to see whether the next take zeroes again
    ptr = buf.data_ptr()
    pool.give(buf)
    again, data2 = pool.take_padded(2, 3, grid, s, pad, dims, like, 7)
    assert again.data_ptr() == ptr and float(again[-1]) == 5.0  # same layout: reused as it was, no zeroing
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


@pytest.mark.parametrize("clip,crop", [(12, 40), (8, 36)])
def test_c3d_engine_odd_sizes_pooling_borders(clip, crop):
    """Odd grids (5x5 before pool4, 9x9 before pool3...) take the pooling kernel's border path and its unchecked
    interior path in the same rows; both must equal PyTorch's max_pool3d."""
    torch.manual_seed(1)
    model = build_model("c3d", 10, width_mult=0.25, clip_len=clip, crop_size=crop).eval()
    rules = load_profile("c3d_kgrc_3.04x").resolve(model)
    masks = hard_prune(model, rules)
    cm = compile_sparse(model, masks, rules=rules)
    x = torch.randn(2, 3, clip, crop, crop)
    with torch.no_grad():
        assert rel_err(cm.features(x), model.features(x)) < TOL


def _r21d(profile: str):
    torch.manual_seed(0)
    model = build_model("r2+1d", 10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    rules = load_profile(profile).resolve(model)
    return model, hard_prune(model, rules), rules


@pytest.mark.parametrize("profile,fused", [("r2+1d_kgrc_3.05x", ["layer1", "layer2", "layer3"]),
                                           ("r2+1d_kgs_3.20x", ["layer1", "layer2"])])
def test_residual_stages_equal_their_blocks_run_one_by_one(profile, fused):
    """Every stage whose convs are all sparse runs in the kernels' layout (residual add and ReLU fused into the last
    conv's write, in place over the block input); it equals its blocks run one by one, downsampling blocks (layer2:
    strided spatial conv, stride-2 temporal conv, downsample conv) included, and leaves its input untouched."""
    model, masks, rules = _r21d(profile)
    cm = compile_sparse(model, masks, rules=rules)
    assert [n for n, m in cm.named_modules() if isinstance(m, SparseResidualStage)] == fused
    x = torch.randn(2, 3, 4, 24, 24)
    with torch.no_grad():
        assert rel_err(cm(x), model(x)) < TOL
        h = cm.stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            stage = getattr(cm, name)
            keep = h.clone()
            y = stage(h)
            assert torch.equal(h, keep), name
            if isinstance(stage, SparseResidualStage):
                assert rel_err(y, nn.Sequential.forward(stage, h)) < TOL, name
                assert rel_err(y, getattr(model, name)(h)) < TOL, name
            h = y


def test_stem_writes_straight_into_layer1(tmp_path, monkeypatch):
    """R(2+1)D's last stem conv (unpruned, ReLU fused) writes into layer1's layout inside the stage: the model keeps
    its modules and state_dict, equals running the stem then layer1, saves and loads, and falls back without the
    kernels."""
    from torchvision.models.video.resnet import VideoResNet

    from compact.residual import StemIntoStageVideoResNet, fuse_stem_into_stage

    model, masks, rules = _r21d("r2+1d_kgrc_3.05x")
    cm = compile_sparse(model, masks, rules=rules)
    assert type(cm) is StemIntoStageVideoResNet and "stem.3.conv.weight" in cm.state_dict()
    x = torch.randn(2, 3, 4, 24, 24)
    with torch.no_grad():
        y = cm(x)
        assert rel_err(y, model(x)) < TOL
        assert rel_err(y, VideoResNet.forward(cm, x)) < TOL  # stem, then layer1 entering from a tensor
        compact.save_compact(cm, tmp_path / "r.pt")
        loaded = compact.load_compact(tmp_path / "r.pt")
        assert type(loaded) is StemIntoStageVideoResNet and rel_err(loaded(x), y) < TOL
        cm.stem[3].mode = "contiguous"  # a path forced afterwards: the stem runs it, layer1 enters from its output
        assert cm.stem_entry()[1] is None and rel_err(cm(x), y) < TOL
        cm.stem[3].mode = None
        monkeypatch.setattr(_ext, "_state", {})
        monkeypatch.setenv("PRUNE3D_NO_KERNELS", "1")
        assert rel_err(cm(x), y) < TOL
    other = compile_sparse(model, masks, rules=rules, fuse=False)
    assert not fuse_stem_into_stage(other) and type(other) is VideoResNet  # layer1 is not a SparseResidualStage


def test_residual_stage_refuses_blocks_it_cannot_run():
    model, masks, rules = _r21d("r2+1d_kgrc_3.05x")
    cm = compile_sparse(model, masks, rules=rules)
    assert can_fuse_stage(nn.Sequential(*cm.layer1))
    assert not can_fuse_stage(cm.layer4)  # unpruned convs (AutoConv3d)
    block = cm.layer1[1]
    block.conv1[2] = nn.ReLU()  # an unfused ReLU between the convs
    assert not can_fuse_stage(nn.Sequential(*cm.layer1))
    with pytest.raises(ValueError, match="can_fuse_stage"):
        SparseResidualStage(nn.Sequential(*cm.layer1))


def test_kernel_rate_script(tmp_path, capsys):
    """scripts/bench_kernel_rate.py: a table and JSON for a model's conv; a wrong layer or input is one clear line."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_kernel_rate.py"
    spec = importlib.util.spec_from_file_location("bench_kernel_rate", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "rate.json"
    assert script.main(["--input", "1", "64", "2", "8", "8", "--repeats", "1", "--threads", "1",
                        "--pattern", "k=kgrc:kgr=0.5,kgc=0.67", "--pattern", "d=dense", "--json", str(out)]) == 0
    assert "dense onednn" in capsys.readouterr().out
    assert [p["pattern"] for p in json.loads(out.read_text())["patterns"]] == ["k", "d"]
    with pytest.raises(SystemExit, match="not a Conv3d of r2\\+1d"):
        script.main(["--layer", "layer1.0.bogus"])
    with pytest.raises(SystemExit, match="takes 64"):
        script.main(["--input", "1", "3", "2", "8", "8"])
    with pytest.raises(SystemExit, match="ratios must read"):
        script.main(["--pattern", "x=kgrc:kgr"])
    with pytest.raises(SystemExit, match="unknown sparsity type 'kgz'"):
        script.main(["--pattern", "x=kgz:kgr=0.5"])
    with pytest.raises(SystemExit, match="--arch 'foo': choose one of"):
        script.main(["--arch", "foo"])
