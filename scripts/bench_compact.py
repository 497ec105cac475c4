#!/usr/bin/env python
"""Dense vs compact (sparse kernel) latency of a pruned model, whole model and per conv layer.

    python scripts/bench_compact.py --arch c3d --profile c3d_kgrc_3.04x --batch-size 1 8 --threads 2
    python scripts/bench_compact.py --arch r2+1d --profile r2+1d_kgrc_3.05x --json out.json
    python scripts/bench_compact.py --arch c3d --against onnxruntime,openvino,deepsparse \
        --deepsparse-python /opt/deepsparse-venv/bin/python      # other runtimes in the same rounds
    python scripts/bench_compact.py --arch c3d --batch-size 1 \
        --against openvino,openvino-bf16,openvino-int8,onnxruntime-int8   # reduced precision (pip install nncf)
    python scripts/bench_compact.py --arch r2+1d --profile r2+1d_kgrc_3.05x --batch-size 8 --scratch-ab
    python scripts/bench_compact.py --arch c3d --precisions int8 --isa avx2   # what a CPU without AVX-512 runs

The same code as `opt_main.py --benchmark` (the model, masks and rules of `opt_main.pruned_model`, then
`compact.benchmark` and `compact.format_table`), for several batch sizes in one run and one JSON file: weights are
random (seeded by --seed), projected onto the profile (hard_prune), unless --resume gives a checkpoint (read
safely, weights_only) whose weights and masks (or, without masks, its zeros) are used.

`--channel-pruned-equal-macs` (C3D only; needs `pip install torch-pruning`) adds, side by side and timed
interleaved, Torch-Pruning's physically channel-pruned C3D (whole filters and the matching input channels removed,
a smaller dense model) at the profile's MAC reduction:

    python scripts/bench_compact.py --arch c3d --profile c3d_kgrc_3.04x --batch-size 1 8 --channel-pruned-equal-macs
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compact  # noqa: E402
from compact.bench import interleaved  # noqa: E402
from compact.quant import calibrate  # noqa: E402
from compact.scratch import ScratchPool, using  # noqa: E402
from compact.surgery import masked_dense_copy  # noqa: E402
from models.c3d import CONVS  # noqa: E402
from opt_main import pruned_model, resolve_defaults  # noqa: E402
from options import add_against_options, parse_args, positive_int  # noqa: E402
from pruning.report import build_report  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="c3d")
    p.add_argument("--profile", default="c3d_kgrc_3.04x", help="prune profile name or YAML path")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--crop-size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=101)
    p.add_argument("--width-mult", type=float, default=1.0, help="C3D: channel width multiplier")
    p.add_argument("--resume", default=None, help="checkpoint with model weights (and masks), as for opt_main.py")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--channel-pruned-equal-macs", action="store_true",
                   help="C3D: also time Torch-Pruning's channel-pruned C3D (uniform L2-magnitude channel ratio, "
                        "physically smaller dense model) at the profile's MAC reduction, side by side")
    add_against_options(p)
    p.add_argument("--calibration-clips", type=positive_int, default=32, metavar="N",
                   help="--against openvino-int8/onnxruntime-int8: how many clips their quantizers calibrate on")
    p.add_argument("--calibration", default=None, metavar="NPY",
                   help="--against openvino-int8/onnxruntime-int8: real clips to calibrate on, an .npy array "
                        "N x C x T x H x W as the model takes them (default: random normal clips, the benchmark "
                        "input's distribution)")
    p.add_argument("--precisions", default="", metavar="LIST",
                   help="also time the compact model at these precisions in the same rounds, e.g. bf16,int8 (int8 "
                        "calibrated on the same clips as the int8 peers: --calibration, or --calibration-clips random "
                        "normal clips with seed 0)")
    p.add_argument("--int8-weight-bits", type=int, choices=(8, 7), default=None,
                   help="--precisions int8: weights in 8 or 7 bits (default: 7 where the CPU has no AVX512_VNNI, "
                        "whose kernels run 7-bit weights with pmaddubsw; else 8)")
    p.add_argument("--isa", choices=("avx512", "avx2", "generic"), default=None,
                   help="run the compact kernels of this ISA (at most the CPU's), e.g. avx2 to time on an AVX-512 "
                        "machine what a CPU without AVX-512 runs (its int8 without VNNI: pmaddubsw on 7-bit weights, "
                        "vpmaddwd on 8-bit ones)")
    p.add_argument("--scratch-ab", action="store_true",
                   help="instead of the comparison with dense runtimes, time the compact model with its scratch "
                        "buffers under the default byte budget and without one, side by side, and report each one's "
                        "peak scratch memory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    for x in precisions:
        if x not in ("bf16", "int8"):
            p.error(f"--precisions: {x!r} is not a reduced precision; allowed: bf16, int8")
    args.precisions = precisions
    if args.int8_weight_bits is not None and "int8" not in precisions:
        p.error("--int8-weight-bits is for --precisions int8")
    if args.channel_pruned_equal_macs and args.arch != "c3d":
        p.error("--channel-pruned-equal-macs is implemented for --arch c3d only")
    if args.isa:
        ext = compact.load_kernels()
        if ext is None:
            p.error(f"--isa {args.isa}: the compact kernels did not build on this machine")
        try:
            ext.set_isa(args.isa)
        except RuntimeError:
            p.error(f"--isa {args.isa}: this CPU does not run it (the best it runs: {ext.isa()})")
    return args


def driver_args(args) -> argparse.Namespace:
    """`opt_main.py --benchmark`'s options for this run (its parser checks them)."""
    argv = ["--benchmark", "--arch", args.arch, "--config-file", args.profile, "--clip-len", str(args.clip_len),
            "--num-classes", str(args.num_classes), "--threads", str(args.threads), "--repeats", str(args.repeats),
            "--seed", str(args.seed), "--width-mult", str(args.width_mult)]
    if args.crop_size:
        argv += ["--crop-size", str(args.crop_size)]
    if args.resume:
        argv += ["--resume", args.resume]
    return resolve_defaults(parse_args(argv))


