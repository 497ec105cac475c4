"""Dense vs compact latency, side by side in one run: whole model and per conv layer.

The dense side is the fastest dense path PyTorch offers, per layer: F.conv3d on contiguous input, on
channels_last_3d input, and oneDNN with the weight prepacked (torch.utils.mkldnn), each timed per layer on input
already in its layout; the whole dense model runs each conv with its fastest path, and the plain and
all-channels_last models are timed too (the best is `dense_ms`).
Timings interleave dense and compact, after warm-up, and report medians of `repeats`.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._ext import kernel_isa, load_kernels
from .c3d_engine import CompactC3D
from .chain import SparseConvPair
from .convert import compile_sparse, fold_batchnorm
from .dense_paths import DENSE_PATHS, KERNEL, DenseConv, run_dense
from .modules import AutoConv3d, SparseConv3d
from .peers import Against, Stopped, Timed
from .quant import convs_on_tiles, default_weight_bits, set_precision
from .residual import StemIntoStageVideoResNet
from .surgery import masked_dense_copy, set_submodule

if TYPE_CHECKING:
    from pruning import LayerRule

def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                best: dict[str, float] | None = None, raw: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median ms of each callable, calls interleaved round-robin after `warmup` rounds (a callable returning a
    `peers.Timed` is taken at its own word; one returning `peers.STOPPED` is left out); `best` (if given) receives
    each callable's fastest ms, the figure least disturbed by other jobs on a shared machine, and `raw` every
    round's ms (for ratios taken within a round)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    stopped: set[str] = set()
    for r in range(warmup + repeats):
        for k, f in fns.items():
            if k in stopped:
                continue
            t0 = time.perf_counter()
            own = f()
            dt = (time.perf_counter() - t0) * 1e3
            if isinstance(own, Stopped):  # failed during the timing (peers.Against.fns): no times at all
                stopped.add(k)
                del times[k]
                continue
            if isinstance(own, Timed):  # timed by the callee (a worker process, without the pipe's round trip)
                dt = float(own)
            if r >= warmup:
                times[k].append(dt)
    if best is not None:
        best.update({k: min(v) for k, v in times.items()})
    if raw is not None:
        raw.update(times)
    return {k: statistics.median(v) for k, v in times.items()}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _with_head_input(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(output, input of the classifier head) of one forward."""
    name = _last_head(model)
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())) \
        if name else None
    try:
        out = model(x)
    finally:
        if handle is not None:
            handle.remove()
    return out, (seen[-1] if seen else None)


def _last_head(model: nn.Module) -> str | None:
    """Name of the classifier head: the last top-level module that holds parameters (fc8, fc, classifier)."""
    named = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    return named[-1] if named else None


def _conv_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv3d):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: inputs.__setitem__(name, i[0])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _compact_conv(compact: nn.Module, name: str) -> nn.Module | None:
    if isinstance(compact, CompactC3D):
        return compact.convs[name] if name in compact.convs else None
    try:
        m = compact.get_submodule(name)
    except AttributeError:
        return None
    if isinstance(m, SparseConvPair):
        return m.first
    if isinstance(m, nn.Identity):  # the second conv of a chained pair
        for p in compact.modules():
            if isinstance(p, SparseConvPair) and p.second.name == name:
                return p.second
    return m


def pytorch_bf16_skip_reason() -> str | None:
    """Why PyTorch's own bf16 dense model is not timed here, or None. Without oneDNN's bf16 path (it needs AVX-512)
    a bf16 Conv3d falls back to a generic kernel, a baseline nobody would run that holds a benchmark for hours
    (docs/bench/history.md, 2026-12-02 session 5)."""
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return "this CPU has no oneDNN bf16 path (it needs AVX-512), PyTorch's bf16 conv3d falls back to a generic kernel"


