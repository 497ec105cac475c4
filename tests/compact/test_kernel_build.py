"""The C++ kernels (compact/_ext.py, csrc/): they build, every ISA the CPU has gives the same results, the call is
typed (keyword-only, fields read by name and checked), and without them the pure-PyTorch path gives the same
results."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import compact
from compact import _ext
from compact.convert import compile_sparse
from compact.layout import OutputSpec, output_runs, scatter_index
from compact.modules import SparseConv3d
from tests.compact.conftest import (
    SPATIAL,
    TOL,
    check_conv,
    make_conv,
    rel_err,
    small_c3d,
)


def test_kernels_built():
    assert compact.kernels_available(), "the C++ kernels did not build (g++ and ninja are needed)"
    assert compact.kernel_isa() in ("avx512", "avx2", "generic")


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


def test_kernel_call_is_typed():
    """Keyword-only; a plan field of the wrong dtype or a missing one is refused by name, before any work."""
    ext = _ext.load_kernels()
    if ext is None:
        pytest.skip("no kernels")
    conv, mask = make_conv(16, 24, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgrc")
    sc = SparseConv3d(conv, mask)
    x = torch.randn(2, 16, *SPATIAL)
    buf, ctx = sc.prepare(x)
    out = torch.full((2, 24, *ctx.outd), float("nan"))
    write = OutputSpec(sample_stride=out[0].numel(), chan_stride=out[0, 0].numel(), relu=False,
                       runs=output_runs(scatter_index(ctx.q, ctx.grid, ctx.outd)))
    ext.sparse_conv(input=buf, ctx=ctx, bias=sc.bias, out=out, write=write)
    assert rel_err(out, F.conv3d(x, conv.weight * mask, conv.bias, 1, 1)) < TOL
    with pytest.raises(TypeError):
        ext.sparse_conv(buf, ctx, sc.bias, out, write)
    bad = dataclasses.replace(ctx, plan=ctx.plan._replace(pair_off=ctx.plan.pair_off.int()))
    with pytest.raises(RuntimeError, match="pair_off"):
        ext.sparse_conv(input=buf, ctx=bad, bias=sc.bias, out=out, write=write)
    bad = dataclasses.replace(ctx, plan=ctx.plan._replace(weights=ctx.plan.weights.numpy()))
    with pytest.raises(RuntimeError, match="weights: expected a tensor"):
        ext.sparse_conv(input=buf, ctx=bad, bias=sc.bias, out=out, write=write)
    half = write._replace(runs=SimpleNamespace(runs=write.runs.runs))  # no tile_runs
    with pytest.raises(AttributeError, match="tile_runs"):
        ext.sparse_conv(input=buf, ctx=ctx, bias=sc.bias, out=out, write=half)
    with pytest.raises(RuntimeError, match="accumulate needs output runs"):
        ext.sparse_conv(input=buf, ctx=ctx, out=out, write=write._replace(runs=None, accumulate=True))
