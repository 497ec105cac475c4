"""compact/modules.py: SparseConv3d equals the masked dense conv for every sparsity type and every conv shape of C3D,
R(2+1)D-18 and S3D, skips the pruned work, and its fallback equals its kernel path; the channels_last max-pool."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compact import _ext
from compact.modules import ChannelsLastMaxPool3d, SparseConv3d
from tests.compact.conftest import (
    GEOMETRIES,
    SHAPES,
    SPATIAL,
    TOL,
    TYPES,
    check_conv,
    make_conv,
    rel_err,
)


@pytest.mark.parametrize("i", range(len(SHAPES)), ids=[s[-1] for s in SHAPES])
def test_every_model_conv_shape(i):
    cin, cout, k, s, p, bias, _ = SHAPES[i]
    kind = TYPES[i % len(TYPES)]
    conv, mask = make_conv(cin, cout, k, s, p, bias, kind, seed=i)
    check_conv(conv, mask, kind)


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


@pytest.mark.parametrize("ceil", [False, True])
def test_channels_last_max_pool_equals_max_pool(ceil):
    pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), ceil_mode=ceil)
    fast = ChannelsLastMaxPool3d.from_pool(pool)
    x = torch.randn(2, 5, 3, 9, 10)
    y = fast(x)
    assert y.is_contiguous() and torch.equal(y, pool(x))