@torch.no_grad()
def benchmark(model: nn.Module, masks: dict[str, torch.Tensor], input_shape: tuple[int, ...], *,
              batch_size: int = 1, threads: int = 2, repeats: int = 10, warmup: int = 2, rules: dict | None = None,
              per_layer: bool = True, compact: nn.Module | None = None, seed: int = 0,
              against: Sequence[str] = (), peer_options: Mapping[str, object] | None = None,
              precisions: Sequence[str] = (), ranges: Mapping[str, list[float]] | None = None,
              weight_bits: int | None = None, say: Callable[[str], None] = print) -> dict:
    """Time the masked dense model (fastest dense path) against `compile_sparse(model, masks)`.

    `input_shape` is one clip (C, T, H, W). Returns a dict with `dense_ms`, `sparse_ms`, `speedup`, `ideal` (whole
    model MAC ratio), `efficiency` (speedup / ideal), `amdahl_ideal` (speedup possible if every conv ran at its
    MAC ratio and the rest took dense time) and `amdahl_efficiency`, `max_rel_err`, `dense_candidates` and
    `layers` (per conv: dense_ms and its method, compact_ms, speedup, ideal, efficiency); `dense_min_ms`,
    `sparse_min_ms` and `speedup_min` are the fastest repeats and `speedup_paired` the median of the per-round
    ratios (fastest dense path / compact, run back to back), for machines shared with other jobs.
    `kept_gmac_per_clip` (the report's pruned MACs), `compact_kept_gmacs` (their rate in the compact model) and
    `fma_peak_gmacs` (this CPU's fp32 multiply-add peak with the kernels' ISA and threads, `ext.fma_peak`) place
    the compact model against the roofline of a direct kernel.

    `against` names other runtimes (`peers.PEERS`: onnxruntime, openvino, deepsparse) to run on the model exported
    to ONNX with the pruned weights and with dense ones, in the same rounds as the whole-model timing; a missing
    one is skipped with one line through `say`. Added keys: `compact_ms` (= sparse_ms), `against` (per runtime:
    dense_ms, pruned_ms, max_rel_err of its pruned output against the compact one, ...), `against_skipped`,
    `against_onnx` (the two files' provenance), `fastest_dense` (name and ms of the fastest dense fp32 runtime,
    PyTorch included; reduced-precision peers such as openvino-int8 are reported but are not this bar),
    `speedup_vs_fastest_dense` and its paired form. `peer_options` go to the runtimes (`deepsparse_python`; the
    quantizing peers' `calibration_clips`, `calibration`, `calibration_seed`).

    `precisions` ("bf16", "int8") adds the compact model at those precisions to the whole-model rounds (int8 with
    `ranges`, {conv name: [lo, hi]} from `quant.calibrate`, and `weight_bits`, default
    `quant.default_weight_bits()`, kept as the row's `weight_bits`): key `precisions`, per precision its `ms`, `min_ms`,
    `max_rel_err` against the dense fp32 model, `speedup_vs_fp32_paired` (over the fp32 compact model) and, for
    each peer of that precision (`against`), `speedup_vs_<peer>` over its dense-weight model; bf16 also against
    PyTorch's own bf16 dense model (`pytorch-bf16`: its `ms` and `max_rel_err`, `speedup_vs_pytorch-bf16`; on a CPU
    without oneDNN's bf16 path, `{"skipped": reason}`, said once through `say`).
    """
    from pruning.report import build_report

    prev_threads = torch.get_num_threads()
    ext = load_kernels()
    torch.set_num_threads(threads)
    if ext is not None:
        ext.set_num_threads(threads)
    try:
        dense = masked_dense_copy(model, masks)
        if compact is None:
            compact = compile_sparse(dense, masks, rules=rules)
        torch.manual_seed(seed)
        x = torch.randn(batch_size, *input_shape)
        (ref, ref_feat), (out, out_feat) = _with_head_input(dense, x), _with_head_input(compact, x)
        max_rel_err = _rel_err(out, ref)
        # randomly initialised nets can shrink activations to nothing before the head (S3D's features ~1e-7),
        # where equal logits prove little: the head's input is compared too
        feat_err = _rel_err(out_feat, ref_feat) if out_feat is not None and ref_feat is not None else None
        # the dense side gets the same inference folding of BatchNorm into the convs as the compact model
        folded = fold_batchnorm(dense)

        inputs = _conv_inputs(dense, x)
        layers, best_method = [], {}
        entry = compact.stem_entry()[1] if isinstance(compact, StemIntoStageVideoResNet) else None
        macs = {lr.name: lr for lr in build_report(dense, masks, "", tuple(input_shape), rules).layers}
        for name, xin in inputs.items():
            conv = dense.get_submodule(name)
            cands = {m: DenseConv(conv, m) for m in DENSE_PATHS}
            # each dense path gets its input already in its own layout and keeps its output there, as the compact
            # side is timed from its prepared buffer: the per-layer figures compare convolutions, not conversions
            native = {m: c.native_input(xin) for m, c in cands.items()}
            fns: dict[str, Callable] = {m: (lambda c=c, xm=native[m]: c.conv(xm)) for m, c in cands.items()}
            cmod = _compact_conv(compact, name)
            if isinstance(cmod, AutoConv3d) and cmod.kernel is not None and cmod.kernel is entry:
                cmod = cmod.kernel  # in the model it always runs as the kernel, writing into layer1's layout
            path = compact.chosen_mode(name, batch_size) if isinstance(compact, CompactC3D) else None
            if path not in (None, KERNEL):  # C3D's engine runs this conv through Winograd or PyTorch: time that
                dconv = compact.dense_conv(name)
                fns["compact"] = lambda c=dconv, xin=xin, path=path: run_dense(c, xin, path)
            elif isinstance(cmod, SparseConv3d) and ext is not None:
                buf, ctx = cmod.prepare(xin)
                fns["compact"] = lambda cmod=cmod, buf=buf, ctx=ctx: cmod.compute(ext, buf, ctx)
            elif cmod is not None:
                fns["compact"] = lambda cmod=cmod, xin=xin: cmod(xin)
            t = interleaved(fns, repeats if per_layer else 1, 1 if per_layer else 0)
            method = min(DENSE_PATHS, key=lambda m: t[m])
            best_method[name] = method
            lr = macs.get(f"{name}.weight")
            ideal = lr.macs_dense / max(lr.macs_pruned, 1) if lr else 1.0
            cms = t.get("compact", t[method])
            layers.append({"name": name, "shape": list(conv.weight.shape), "input": list(xin.shape),
                           "dense_ms": t[method], "dense_method": method,
                           "dense_all_ms": {m: t[m] for m in DENSE_PATHS}, "compact_ms": cms,
                           "compact_path": path or (cmod.chosen_mode(xin) if isinstance(cmod, AutoConv3d) else None)
                           or KERNEL,
                           "speedup": t[method] / cms, "ideal": ideal, "efficiency": t[method] / cms / ideal})

        fastest = copy.deepcopy(dense)
        for name, method in best_method.items():
            set_submodule(fastest, name, DenseConv(dense.get_submodule(name), method))
        cl = copy.deepcopy(dense).to(memory_format=torch.channels_last_3d)
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        fastest_ms: dict[str, float] = {}
        rounds: dict[str, list[float]] = {}
        pytorch = {"per_layer_fastest": lambda: fastest(x), "contiguous": lambda: dense(x),
                   "channels_last": lambda: cl(x_cl)}
        bits = default_weight_bits() if weight_bits is None else weight_bits
        reduced = {p: set_precision(compile_sparse(dense, masks, rules=rules), p, ranges, bits) for p in precisions}
        reduced_err = {p: _rel_err(m(x), ref) for p, m in reduced.items()}
        # PyTorch's own bf16 (the dense model in bfloat16, channels_last: oneDNN, on AMX tiles where the CPU has
        # them), the bf16 a PyTorch user gets without any other runtime
        torch_bf16, torch_bf16_err = {}, None
        torch_bf16_skip = None if "bf16" not in precisions else pytorch_bf16_skip_reason()
        if torch_bf16_skip:
            say(f"pytorch-bf16: skipped: {torch_bf16_skip}")
        elif "bf16" in precisions:
            dense_bf16 = copy.deepcopy(dense).to(torch.bfloat16).to(memory_format=torch.channels_last_3d)
            x_bf16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
            torch_bf16 = {"pytorch-bf16": lambda: dense_bf16(x_bf16)}
            torch_bf16_err = _rel_err(dense_bf16(x_bf16).float(), ref)
        with Against(against, threads, options=peer_options, say=say, seed=seed) as peers:
            peers.prepare(dense, masks, x, out)
            t = interleaved({**pytorch, "compact": lambda: compact(x),
                             **{f"compact:{p}": (lambda m=m: m(x)) for p, m in reduced.items()}, **torch_bf16,
                             **peers.fns()}, repeats, warmup, fastest_ms, rounds)
            others = peers.summary(t, rounds, fastest_ms, "compact")
            skipped, onnx = dict(peers.skipped), dict(peers.onnx)
        by_precision = {}
        for p in reduced:
            key = f"compact:{p}"
            row = {"ms": t[key], "min_ms": fastest_ms[key], "max_rel_err": reduced_err[p],
                   "speedup_vs_fp32_paired": statistics.median(c / r for c, r in zip(rounds["compact"], rounds[key])),
                   "convs_on_amx_tiles": list(convs_on_tiles(reduced[p], p))}
            if p == "int8":
                row["weight_bits"] = bits
            if p == "bf16" and torch_bf16_skip:
                row["pytorch-bf16"] = {"skipped": torch_bf16_skip}
            elif p == "bf16":
                row["pytorch-bf16"] = {"ms": t["pytorch-bf16"], "max_rel_err": torch_bf16_err}
                row["speedup_vs_pytorch-bf16"] = t["pytorch-bf16"] / t[key]
                row["speedup_vs_pytorch-bf16_paired"] = statistics.median(
                    d / c for d, c in zip(rounds["pytorch-bf16"], rounds[key]))
            for name, r in others.items():
                if r.get("dtype") == p and r.get("dense_ms") is not None:
                    row[f"speedup_vs_{name}"] = r["dense_ms"] / t[key]
                    row[f"speedup_vs_{name}_paired"] = statistics.median(
                        d / c for d, c in zip(rounds[f"{name}:dense"], rounds[key]))
            by_precision[p] = row
        cands = {k: t[k] for k in pytorch}
        dense_ms, sparse_ms = min(cands.values()), t["compact"]
        # the fastest dense path and the compact model run back to back in each round: the median of the per-round
        # ratios cancels slow drifts of a shared machine that the ratio of the two medians does not
        best_dense = min(cands, key=cands.get)
        paired = statistics.median(d / c for d, c in zip(rounds[best_dense], rounds["compact"]))
        dense_min = min(fastest_ms[k] for k in pytorch)
        # the bar: the fastest dense fp32 runtime of the same rounds, PyTorch's fastest path included (the compact
        # model computes fp32; bf16 and int8 peers are reported beside it, not as its bar)
        dense_runs = {"pytorch": (dense_ms, rounds[best_dense])}
        dense_runs.update({n: (r["dense_ms"], rounds[f"{n}:dense"]) for n, r in others.items()
                           if r.get("dense_ms") is not None and r.get("dtype", "f32") == "f32"})
        bar = min(dense_runs, key=lambda n: dense_runs[n][0])
        bar_paired = statistics.median(d / c for d, c in zip(dense_runs[bar][1], rounds["compact"]))
        report = build_report(dense, masks, "", tuple(input_shape), rules)
        ideal = report.reduction
        conv_dense = sum(lr["dense_ms"] for lr in layers)
        rest = max(dense_ms - conv_dense, 0.0)
        amdahl = dense_ms / (rest + sum(lr["dense_ms"] / lr["ideal"] for lr in layers))
        speedup = dense_ms / sparse_ms
        # the roofline: the kept multiply-adds per second against this CPU's fp32 FMA rate (kernels' ISA, threads)
        kept_gmacs = report.macs_pruned * batch_size / sparse_ms / 1e6
        # a peak is a maximum: the best of three, as single readings on a shared VM sporadically give half
        # (C3D at batch 8: 124 against 224 GMAC/s, docs/bench/history.md)
        peak = max(ext.fma_peak(100) for _ in range(3)) if ext is not None else None
        return {"input_shape": [batch_size, *input_shape], "batch_size": batch_size, "threads": threads,
                "repeats": repeats, "isa": kernel_isa(), "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                "speedup": speedup, "ideal": ideal, "efficiency": speedup / ideal, "amdahl_ideal": amdahl,
                "dense_min_ms": dense_min, "sparse_min_ms": fastest_ms["compact"],
                "speedup_min": dense_min / fastest_ms["compact"], "speedup_paired": paired,
                "amdahl_efficiency": speedup / amdahl, "max_rel_err": max_rel_err, "max_rel_err_features": feat_err,
                "dense_candidates": cands,
                "batchnorm_folded": folded,
                "compact_ms": sparse_ms, "against": others, "against_skipped": skipped, "against_onnx": onnx,
                "fastest_dense": {"name": bar, "ms": dense_runs[bar][0]},
                "speedup_vs_fastest_dense": dense_runs[bar][0] / sparse_ms,
                "speedup_vs_fastest_dense_paired": bar_paired, "precisions": by_precision,
                "kept_gmac_per_clip": report.macs_pruned / 1e9, "compact_kept_gmacs": kept_gmacs,
                "fma_peak_gmacs": peak, "layers": layers}
    finally:
        torch.set_num_threads(prev_threads)
        if ext is not None:
            ext.set_num_threads(prev_threads)