def torch_pruning_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:  # not installed as a distribution: the module's own (not always current) number
        import torch_pruning

        return torch_pruning.__version__


def torch_pruned_c3d(model, target: float, input_shape, tol: float = 0.005, max_runs: int = 10):
    """Torch-Pruning's physically channel-pruned copy of C3D at `target`x MAC reduction.

    tp.pruner.MetaPruner with L2 filter magnitude prunes one uniform channel ratio from every conv, fc6 and fc7; its
    dependency graph drops the matching input channels of each next layer, fc6's columns of the flattened conv5b
    output included. conv1's 3 input channels and fc8 (the classes) stay whole. The pruned model's MACs are counted
    like the profile's (weights x output positions of every conv and linear), and the ratio is searched until they
    give `target` within `tol`. Layers of equal width lose a channel at the same ratios, so the MAC reductions a
    uniform ratio can reach jump (up to ~2.5% apart at full width, more on narrow models): when the target falls
    between two neighbouring uniform ratios, the convs that differ between them (normally by one channel) take the
    higher ratio one by one, deepest first (a pruning_ratio_dict override), and the number moved is bisected.

    Returns (model, MAC reduction, uniform ratio, names of the convs at the next ratio).
    """
    import torch_pruning as tp

    names = [name for name, _ in CONVS]
    dense = build_report(model, {}, "", input_shape).macs_dense
    example = torch.randn(1, *input_shape)
    tried = []  # (relative MAC error, reduction, ratio, convs at the next ratio, model)

    def run(ratio, finer=(), finer_ratio=0.0):
        small = copy.deepcopy(model).eval().requires_grad_(True)  # the dependency graph is traced through autograd
        with torch.enable_grad():
            tp.pruner.MetaPruner(small, example, importance=tp.importance.MagnitudeImportance(p=2),
                                 pruning_ratio=ratio, ignored_layers=[small.fc8],
                                 pruning_ratio_dict={small.get_submodule(n): finer_ratio for n in finer}).step()
        red = dense / build_report(small, {}, "", input_shape).macs_dense
        tried.append((abs(red / target - 1), red, ratio, list(finer), small.requires_grad_(False)))
        return red, [small.get_submodule(n).out_channels for n in names]

    # uniform ratio: MACs of a conv scale about as (1 - ratio)^2, so interpolate log(reduction) against
    # -log(1 - ratio) inside the bracket [lo, hi] (reduction below / above the target)
    lo, hi = (0.0, 1.0, [model.get_submodule(n).out_channels for n in names]), None
    ratio = 1 - target ** -0.5
    while len(tried) < max_runs:
        red, widths = run(ratio)
        if abs(red / target - 1) <= tol:
            break
        if red < target:
            lo = (ratio, red, widths)
        else:
            hi = (ratio, red, widths)
        if hi is not None and max(a - b for a, b in zip(lo[2], hi[2])) <= 1:  # neighbouring uniform ratios
            break
        x0, y0 = -math.log1p(-lo[0]), math.log(lo[1])
        if hi is None:
            x = max(math.log(target) / (y0 / x0 if x0 > 0 and y0 > 0 else 2.0), x0 * 1.02 + 1e-3)
        else:
            x1, y1 = -math.log1p(-hi[0]), math.log(hi[1])
            x = x0 + (math.log(target) - y0) * (x1 - x0) / (y1 - y0)
            x = min(max(x, x0 + 0.1 * (x1 - x0)), x1 - 0.1 * (x1 - x0))
        ratio = min(1 - math.exp(-x), 0.95)
    if min(tried, key=lambda t: t[0])[0] > tol and hi is not None:
        # between two uniform ratios: the last k differing convs at the higher one, k bisected
        diff = [n for n, a, b in zip(names, lo[2], hi[2]) if a != b][::-1]
        a, b = 0, len(diff)
        while b - a > 1:
            k = (a + b) // 2
            red, _ = run(lo[0], diff[:k], hi[0])
            if abs(red / target - 1) <= tol:
                break
            a, b = (k, b) if red < target else (a, k)
    err, red, ratio, finer, small = min(tried, key=lambda t: t[0])
    if err > 0.01:
        logging.warning("Torch-Pruning: the closest channel-pruned C3D found has %.3fx MACs, not %.3fx", red, target)
    return small, red, ratio, finer


