"""Projection time per sparsity type for every prunable conv of C3D and R(2+1)D-18 (a benchmark, not a test).

    python scripts/bench_projections.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import build_model  # noqa: E402
from pruning import LayerRule, projection_mask  # noqa: E402
from pruning.projections import SPARSITY_TYPES  # noqa: E402
from pruning.sparsity_types import default_group_size  # noqa: E402

# The layers the papers prune: C3D conv2-conv5b; R(2+1)D-18 every spatial and temporal conv of layer1-4.
LAYERS = {
    "c3d": lambda n: n.startswith("conv") and n != "conv1.weight",
    "r2+1d": lambda n: n.startswith("layer") and "downsample" not in n,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{'arch':<7} {'type':<12} {'layers':>6} {'Mweights':>9} {'median s':>9} {'ms/layer':>9}")
    for arch, keep in LAYERS.items():
        torch.manual_seed(0)
        model = build_model(arch, 101)
        weights = [p.detach() for n, p in model.named_parameters() if p.dim() == 5 and keep(n)]
        for kind in SPARSITY_TYPES:
            ratios = {"kgr": 0.5, "kgc": 0.67} if kind == "kgrc" else {kind: 0.5}
            rule = LayerRule(kind, ratios, default_group_size(kind))
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                for w in weights:
                    projection_mask(w, rule)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            numel = sum(w.numel() for w in weights) / 1e6
            print(f"{arch:<7} {kind:<12} {len(weights):>6} {numel:>9.2f} {med:>9.3f} {1e3 * med / len(weights):>9.2f}")


if __name__ == "__main__":
    main()