def format_table(result: dict, title: str = "") -> str:
    """Per-layer and whole-model table of a `benchmark` result."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"input {tuple(result['input_shape'])}, {result['threads']} threads, kernels: {result['isa']}, "
                 f"median of {result['repeats']}")
    lines.append(f"{'layer':<28} {'dense ms':>9} {'(path)':<14} {'compact ms':>10} {'(path)':<8} {'speedup':>8} "
                 f"{'ideal':>6} {'eff':>5}")
    for lr in result["layers"]:
        lines.append(f"{lr['name']:<28} {lr['dense_ms']:9.2f} {lr['dense_method']:<14} {lr['compact_ms']:10.2f} "
                     f"{lr.get('compact_path', ''):<8} {lr['speedup']:7.2f}x {lr['ideal']:5.2f}x "
                     f"{lr['efficiency']:5.2f}")
    r = result
    cand = ", ".join(f"{k} {v:.1f}" for k, v in r["dense_candidates"].items())
    lines.append(f"{'whole model':<28} {r['dense_ms']:9.2f} {'':<14} {r['sparse_ms']:10.2f} {'':<8} "
                 f"{r['speedup']:7.2f}x {r['ideal']:5.2f}x {r['efficiency']:5.2f}")
    lines.append(f"dense candidates (ms): {cand}")
    if "speedup_min" in r:
        lines.append(f"fastest of the repeats (least disturbed by other jobs): dense {r['dense_min_ms']:.1f} ms, "
                     f"compact {r['sparse_min_ms']:.1f} ms -> {r['speedup_min']:.2f}x")
    if "speedup_paired" in r:
        lines.append(f"median of the per-round ratios (dense and compact back to back): {r['speedup_paired']:.2f}x "
                     f"-> efficiency {r['speedup_paired'] / r['ideal']:.2f}")
    lines.append(f"Amdahl ideal (convs at their MAC ratio, rest dense) {r['amdahl_ideal']:.2f}x -> efficiency "
                 f"{r['amdahl_efficiency']:.2f}; max rel err {r['max_rel_err']:.2e}"
                 + (f" (head input {r['max_rel_err_features']:.2e})" if r.get("max_rel_err_features") is not None
                    else ""))
    if r.get("fma_peak_gmacs"):
        lines.append(f"roofline: {r['kept_gmac_per_clip']:.2f} GMAC kept per clip, run at "
                     f"{r['compact_kept_gmacs']:.0f} GMAC/s = {r['compact_kept_gmacs'] / r['fma_peak_gmacs']:.0%} "
                     "of this CPU's fp32 FMA peak "
                     f"({r['fma_peak_gmacs']:.0f} GMAC/s, {r['threads']} threads, {r['isa']})")
    lines.extend(_against_lines(r))
    lines.extend(_precision_lines(r))
    return "\n".join(lines)


def _precision_lines(r: dict) -> list[str]:
    """The compact model at reduced precisions (same rounds as the whole-model timing)."""
    if not r.get("precisions"):
        return []
    lines = [f"compact at reduced precision (whole model, same rounds; fp32 {r['compact_ms']:.1f} ms):"]
    for p, row in r["precisions"].items():
        peers = ", ".join(f"{k[len('speedup_vs_'):]} {v:.2f}x" for k, v in row.items()
                          if k.startswith("speedup_vs_") and not k.endswith("_paired") and k != "speedup_vs_fp32")
        on, n = row.get("convs_on_amx_tiles", (0, 0))
        bits = f" ({row['weight_bits']}-bit weights)" if "weight_bits" in row else ""
        lines.append(f"  {p}{bits}: {row['ms']:.1f} ms, {row['speedup_vs_fp32_paired']:.2f}x over fp32 (per-round "
                     "ratio), "
                     f"max rel err {row['max_rel_err']:.1e} vs dense fp32" + (f"; vs {peers}" if peers else "")
                     + (f" (AMX tiles in {on} of {n} convs)" if on else ""))
    return lines


def _ms(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def _against_lines(r: dict) -> list[str]:
    """The other runtimes' rows of a benchmark result (same rounds as the whole-model timing)."""
    if not r.get("against") and not r.get("against_skipped"):
        return []
    lines = [f"against other runtimes (whole model, same rounds, median ms; compact {r['compact_ms']:.1f} ms):",
             f"{'runtime':<16} {'version':<10} {'dense':>8} {'pruned':>8} {'max rel err':>11} "
             f"{'compact vs dense':>16} {'vs pruned':>9}",
             f"{'pytorch':<16} {torch.__version__.split('+')[0]:<10} {r['dense_ms']:8.1f} {'-':>8} {'-':>11} "
             f"{r['speedup']:15.2f}x {'-':>9}"]
    for name, a in r.get("against", {}).items():
        err = f"{a['max_rel_err']:.1e}" if a.get("max_rel_err") is not None else "-"
        vs = [f"{a[f'speedup_vs_{v}']:.2f}x" if a.get(f"speedup_vs_{v}") is not None else "-"
              for v in ("dense", "pruned")]
        lines.append(f"{name:<16} {str(a.get('version', '?'))[:10]:<10} {_ms(a.get('dense_ms')):>8} "
                     f"{_ms(a.get('pruned_ms')):>8} {err:>11} {vs[0]:>16} {vs[1]:>9}")
        for variant, why in a.get("errors", {}).items():
            lines.append(f"  {name} {variant}: did not run ({why})")
        lines.extend(f"  {note}" for note in a.get("notes", []))
    fd = r["fastest_dense"]
    lines.append(f"fastest dense fp32 runtime: {fd['name']} {fd['ms']:.1f} ms -> compact "
                 f"{r['speedup_vs_fastest_dense']:.2f}x (median of the per-round ratios "
                 f"{r['speedup_vs_fastest_dense_paired']:.2f}x)")
    for why in r.get("against_skipped", {}).values():
        lines.append(f"skipped: {why}")
    return lines


