"""compact at bf16 and int8 (compact/quant.py): every conv shape against the reference arithmetic, the portable code
against the dot-product instructions, whole models, calibration, checkpoints, and the refusals."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import compact
from compact import _ext
from compact.modules import SparseConv3d
from compact.quant import (
    bf16_round,
    calibrate,
    default_weight_bits,
    input_quant,
    plan_int8,
    plan_values,
    quant_state,
    quantize_input,
    set_precision,
)
from compact.surgery import masked_dense_copy
from tests.compact.conftest import (
    GEOMETRIES,
    SHAPES,
    SPATIAL,
    TYPES,
    make_conv,
    make_kgrc_conv,
    r21d,
    rel_err,
    small_c3d,
)

BF16_TOL = 1.5e-2  # against fp32: inputs and weights each rounded to 8 significant bits


@pytest.fixture(autouse=True)
def every_conv_on_tiles(monkeypatch):
    """Where the CPU has AMX, every conv of these tests runs on tiles (not only those whose tasks fill them), so that
    `_both_paths` compares the tile kernel with the dot-product one on every shape and pattern."""
    from compact import quant

    monkeypatch.setattr(quant, "TILE_MIN_FILL", {"bf16": 0.0, "int8": 0.0})


def _ext_or_skip():
    ext = _ext.load_kernels()
    if ext is None:
        pytest.skip("no kernels")
    return ext


def _lower_isas(ext) -> list[str]:
    """The ISAs below the best one this CPU runs (their TUs: AVX2's vpmaddwd int8, the generic vector code)."""
    order = ["generic", "avx2", "avx512"]
    return order[:order.index(ext.isa())]


def _both_paths(ext, sc: SparseConv3d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output with the dot-product instructions where the CPU has them, output of the portable code). The portable
    code of every lower ISA must give the same output as this ISA's (checked here, bit for bit at int8, to 1e-6 at
    bf16: the TUs' vector widths sum in other orders); where the CPU has AMX, the output on tiles (the default) must
    equal the dot-product kernels' the same way."""
    with torch.no_grad():
        y = sc(x)
        if ext.has_tiles(sc.precision):
            ext.use_tiles(False)
            try:
                y_dot = sc(x)
            finally:
                ext.use_tiles(True)
            assert torch.equal(y, y_dot) if sc.precision == "int8" else rel_err(y, y_dot) < 1e-6
        ext.use_dot_products(False)
        best = ext.isa()
        try:
            y_portable = sc(x)
            for isa in _lower_isas(ext):
                ext.set_isa(isa)
                y_lower = sc(x)
                if sc.precision == "int8":
                    assert torch.equal(y_lower, y_portable), isa
                else:
                    assert rel_err(y_lower, y_portable) < 1e-6, isa
        finally:
            ext.set_isa(best)
            ext.use_dot_products(True)
    return y, y_portable


@pytest.mark.parametrize("shape", SHAPES, ids=[s[-1] for s in SHAPES])
def test_every_conv_shape_int8_is_bit_exact_and_bf16_within_its_rounding(shape):
    """int8: the kernel equals the reference integer computation in PyTorch bit for bit (signed input, zero point
    128); the portable code equals the instructions. bf16: equal to fp32 on bf16-rounded operands up to the order
    of the sums, and within bf16's rounding of the fp32 masked conv."""
    ext = _ext_or_skip()
    cin, cout, k, s, p, bias, _ = shape
    conv, mask = make_conv(cin, cout, k, s, p, bias, "kgrc")
    sc = SparseConv3d(conv, mask)
    x = torch.randn(2, cin, *SPATIAL)
    with torch.no_grad():
        w = conv.weight * mask
        ref32 = F.conv3d(x, w, conv.bias, s, p)

    for bits in (8, 7):
        sc.set_precision("int8", (float(x.min()), float(x.max())), bits)
        y, y_portable = _both_paths(ext, sc, x)
        assert torch.equal(y, sc.forward_torch(x)), bits
        assert torch.equal(y, y_portable), bits
        assert rel_err(y, ref32) < 0.05, bits

    sc.set_precision("bf16")
    y, y_portable = _both_paths(ext, sc, x)
    with torch.no_grad():
        assert rel_err(y, F.conv3d(bf16_round(x), bf16_round(w), conv.bias, s, p)) < 1e-5
    assert rel_err(y, y_portable) < 1e-6
    assert rel_err(y, ref32) < BF16_TOL


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("kind", TYPES)
def test_every_pattern_int8_exact_after_relu(kind, bits):
    """Unsigned input (zero point 0, as after a ReLU) on every sparsity type, batch 3, strided and not, with 8- and
    7-bit weights (without VNNI: pmaddwd and pmaddubsw)."""
    ext = _ext_or_skip()
    for geom in (((3, 3, 3), (1, 1, 1), (1, 1, 1)), ((1, 3, 3), (1, 2, 2), (0, 1, 1))):
        conv, mask = make_conv(20, 36, *geom, True, kind)
        sc = SparseConv3d(conv, mask)
        x = torch.randn(3, 20, *SPATIAL).relu()
        sc.set_precision("int8", (0.0, float(x.max())), bits)
        assert sc.quant.iq.zero == 0
        y, y_portable = _both_paths(ext, sc, x)
        assert torch.equal(y, sc.forward_torch(x)) and torch.equal(y, y_portable), kind


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("gathered", [False, True])
def test_int8_is_exact_where_pair_sums_are_largest(monkeypatch, gathered, bits):
    """pmaddubsw adds two uint8 x int8 products into int16 with saturation: 7-bit weights keep every such sum within
    it (2 x 255 x 63 = 32130), 8-bit ones do not (2 x 255 x 127), so those take pmaddwd without VNNI. Inputs at the
    top of their range (uint8 255) against filters of all +max and all -max weights give the largest sums there
    are; the kernels equal the reference bit for bit on the channel-interleaved and the gathered plan, and a 7-bit
    plan refuses a weight past 63."""
    from compact import quant

    ext = _ext_or_skip()
    monkeypatch.setattr(quant, "GATHER_COST", 0.0 if gathered else 1e9)
    conv = torch.nn.Conv3d(16, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, 0.5, -0.5]).view(4, 1, 1, 1, 1).expand_as(conv.weight))
    sc = SparseConv3d(conv, None)
    x = torch.full((1, 16, *SPATIAL), 3.0)
    sc.set_precision("int8", (0.0, 3.0), bits)
    assert sc.quant.qweight.abs().amax().item() == (1 << bits - 1) - 1
    assert quantize_input(x, sc.quant.iq).min().item() == 255
    y, y_portable = _both_paths(ext, sc, x)
    assert sc.prepare(x)[1].plan.precision == (quant.INT8_GATHER if gathered else 2)
    assert torch.equal(y, sc.forward_torch(x)) and torch.equal(y, y_portable)
    with pytest.raises(ValueError, match=r"\[-63, 63\]"):
        plan_int8(np.array([64.0]), 7)


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("kind", ["kgrc", "kgs", "irregular"])
def test_int8_gathered_pairs_are_bit_exact_on_every_geometry(monkeypatch, kind, bits):
    """The int8 plan that takes any four kept pairs per word (P3D_INT8_GATHER, chosen where channel-interleaved
    words would be mostly empty; forced here) equals the reference and the portable code, on every conv geometry
    of the three models."""
    from compact import quant

    ext = _ext_or_skip()
    monkeypatch.setattr(quant, "GATHER_COST", 0.0)
    for k, s, p in GEOMETRIES:
        conv, mask = make_conv(12, 20, k, s, p, True, kind)
        sc = SparseConv3d(conv, mask)
        x = torch.randn(2, 12, *SPATIAL)
        sc.set_precision("int8", (float(x.min()), float(x.max())), bits)
        y, y_portable = _both_paths(ext, sc, x)
        plan = sc.prepare(x)[1].plan
        assert plan.precision == quant.INT8_GATHER or len(plan.pair_off) == 0  # (no pairs: the bias alone)
        assert torch.equal(y, sc.forward_torch(x)) and torch.equal(y, y_portable), (kind, k, s, p)