@torch.no_grad()
def scratch_ab(model, masks, rules, input_shape, bs, args) -> dict:
    """The compact model on a scratch pool with the default byte budget and on one without, interleaved."""
    torch.set_num_threads(args.threads)
    cm = compact.compile_sparse(model, masks, rules=rules)
    x = torch.randn(bs, *input_shape)
    pools = {"default_budget": ScratchPool(), "no_budget": ScratchPool(budget=1 << 62)}

    def run(pool):
        with using(pool):
            cm(x)

    t = interleaved({k: (lambda p=p: run(p)) for k, p in pools.items()}, args.repeats, args.warmup)
    res = {k: {"ms": t[k], "peak_mb": p.peak / 2**20, "budget_mb": p.limit / 2**20 if p.budget is None else None}
           for k, p in pools.items()}
    d, u = res["default_budget"], res["no_budget"]
    print(f"== scratch buffers, batch {bs} (interleaved): default budget ({d['budget_mb']:.0f} MB) {d['ms']:.1f} ms, "
          f"peak {d['peak_mb']:.0f} MB | no budget {u['ms']:.1f} ms, peak {u['peak_mb']:.0f} MB | time ratio "
          f"{d['ms'] / u['ms']:.3f}", flush=True)
    return {"batch_size": bs, "scratch_ab": res}


