"""compact/export.py: ONNX export of the dense-equivalent model, save and load of the compact one."""

from __future__ import annotations

import torch

import compact
from compact.convert import compile_sparse
from compact.modules import SparseConv3d
from tests.compact.conftest import (
    SPATIAL,
    TOL,
    make_conv,
    rel_err,
    small_c3d,
)


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


def test_load_a_sparse_conv_pickled_before_the_typed_kernel_call(tmp_path):
    """A compact model saved by the engine before KernelPlan (caches `_offsets` and `_runs` of plain tuples) loads
    and runs: the caches are rebuilt."""
    conv, mask = make_conv(16, 24, (3, 3, 3), (1, 1, 1), (1, 1, 1), True, "kgrc")
    sc = SparseConv3d(conv, mask)
    x = torch.randn(2, 16, *SPATIAL)
    with torch.no_grad():
        y = sc(x)
    sc._offsets = sc.__dict__.pop("_kernel_plans")
    sc._runs = {k: tuple(v) for k, v in sc._runs.items()}
    torch.save(sc, tmp_path / "old.pt")
    loaded = torch.load(tmp_path / "old.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


def test_every_arch_exports_to_onnx_and_s3d_computes_the_same(tmp_path):
    """S3D's head pool took its kernel from the input's traced sizes and the export failed (the benchmark's
    --against then raised); every model exports, and (with ONNX Runtime installed) S3D's export gives PyTorch's
    output. (ONNX's own reference evaluator cannot run it: its 3-D MaxPool fails on S3D's padded pools.)"""
    import importlib.util

    import numpy as np
    import onnx

    from models import build_model

    torch.manual_seed(0)
    for arch in ("c3d", "r2+1d", "s3d", "s3d-rt3d-ts"):
        model = build_model(arch, 10, clip_len=8, crop_size=32).eval()
        path = compact.export_onnx(model, {}, tmp_path / f"{arch}.onnx", (3, 8, 32, 32))
        onnx.checker.check_model(onnx.load(str(path)))
        if arch == "s3d" and importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime

            x = torch.randn(2, 3, 8, 32, 32)
            with torch.no_grad():
                ref = model(x).numpy()
            out = onnxruntime.InferenceSession(str(path)).run(None, {"clip": x.numpy()})[0]
            assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
