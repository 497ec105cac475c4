"""A loop-based restatement of docs/algorithms.md's kernel groups and projections, independent of the vectorised
library, for brute-force checks."""

from __future__ import annotations

import itertools
import math

import torch


def removed(ratio: float, n: int) -> int:
    return math.floor(ratio * n + 0.5 + 1e-9)


def groups(shape, gM, gN):
    cout, cin = shape[:2]
    gM, gN = min(gM, cout), min(gN, cin)
    for p in range(0, cout, gM):
        for q in range(0, cin, gN):
            yield list(range(p, min(p + gM, cout))), list(range(q, min(q + gN, cin)))


def column_of(shape, k):
    kt, kh, kw = shape[2:]
    t, s = divmod(k, kh * kw)
    return s if kh * kw > 1 else t


def n_columns(shape):
    kt, kh, kw = shape[2:]
    return kh * kw if kh * kw > 1 else kt


def units(shape, kind, gM=8, gN=8):
    """Constraint domains: a list of (list of units, number of units to keep per the ratio) makers.

    Returns a list of domains; each domain is a list of units; a unit is a list of flat weight indices.
    """
    cout, cin = shape[:2]
    K = math.prod(shape[2:])
    flat = lambda m, n, k: (m * cin + n) * K + k  # noqa: E731
    if kind == "irregular":
        return [[[i] for i in range(cout * cin * K)]]
    if kind == "filter":
        return [[[flat(m, n, k) for n in range(cin) for k in range(K)] for m in range(cout)]]
    if kind == "channel":
        return [[[flat(m, n, k) for m in range(cout) for k in range(K)] for n in range(cin)]]
    gs = list(groups(shape, gM, gN))
    if kind == "blk-vanilla":
        return [[[flat(m, n, k) for m in R for n in C for k in range(K)] for R, C in gs]]
    if kind in ("kgs", "kgs-balanced"):
        per = [[[flat(m, n, k) for m in R for n in C] for k in range(K)] for R, C in gs]
        return per if kind == "kgs-balanced" else [[u for d in per for u in d]]
    if kind == "kgr":
        return [[[flat(m, n, k) for n in C for k in range(K)] for m in R] for R, C in gs]
    if kind == "kgc":
        return [[[flat(m, n, k) for m in R for n in C for k in range(K) if column_of(shape, k) == c]
                 for c in range(n_columns(shape))] for R, C in gs]
    raise ValueError(kind)


def feasible_masks(shape, kind, ratio, gM=8, gN=8):
    """Every mask that keeps exactly the allowed number of units in each domain."""
    numel = math.prod(shape)
    domains = units(shape, kind, gM, gN)
    choices = [list(itertools.combinations(d, len(d) - removed(ratio, len(d)))) for d in domains]
    for pick in itertools.product(*choices):
        mask = torch.zeros(numel, dtype=torch.bool)
        for chosen in pick:
            for unit in chosen:
                mask[unit] = True
        yield mask.view(shape)


def feasible_kgrc_masks(shape, rr, rc, gM=8, gN=8):
    cout, cin = shape[:2]
    K = math.prod(shape[2:])
    ncol = n_columns(shape)
    per_group = []
    for R, C in groups(shape, gM, gN):
        opts = []
        for rows in itertools.combinations(R, len(R) - removed(rr, len(R))):
            for cols in itertools.combinations(range(ncol), ncol - removed(rc, ncol)):
                opts.append([(m * cin + n) * K + k for m in rows for n in C for k in range(K)
                             if column_of(shape, k) in cols])
        per_group.append(opts)
    for pick in itertools.product(*per_group):
        mask = torch.zeros(math.prod(shape), dtype=torch.bool)
        for idx in pick:
            mask[idx] = True
        yield mask.view(shape)
