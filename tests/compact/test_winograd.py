"""Winograd F(m x m, 3 x 3) for unpruned convs (compact/winograd.py) against F.conv3d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compact import winograd
from compact.winograd import WinogradConv3d
from tests.compact.conftest import SHAPES, WINOGRAD_TOL, rel_err

TOL = WINOGRAD_TOL
WINOGRAD_SHAPES = [s for s in SHAPES if winograd.supports(nn.Conv3d(s[0], s[1], s[2], s[3], s[4]))]


def test_every_3x3_stride1_conv_of_the_models_is_covered():
    names = {s[-1].split(":")[0] for s in WINOGRAD_SHAPES}
    assert names == {"c3d", "r2+1d", "s3d"}
    assert not winograd.supports(nn.Conv3d(3, 8, 3, stride=2, padding=1))
    assert not winograd.supports(nn.Conv3d(3, 8, (1, 7, 7), padding=(0, 3, 3)))
    assert not winograd.supports(nn.Conv3d(3, 8, 3, padding=0))
    assert not winograd.supports(nn.Conv3d(4, 8, 3, padding=1, groups=2))


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("shape", WINOGRAD_SHAPES, ids=[s[-1] for s in WINOGRAD_SHAPES])
def test_equals_conv3d_on_every_shape(shape, m):
    cin, cout, k, s, p, bias, _ = shape
    torch.manual_seed(0)
    conv = nn.Conv3d(cin, cout, k, s, p, bias=bias)
    if bias:
        nn.init.normal_(conv.bias)
    wc = WinogradConv3d(conv, m=m)
    # sizes that are and are not multiples of the tile, batch 1 and 2
    for n, dims in ((1, (4, 8, 8)), (2, (3, 7, 9))):
        x = torch.randn(n, cin, *dims)
        ref = F.conv3d(x, conv.weight, conv.bias, s, p)
        with torch.no_grad():
            y = wc(x)
        assert y.shape == ref.shape
        assert rel_err(y, ref) < TOL, (m, n, dims, rel_err(y, ref))


def test_relu_bias_and_full_c3d_size():
    """C3D conv4a at full size (4 x 14 x 14, 256 -> 512): the shape the engine runs it at, with ReLU fused."""
    torch.manual_seed(1)
    conv = nn.Conv3d(256, 512, 3, padding=1)
    x = torch.randn(1, 256, 4, 14, 14)
    ref = torch.relu(conv(x))
    with torch.no_grad():
        y = WinogradConv3d(conv, m=4)(x, relu=True)
    assert rel_err(y, ref) < TOL
    assert (y >= 0).all()


def test_multiplies_are_fewer_by_the_tile_ratio():
    conv = nn.Conv3d(16, 32, 3, padding=1)
    direct = 32 * 16 * 27 * 4 * 8 * 8
    assert winograd.multiplies(conv, (4, 8, 8), 2) * 9 * 4 == direct * 16
    assert winograd.multiplies(conv, (4, 8, 8), 4) * 9 * 16 == direct * 36
    assert winograd.multiplies(conv, (4, 7, 7), 4) == winograd.multiplies(conv, (4, 8, 8), 4)  # padded tiles


def test_bad_conv_and_tile_size_are_refused():
    with pytest.raises(ValueError, match="stride 1"):
        WinogradConv3d(nn.Conv3d(3, 8, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="tile size 3"):
        WinogradConv3d(nn.Conv3d(3, 8, 3, padding=1), m=3)


@pytest.mark.parametrize("onednn", [True, False])
def test_gemm_through_onednn_or_torch_mm(monkeypatch, onednn):
    """The element GEMMs go through oneDNN where PyTorch has it and torch.mm otherwise: same products."""
    if onednn and not winograd._ONEDNN_LINEAR:
        pytest.skip("this PyTorch has no oneDNN linear")
    monkeypatch.setattr(winograd, "_ONEDNN_LINEAR", onednn)
    torch.manual_seed(2)
    x, w = torch.randn(70, 48), torch.randn(24, 48)
    assert rel_err(winograd._gemm(x, w), x @ w.t()) < 1e-6
    conv = nn.Conv3d(16, 24, 3, padding=1)
    xin = torch.randn(1, 16, 3, 9, 9)
    with torch.no_grad():
        assert rel_err(WinogradConv3d(conv, m=4)(xin), conv(xin)) < TOL


def test_writes_into_a_strided_destination():
    """`out=` a view (as the C3D engine passes the interior of its padded layout): only that view is written."""
    torch.manual_seed(3)
    conv = nn.Conv3d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 3, 6, 5)
    buf = torch.full((2, 16, 5, 8, 7), -7.0)
    interior = buf[:, :, 1:4, 1:7, 1:6]
    with torch.no_grad():
        WinogradConv3d(conv, m=2)(x, out=interior, relu=True)
        assert rel_err(interior, torch.relu(conv(x))) < TOL
    border = torch.ones_like(buf, dtype=torch.bool)
    border[:, :, 1:4, 1:7, 1:6] = False
    assert (buf[border] == -7.0).all()


def test_a_failing_onednn_op_falls_back_to_torch_mm(monkeypatch, caplog):
    """The oneDNN linear op is PyTorch-internal: if it fails, torch.mm takes over with one warning, same products."""

    def broken(*args):
        raise RuntimeError("no such schema")

    monkeypatch.setattr(winograd, "_ONEDNN_LINEAR", True)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken, raising=False)
    x, w = torch.randn(10, 12), torch.randn(6, 12)
    with caplog.at_level("WARNING", logger="prune3d.compact"):
        assert rel_err(winograd._gemm(x, w), x @ w.t()) < 1e-6
        assert rel_err(winograd._gemm(x, w), x @ w.t()) < 1e-6
    assert winograd._ONEDNN_LINEAR is False
    assert sum("torch.mm" in r.getMessage() for r in caplog.records) == 1

