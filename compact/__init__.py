"""Compact inference for pruned 3D CNNs: sparse Conv3d kernels that skip the pruned work.

    cm = compact.compile_sparse(model, masks, rules=rules)     # output == masked dense model
    result = compact.benchmark(model, masks, (3, 16, 112, 112), batch_size=1, threads=2, repeats=10)
    print(compact.format_table(result))
    compact.export_onnx(model, masks, "model.onnx", (3, 16, 112, 112))
    compact.save_compact(cm, "model_compact.pt")

A model type gets its compile passes (and, optionally, an engine of its own) from `compact.register_engine`; see
`compact/convert.py`. Modules: `layout` (the kernels' flat padded layout), `plan` (work lists of a pruned conv),
`scratch` (reused buffers), `dense_paths` (the dense conv paths and the timed choice), `winograd` (Winograd
F(m x m, 3x3) for unpruned convs), `modules`
(SparseConv3d, AutoConv3d), `chain` and `residual` (convs and residual stages run in the kernels' layout),
`c3d_engine` (C3D end to end), `convert` (passes, registry, compile_sparse), `surgery`, `bench`, `export`,
`peers` (other runtimes the benchmark runs beside the compact model: ONNX Runtime, OpenVINO, DeepSparse through
`deepsparse_worker`; a new one is a small `Peer` class under `@register_peer`), `quant` (bf16 and int8: calibration,
`set_precision`, the packed plans, the reference arithmetic):

    ranges = compact.quant.calibrate(masked_dense_model, clips)          # {conv name: [lo, hi]}
    cm = compact.compile_sparse(model, masks, rules=rules, precision="int8", ranges=ranges)

The kernel call is typed: `ext.sparse_conv(input=, ctx=, bias=, out=, write=)` takes a `layout.LayoutCtx` (the
prepared input and its `plan.KernelPlan`) and a `layout.OutputSpec` (where and how to write) and reads their fields
by name. A new plan field is one line in `csrc/plan.h` (`P3D_PLAN_ARRAYS` / `P3D_PLAN_SCALARS`) and one field of
`KernelPlan` (filled in `plan.kernel_plan`); `tests/compact/test_plan.py` checks that the two agree.

The kernel is one template over its arithmetic (csrc/kernel_impl.h: fp32, bf16 pairs, int8 quads; the bf16 and
int8 dot-product instructions in kern_avx512_bf16.cpp / kern_avx512_vnni.cpp, AMX tiles in kern_amx.cpp, portable
code everywhere else); docs/engine.md is the map for changing it.
The C++ kernels (AVX-512 / AVX2 / generic, OpenMP) are built with torch.utils.cpp_extension on first use and
cached; without a compiler everything runs through a pure-PyTorch path with the same results (logged once).
"""

from ._ext import kernel_isa, kernels_available, load_kernels
from .bench import benchmark, format_table
from .c3d_engine import CompactC3D
from .convert import compile_sparse, register_engine
from .export import export_onnx, load_compact, masked_dense_copy, save_compact
from .modules import SparseConv3d

__all__ = ["CompactC3D", "SparseConv3d", "benchmark", "compile_sparse", "export_onnx", "format_table",
           "kernel_isa", "kernels_available", "load_compact", "load_kernels", "masked_dense_copy",
           "register_engine", "save_compact"]
