"""compact/bench.py: dense vs compact timing, the kernel-rate benchmark, interleaved timing."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import compact
from compact.dense_paths import DENSE_PATHS, ENGINE_PATHS
from pruning import LayerRule
from tests.compact.conftest import (
    TOL,
    small_c3d,
)


def test_benchmark_smoke():
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    r = compact.benchmark(model, masks, (3, 8, 32, 32), batch_size=2, threads=1, repeats=1, warmup=0, rules=rules)
    for key in ("dense_ms", "sparse_ms", "speedup", "ideal", "max_rel_err", "layers"):
        assert key in r
    assert r["max_rel_err"] < TOL and r["max_rel_err_features"] < TOL  # fc8's input: fc7's output
    assert len(r["layers"]) == 8 and all(lr["compact_ms"] > 0 for lr in r["layers"])
    # the path each conv of the compact model runs; C3D's unpruned conv1 by the engine's own timed choice
    assert {lr["compact_path"] for lr in r["layers"]} <= set(DENSE_PATHS + ENGINE_PATHS)
    assert r["layers"][1]["compact_path"] in ENGINE_PATHS  # conv2 is pruned: its kernel, or Winograd if faster
    assert 2.5 < r["ideal"] < 3.5
    assert 0 < r["sparse_min_ms"] <= r["sparse_ms"] and 0 < r["dense_min_ms"] <= r["dense_ms"]
    assert r["speedup_min"] == pytest.approx(r["dense_min_ms"] / r["sparse_min_ms"])
    assert r["speedup_paired"] == pytest.approx(r["speedup"])  # one round: its ratio is the ratio of the medians
    assert "whole model" in compact.format_table(r) and "fastest of the repeats" in compact.format_table(r)
    # the roofline line: the report's kept MACs of two clips in the compact model's time, against the FMA peak
    from pruning import build_report

    kept = build_report(compact.masked_dense_copy(model, masks), masks, "", (3, 8, 32, 32), rules).macs_pruned
    assert r["kept_gmac_per_clip"] == pytest.approx(kept / 1e9)
    assert r["compact_kept_gmacs"] == pytest.approx(2 * kept / r["sparse_ms"] / 1e6)
    if compact.kernels_available():
        assert r["fma_peak_gmacs"] > 0 and "of this CPU's fp32 FMA peak" in compact.format_table(r)


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


def test_benchmark_runs_without_autograd(monkeypatch):
    """The whole benchmark runs under no_grad: the peers turn the compact and dense outputs into numpy arrays, which
    a tensor that requires grad refuses (a helper once took the decorator off `benchmark`, and every --against run
    failed)."""
    from compact import bench

    seen = []

    class Reached(Exception):
        pass

    class Spy:
        def __init__(self, *args, **kwargs):
            seen.append(torch.is_grad_enabled())
            raise Reached  # stop before the timing rounds

    monkeypatch.setattr(bench, "Against", Spy)
    model, masks, rules = small_c3d("c3d_kgrc_3.04x")
    with pytest.raises(Reached):
        compact.benchmark(model, masks, (3, 8, 32, 32), repeats=1, warmup=0, rules=rules, per_layer=False)
    assert seen == [False]