@torch.no_grad()
def side_by_side(model, masks, small, rules, input_shape, bs, args, info):
    """Interleaved: full dense, Torch-Pruning's channel-pruned dense `small` (both contiguous and channels_last, best
    taken) and the kernel-group compact model."""
    torch.set_num_threads(args.threads)
    ext = compact.load_kernels()
    if ext is not None:
        ext.set_num_threads(args.threads)
    dense = compact.masked_dense_copy(model, masks)
    full = compact.masked_dense_copy(model, {})
    cm = compact.compile_sparse(model, masks, rules=rules)
    x = torch.randn(bs, *input_shape)
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    cl = {k: copy.deepcopy(m).to(memory_format=torch.channels_last_3d) for k, m in (("full", full), ("small", small))}
    t = interleaved({"full": lambda: full(x), "full_cl": lambda: cl["full"](xc), "small": lambda: small(x),
                      "small_cl": lambda: cl["small"](xc), "kg_compact": lambda: cm(x),
                      "kg_masked_dense": lambda: dense(x)}, args.repeats, args.warmup)
    full_ms, small_ms = min(t["full"], t["full_cl"]), min(t["small"], t["small_cl"])
    res = {"arch": "c3d", "profile": "side by side", "batch_size": bs, **info,
           "full_dense_ms": full_ms, "channel_pruned_dense_ms": small_ms, "kg_compact_ms": t["kg_compact"],
           "channel_pruned_speedup": full_ms / small_ms, "kg_compact_speedup": full_ms / t["kg_compact"], "raw": t}
    print(f"== side by side, batch {bs} (interleaved, whole model, dense = best of contiguous/channels_last):\n"
          f"   full dense {full_ms:.1f} ms | {info['channel_pruner']} channel-pruned dense "
          f"({info['mac_ratio_channel_pruned']:.2f}x MACs) {small_ms:.1f} ms -> {res['channel_pruned_speedup']:.2f}x | "
          f"{args.profile} compact ({info['mac_ratio_profile']:.2f}x MACs) {t['kg_compact']:.1f} ms -> "
          f"{res['kg_compact_speedup']:.2f}x", flush=True)
    return res


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = driver_args(args)
    torch.manual_seed(args.seed)  # the random weights
    model, masks, rules = pruned_model(run)
    input_shape = (3, run.clip_len, run.crop_size, run.crop_size)
    small = None
    if args.channel_pruned_equal_macs:  # Torch-Pruning's C3D at the profile's MAC reduction, the same for every batch
        target = build_report(model, masks, "", input_shape).reduction
        small, mac_ratio, ratio, finer = torch_pruned_c3d(model, target, input_shape)
        convs = {name: small.get_submodule(name).out_channels for name, _ in CONVS}
        info = {"channel_pruner": f"torch-pruning {torch_pruning_version()}", "channel_pruning_ratio": ratio,
                "channel_pruning_next_step": finer, "channel_pruned_filters": convs,
                "mac_ratio_channel_pruned": mac_ratio, "mac_ratio_profile": target}
        step = f" ({', '.join(finer)} at the next uniform step)" if finer else ""
        print(f"== {info['channel_pruner']}: uniform channel pruning ratio {ratio:.4f}{step} -> {mac_ratio:.3f}x MACs "
              f"(profile {target:.3f}x); conv filters {list(convs.values())}", flush=True)
    ranges = None
    if "int8" in args.precisions:
        if args.calibration:
            clips = torch.from_numpy(np.load(args.calibration)[:args.calibration_clips]).float()
        else:  # the int8 peers' default clips (compact.peers.Peer.calibration)
            clips = torch.from_numpy(np.random.default_rng(0).standard_normal(
                (args.calibration_clips, *input_shape), dtype=np.float32))
        ranges = calibrate(masked_dense_copy(model, masks).eval(), [c[None] for c in clips])
    results = []
    for bs in args.batch_size:
        if args.scratch_ab:
            results.append(scratch_ab(model, masks, rules, input_shape, bs, args))
            continue
        r = compact.benchmark(model, masks, input_shape, batch_size=bs, threads=args.threads, repeats=args.repeats,
                              warmup=args.warmup, rules=rules, against=args.against.split(",") if args.against else (),
                              peer_options={"deepsparse_python": args.deepsparse_python,
                                            "calibration_clips": args.calibration_clips,
                                            "calibration": args.calibration},
                              precisions=args.precisions, ranges=ranges, weight_bits=args.int8_weight_bits)
        r.update(arch=args.arch, profile=args.profile)
        print(compact.format_table(r, f"== {args.arch} {args.profile}, batch {bs}"), flush=True)
        results.append(r)
        if small is not None:
            results.append(side_by_side(model, masks, small, rules, input_shape, bs, args, info))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