def test_packed_plan_merges_pairs_that_share_a_word():
    """plan_values reproduces the plan's own weights; the int8 plan of a dense conv packs four channels per word
    (a quarter of the pairs), and of a pruned one never more pairs than fp32."""
    conv, mask = make_conv(32, 16, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgrc")
    sc = SparseConv3d(conv, mask)
    np.testing.assert_array_equal(plan_values(sc.plan, sc.dense_weight()), sc.plan.weights)
    x = torch.randn(1, 32, *SPATIAL)
    fp32 = sc.prepare(x)[1].plan
    sc.set_precision("int8", (-1.0, 1.0))
    packed = sc.prepare(x)[1].plan
    assert packed.precision == 2 and len(packed.pair_off) <= len(fp32.pair_off)
    dense = SparseConv3d(torch.nn.Conv3d(32, 16, 3, padding=1), None)
    n32 = len(dense.prepare(x)[1].plan.pair_off)
    dense.set_precision("int8", (-1.0, 1.0))
    assert len(dense.prepare(x)[1].plan.pair_off) * 4 == n32


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_tile_layout_holds_each_tasks_words_filter_major(precision, monkeypatch):
    """The AMX kernel's weights (quant.with_tiles): word (pair p, filter g) of task t at task_tstart[t] + g x (n + 16)
    + p, zero elsewhere; every task's words are there once; a plan whose tasks fill tiles too little gets none."""
    from compact import quant
    from compact.plan import kernel_plan

    conv, mask = make_conv(24, 20, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgrc")
    sc = SparseConv3d(conv, mask)
    x = torch.randn(1, 24, *SPATIAL)
    sc.set_precision(precision, (float(x.min()), float(x.max())))
    sc.prepare(x)
    _, _, g3, stride, s_chan = next(k for k in sc._kernel_plans if k[:2] == ("fp32", "plain"))  # its geometry
    chan_index = sc._chan_index
    whole = kernel_plan(sc.plan, chan_index, stride, g3, s_chan, whole_tasks=True)
    assert len(whole.piece_task) == len(whole.task_G)  # one piece per task
    make = quant.int8_plan if precision == "int8" else quant.pack_plan
    vch = (int(np.max(chan_index)) + 1) * int(np.prod(stride))
    packed = make(whole, plan_values(sc.plan, sc.quant.qweight if precision == "int8" else sc.dense_weight()),
                  sc.quant, s_chan, vch)
    tiled = quant.with_tiles(packed, precision)
    assert tiled is not None
    words = packed.weights.numpy().view(np.uint32)
    wt = tiled.weights_t.numpy().view(np.uint32)
    seen = np.zeros(len(wt), bool)
    for t, G in enumerate(packed.task_G.numpy()):
        n = int(packed.task_pstart[t + 1] - packed.task_pstart[t])
        block = wt[tiled.task_tstart[t]:tiled.task_tstart[t] + 8 * (n + 16)].reshape(8, n + 16)
        mine = words[packed.task_wstart[t]:packed.task_wstart[t] + n * G].reshape(n, G).T
        np.testing.assert_array_equal(block[:G, :n], mine)
        seen[tiled.task_tstart[t]:tiled.task_tstart[t] + 8 * (n + 16)] = True
        assert not block[G:].any() and not block[:, n:].any()
    assert not wt[~seen].any()
    fill = quant.tile_fill(packed)
    assert 0 < fill <= 1
    monkeypatch.setattr(quant, "TILE_MIN_FILL", {precision: fill + 1e-6})
    assert quant.with_tiles(packed, precision) is None


def test_dense_conv_runs_filter_groups_in_pairs_on_tiles():
    """A dense conv: five groups of 8 filters all reading the same pairs; where the CPU has AMX, groups run two at a
    time on 16-row tiles (task_twin), the fifth alone, with the dot-product kernel's results (bit for bit at int8)."""
    from compact import quant

    ext = _ext_or_skip()
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(32, 40, 3, padding=1)
    x = torch.randn(2, 32, *SPATIAL)
    for precision in ("bf16", "int8"):
        sc = SparseConv3d(conv, None)
        sc.set_precision(precision, (float(x.min()), float(x.max())))
        y, y_portable = _both_paths(ext, sc, x)
        plan = sc.prepare(x)[1].plan
        if precision == "int8":
            assert torch.equal(y, sc.forward_torch(x)) and torch.equal(y, y_portable)
        else:
            assert rel_err(y, y_portable) < 1e-6
        if quant.runs_on_tiles(precision):
            assert plan.task_twin.tolist() == [1, 1, 1, 1, 0], precision


def test_quantization_formulas():
    """Unsigned after a ReLU (zero 0, scale max/255), else symmetric around 128; round half to even; clamped."""
    q = input_quant(0.0, 2.55)
    assert q.zero == 0 and abs(q.scale - 0.01) < 1e-9
    q = input_quant(-1.0, 0.5)
    assert q.zero == 128 and abs(q.scale - 1 / 127) < 1e-9
    x = torch.tensor([-5.0, -1.0, 0.0, 0.5 / 127, 1.5 / 127, 1.0, 9.0])
    assert quantize_input(x, q).tolist() == [0, 1, 128, 128, 130, 255, 255]
    with pytest.raises(ValueError, match="not a range"):
        input_quant(1.0, -1.0)
    w = torch.randn(4, 3, 1, 1, 1)
    st = quant_state(w, "int8", (0.0, 1.0))
    assert st.weight_bits == 8 and st.qweight.flatten(1).abs().amax(1).tolist() == [127] * 4
    st7 = quant_state(w, "int8", (0.0, 1.0), 7)
    assert st7.weight_bits == 7 and st7.qweight.flatten(1).abs().amax(1).tolist() == [63] * 4
    assert torch.allclose(st7.row_scale * 63, st.row_scale * 127)
    with pytest.raises(ValueError, match="choose 8 or 7"):
        quant_state(w, "int8", (0.0, 1.0), 6)


def test_whole_models_at_reduced_precision_equal_their_reference():
    """C3D (its engine: convs writing into each other's layout, C++ pooling), R(2+1)D (fused stem, residual
    stages, (2+1)D pairs, unpruned convs through AutoConv3d) and S3D (conv pairs): int8 with the kernels equals the
    pure-PyTorch path bit for bit; bf16 stays within its rounding of the dense fp32 model."""
    _ext_or_skip()
    for build, x in ((lambda: small_c3d("c3d_kgrc_3.04x"), torch.randn(2, 3, 8, 32, 32)),
                     (lambda: r21d("r2+1d_kgrc_3.05x"), torch.randn(2, 3, 4, 24, 24)),
                     (_s3d, torch.randn(1, 3, 8, 32, 32))):  # S3D: its (1x3x3 -> 3x1x1) pairs hand over packed
        model, masks, rules = build()
        dense = masked_dense_copy(model, masks).eval()
        ranges = calibrate(dense, [x])
        with torch.no_grad():
            ref = dense(x)
            cm = compile_sparse_at(model, masks, rules, "int8", ranges)
            y = cm(x)
            assert rel_err(y, ref) < 0.1
            torch_path = _without_kernels(cm, x)
            assert torch.equal(y, torch_path)
            bf = compile_sparse_at(model, masks, rules, "bf16", None)
            assert rel_err(bf(x), ref) < 0.05


def _s3d():
    from models import build_model
    from pruning import hard_prune
    from pruning.profile import load_profile
    from tests.compact.conftest import randomize_bn_stats

    torch.manual_seed(0)
    model = build_model("s3d", 10).eval()
    randomize_bn_stats(model)  # (random BatchNorm statistics keep S3D's activations from vanishing)
    rules = load_profile("s3d_kgs_1.84x").resolve(model)
    return model, hard_prune(model, rules), rules


def compile_sparse_at(model, masks, rules, precision, ranges):
    return compact.compile_sparse(model, masks, rules=rules, precision=precision, ranges=ranges)


def _without_kernels(cm, x):
    state = dict(_ext._state)
    try:
        _ext._state.clear()
        _ext._state["ext"] = None
        return cm(x)
    finally:
        _ext._state.clear()
        _ext._state.update(state)


def test_calibration_is_deterministic_and_methods_differ():
    model, masks, _ = small_c3d("c3d_kgrc_3.04x")
    dense = masked_dense_copy(model, masks).eval()
    clips = [torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    a, b = calibrate(dense, clips), calibrate(dense, clips)
    assert a == b and set(a) == {n for n, m in dense.named_modules() if isinstance(m, torch.nn.Conv3d)}
    assert a["conv1"][0] < 0 and a["conv2"][0] >= 0  # the clip is signed, conv2 reads a ReLU's output
    p = calibrate(dense, clips, method="percentile", percentile=99.0)
    assert p == calibrate(dense, clips, method="percentile", percentile=99.0)
    assert all(p[n][1] <= a[n][1] for n in a) and any(p[n][1] < a[n][1] for n in a)
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(dense, clips, method="mean")


def test_int8_checkpoint_round_trips(tmp_path):
    """A compact int8 model saved and loaded gives the same output bit for bit (its scales travel with it)."""
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    x = torch.randn(1, 3, 8, 32, 32)
    ranges = calibrate(masked_dense_copy(model, masks).eval(), [x])
    cm = compile_sparse_at(model, masks, rules, "int8", ranges)
    with torch.no_grad():
        y = cm(x)
        compact.save_compact(cm, tmp_path / "m.pt")
        loaded = compact.load_compact(tmp_path / "m.pt")
        assert torch.equal(loaded(x), y)
    assert {m.precision for m in loaded.modules() if isinstance(m, SparseConv3d)} == {"int8"}


def test_refusals_name_what_to_do():
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    cm = compact.compile_sparse(model, masks, rules=rules)
    with pytest.raises(ValueError, match="int8 needs calibration"):
        set_precision(cm, "int8")
    with pytest.raises(ValueError, match="no calibrated range for conv conv"):
        set_precision(cm, "int8", {"conv1": [0.0, 1.0]})
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        set_precision(cm, "fp16")


def test_without_dot_products_said_once(monkeypatch, caplog):
    """On a CPU without the instructions (here: the avx2 kernels forced), one line says so, once per precision."""
    from compact import quant

    ext = _ext_or_skip()
    if ext.isa() == "generic":
        pytest.skip("generic CPU")
    monkeypatch.setattr(quant, "_SAID", set())
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    best = ext.isa()
    assert quant.default_weight_bits() == (8 if ext.has_dot_products("int8") else 7)
    try:
        ext.set_isa("avx2" if best == "avx512" else best)
        assert quant.default_weight_bits() == 7  # (no VNNI: pmaddubsw)
        ranges = calibrate(masked_dense_copy(model, masks).eval(), [torch.randn(1, 3, 8, 32, 32)])
        with caplog.at_level(logging.WARNING, logger="prune3d.compact"):
            for p in ("bf16", "bf16", "int8", "int8"):
                compile_sparse_at(model, masks, rules, p, ranges)
            cm = compact.compile_sparse(model, masks, rules=rules)
            set_precision(cm, "int8", ranges, 8)
            set_precision(cm, "int8", ranges, 8)
    finally:
        ext.set_isa(best)
    said = [r.getMessage() for r in caplog.records if "no AVX512_BF16" in r.getMessage()]
    assert len(said) == 1 and "same results" in said[0] and "keep fp32" in said[0]
    said = [r.getMessage() for r in caplog.records if "no AVX512_VNNI" in r.getMessage()]
    assert len(said) == 2 and all("exact" in s for s in said)
    assert "pmaddubsw on 7-bit weights" in said[0] and "--int8-weight-bits 8" in said[0]
    assert "vpmaddwd on 8-bit weights" in said[1] and "--int8-weight-bits 7" in said[1]


@pytest.mark.parametrize("torch_bf16", ["native", "without oneDNN bf16"])
def test_benchmark_times_reduced_precisions_in_the_same_rounds(torch_bf16, monkeypatch):
    """Each precision in the same rounds as fp32; PyTorch's own bf16 beside compact bf16 where oneDNN has a bf16
    path, else skipped with one line (its generic fallback is no baseline: docs/bench/history.md)."""
    from compact import bench

    reason = None if torch_bf16 == "native" else "no oneDNN bf16 path here"
    monkeypatch.setattr(bench, "pytorch_bf16_skip_reason", lambda: reason)
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    ranges = calibrate(masked_dense_copy(model, masks).eval(), [torch.randn(1, 3, 8, 32, 32)])
    said: list[str] = []
    r = compact.benchmark(model, masks, (3, 8, 32, 32), repeats=1, warmup=0, rules=rules, per_layer=False,
                          precisions=["bf16", "int8"], ranges=ranges, say=said.append)
    assert set(r["precisions"]) == {"bf16", "int8"}
    bits = default_weight_bits()
    assert r["precisions"]["int8"]["weight_bits"] == bits and "weight_bits" not in r["precisions"]["bf16"]
    for p, row in r["precisions"].items():
        assert row["ms"] > 0 and row["max_rel_err"] < 0.1 and row["speedup_vs_fp32_paired"] > 0, p
    assert f"int8 ({bits}-bit weights):" in compact.format_table(r)
    bf = r["precisions"]["bf16"]
    if reason:
        assert bf["pytorch-bf16"] == {"skipped": reason} and "speedup_vs_pytorch-bf16" not in bf
        assert [s for s in said if "pytorch-bf16" in s] == [f"pytorch-bf16: skipped: {reason}"]
        assert "pytorch-bf16" not in compact.format_table(r)
        return
    # bf16 beside PyTorch's own bf16 dense model, in the same rounds
    assert bf["pytorch-bf16"]["ms"] > 0 and bf["pytorch-bf16"]["max_rel_err"] < 0.1
    assert bf["speedup_vs_pytorch-bf16"] == pytest.approx(bf["pytorch-bf16"]["ms"] / bf["ms"])
    assert "pytorch-bf16" in compact.format_table(r) and "pytorch-bf16" not in r["precisions"]["int8"]


def test_cli_evaluates_each_precision_and_keeps_the_scales_in_the_checkpoint(synthetic, tmp_path, capsys):
    """--evaluate --precision runs the compact model; int8 without scales is refused in one line, --calibrate N
    measures them on training clips and stores them in the checkpoint, which int8 then reads; a bad precision and
    --calibrate without int8 are one line each."""
    from models import build_model
    from opt_main import cli
    from pruning import hard_prune
    from pruning.profile import load_profile
    from training.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model("c3d", 3, width_mult=0.25, clip_len=8, crop_size=32)
    masks = hard_prune(model, load_profile("c3d_kgrc_3.04x").resolve(model))
    ckpt = tmp_path / "pruned.pth"
    save_checkpoint({"model": model.state_dict(), "masks": masks, "args": {"norm": "kinetics"}}, ckpt)
    run = ["--evaluate", "--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32",
           "--short-side", "40", "--data-location", str(synthetic["lmdb"]), "--dataset", "synthetic",
           "--load-path", str(ckpt), "--device", "cpu", "--batch-size", "4", "--workers", "0"]

    def one_line_error(args: list[str]) -> str:
        assert cli(run + args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "add --calibrate N" in one_line_error(["--precision", "int8"])
    assert "--precision: 'fp16' is not allowed" in one_line_error(["--precision", "fp16"])
    assert "add --precision int8" in one_line_error(["--precision", "bf16", "--calibrate", "4"])
    assert "--int8-weight-bits is for --precision int8" in one_line_error(["--precision", "bf16",
                                                                           "--int8-weight-bits", "7"])
    assert cli(run + ["--precision", "int8", "--calibrate", "4"]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 4 training clips" in out and '"precision": "int8"' in out
    assert f'"int8_weight_bits": {default_weight_bits()}' in out
    stored = load_checkpoint(ckpt)["calibration"]
    assert stored["method"] == "minmax" and set(stored["ranges"]) >= {"conv1", "conv5b"}
    assert cli(run + ["--precision", "int8"]) == 0  # the stored scales
    again = capsys.readouterr().out
    assert '"precision": "int8"' in again and json_metric(again) == json_metric(out)
    assert cli(run + ["--precision", "int8", "--int8-weight-bits", "7"]) == 0
    assert '"int8_weight_bits": 7' in capsys.readouterr().out
    for p in ("fp32", "bf16"):
        assert cli(run + ["--precision", p]) == 0 and f'"precision": "{p}"' in capsys.readouterr().out


def json_metric(out: str) -> float:
    import json

    return json.loads(out[out.index("{"):])["clip_top1"]


def test_cli_refuses_scales_measured_for_other_masks(synthetic, tmp_path, capsys):
    """A checkpoint whose masks changed after calibration (e.g. retrained to another profile) is refused in one
    line rather than run with stale ranges."""
    from models import build_model
    from opt_main import cli, mask_digest
    from pruning import hard_prune
    from pruning.profile import load_profile
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("c3d", 3, width_mult=0.25, clip_len=8, crop_size=32)
    masks = hard_prune(model, load_profile("c3d_kgrc_3.04x").resolve(model))
    other = {k: torch.ones_like(v) for k, v in masks.items()}
    ckpt = tmp_path / "pruned.pth"
    stale = {"ranges": {}, "method": "minmax", "masks": mask_digest(other)}
    save_checkpoint({"model": model.state_dict(), "masks": masks, "args": {"norm": "kinetics"},
                     "calibration": stale}, ckpt)
    assert cli(["--evaluate", "--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32",
                "--short-side", "40", "--data-location", str(synthetic["lmdb"]), "--dataset", "synthetic",
                "--load-path", str(ckpt), "--device", "cpu", "--workers", "0", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other masks" in err[0] and "--calibrate N" in err[0]


@pytest.mark.parametrize("kind", ["kgrc", "kgs", "gathered"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("spatial", [SPATIAL, (3, 7, 21)], ids=["16", "7x21"])
def test_a_conv_writes_the_next_convs_packed_input_bit_for_bit(monkeypatch, kind, relu, spatial):
    """At int8 / bf16 a chained conv writes the next conv's packed input itself (no fp32 activation, no packing
    pass): the pair equals the pure-PyTorch path bit for bit at int8, with a ReLU between (zero point 0) or not
    (zero point 128: the padding holds it), for the channel-interleaved and the gathered plan (45 channels: a last
    word not full); bf16 equals the unfused kernel path. Rows of 16 are whole vectors; rows of 21 and 7 end in a
    partial one (the masked tail of the write)."""
    from compact import chain, quant
    from compact.chain import SparseConvPair

    _ext_or_skip()
    if kind == "gathered":
        monkeypatch.setattr(quant, "GATHER_COST", 0.0)
    first, m1 = make_conv(12, 45, (1, 3, 3), (1, 1, 1), (0, 1, 1), True, "kgs" if kind == "gathered" else kind)
    second, m2 = make_conv(45, 20, (3, 1, 1), (1, 1, 1), (1, 0, 0), True, "kgrc", seed=1)
    a, b = SparseConv3d(first, m1), SparseConv3d(second, m2)
    a.relu = relu
    pair = SparseConvPair(a, b)
    x = torch.randn(2, 12, *spatial)
    with torch.no_grad():
        mid = a.forward_torch(x)
    packs = []
    real = SparseConv3d.take_packed_input
    monkeypatch.setattr(SparseConv3d, "take_packed_input", lambda *args: packs.append(1) or real(*args))
    a.set_precision("int8", (float(x.min()), float(x.max())))
    b.set_precision("int8", (float(mid.min()), float(mid.max())))
    assert (b.quant.iq.zero == 0) == relu
    with torch.no_grad():
        y = pair(x)
        assert torch.equal(y, b.forward_torch(a.forward_torch(x)))
        assert packs and b.prepare(mid)[1].plan.precision == (quant.INT8_GATHER if kind == "gathered" else 2)
        assert torch.equal(pair(x), y)  # the second call reuses the packed buffer and its padding
    a.set_precision("bf16")
    b.set_precision("bf16")
    with torch.no_grad():
        y = pair(x)
        monkeypatch.setattr(chain, "run_into", _unpacked_run_into(chain.run_into))
        assert torch.equal(y, pair(x))


def _unpacked_run_into(run_into):
    """run_into with the next conv handed fp32 (packed by its own kernel call): the path before the packed handoff."""
    def run(ext, conv, buf, ctx, nxt):
        keep = nxt.quant
        nxt.quant = quant_state(nxt.dense_weight(), "fp32")
        try:
            dest, _ = run_into(ext, conv, buf, ctx, nxt)
        finally:
            nxt.quant = keep
        from compact.layout import flat_layout

        grid, s = flat_layout(ctx.outd, nxt.padding)
        return dest, nxt.layout_ctx(ctx.n, ctx.outd, grid, s)
    return run


@pytest.mark.parametrize("gm", [16, 32])
def test_wide_kernel_groups_at_reduced_precision(gm):
    """KGRC groups of 16 and 32 filters (tasks of 8 rows; at 32, twins that AMX runs on one 16-row tile): int8 bit
    for bit against the reference and the portable code, bf16 within its rounding, on both kernel families."""
    from compact import quant

    ext = _ext_or_skip()
    for k, p in (((3, 3, 3), (1, 1, 1)), ((1, 3, 3), (0, 1, 1))):
        conv, mask = make_kgrc_conv(32, 64, k, p, (gm, 8), seed=gm)
        x = torch.randn(2, 32, *SPATIAL).relu()
        sc = SparseConv3d(conv, mask)
        sc.set_precision("int8", (0.0, float(x.max())))
        y, y_portable = _both_paths(ext, sc, x)
        assert torch.equal(y, sc.forward_torch(x)) and torch.equal(y, y_portable), (gm, k)
        plan = sc.prepare(x)[1].plan
        if gm == 32 and quant.runs_on_tiles("int8"):
            assert plan.task_twin.numel() and plan.task_twin.sum() >= len(plan.task_twin) // 2 - 1, k
        sc.set_precision("bf16")
        y, y_portable = _both_paths(ext, sc, x)
        with torch.no_grad():
            assert rel_err(y, F.conv3d(bf16_round(x), bf16_round(conv.weight * mask), conv.bias, 1, p)) < 1e-5