@torch.no_grad()
def pattern_rates(conv: nn.Conv3d, rules: dict[str, LayerRule | None], input_shape: tuple[int, ...], *,
                  threads: int = 2, repeats: int = 7, warmup: int = 2, seed: int = 0) -> dict:
    """How fast the kernel runs one conv under several pruning patterns, against PyTorch's dense paths.

    `rules` maps a label to the LayerRule projecting the conv's weight (None: unpruned); `input_shape` is
    (N, C, T, H, W). Returns `patterns`: per label the kept MACs, pairs and filters per task of the kernel's plan,
    `compact_ms` (the kernel call alone, input already in its layout), `gmacs` (kept GMAC/s) and `max_rel_err`
    against the masked dense conv; and `dense`: each dense path's ms and GMAC/s on the unpruned conv. All timed
    interleaved, medians of `repeats`.
    """
    from pruning import project

    ext = load_kernels()
    if ext is None:
        raise RuntimeError("pattern_rates times the C++ kernels, which could not be built here (see the log above)")
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    ext.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        conv = copy.deepcopy(conv).float().eval()
        x = torch.randn(*input_shape)
        fns: dict[str, Callable[[], object]] = {}
        rows = []
        for label, rule in rules.items():
            mask = project(conv.weight, rule)[1] if rule is not None else torch.ones_like(conv.weight, dtype=torch.bool)
            sc = SparseConv3d(conv, mask, name=label)
            buf, ctx = sc.prepare(x)
            out = sc.compute(ext, buf, ctx)
            ref = F.conv3d(x, conv.weight * mask, conv.bias, conv.stride, conv.padding)
            # into a kept output: a fresh one is page-faulted in on every call (tens of MB here), which would time
            # the allocator rather than the kernel
            fns[label] = lambda sc=sc, buf=buf, ctx=ctx, out=out: sc.write(ext, buf, ctx, out, ctx.outd)
            npairs = np.diff(sc.plan.task_pstart)
            rows.append({"pattern": label, "macs": int(mask.sum()) * out[0, 0].numel() * x.shape[0],
                         "pairs_per_task": float(npairs.mean()) if len(npairs) else 0.0,
                         "filters_per_task": float(sc.plan.task_G.mean()) if len(npairs) else 0.0,
                         "max_rel_err": _rel_err(out, ref)})
        for method in DENSE_PATHS:
            d = DenseConv(conv, method)
            xin = d.native_input(x)
            fns[f"dense:{method}"] = lambda d=d, xin=xin: d.conv(xin)
        ms = interleaved(fns, repeats, warmup)
        for r in rows:
            r["compact_ms"] = ms[r["pattern"]]
            r["gmacs"] = r["macs"] / ms[r["pattern"]] / 1e6
        full = conv.weight.numel() * out[0, 0].numel() * x.shape[0]
        dense = {m: {"ms": ms[f"dense:{m}"], "gmacs": full / ms[f"dense:{m}"] / 1e6} for m in DENSE_PATHS}
        return {"input_shape": list(input_shape), "threads": threads, "isa": kernel_isa(), "dense": dense,
                "patterns": rows}
    finally:
        torch.set_num_threads(prev)
        ext.set_num_threads(prev)
