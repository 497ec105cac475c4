"""compact/dense_paths.py: the dense conv paths (one vocabulary) and the timed choice between them."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from tests.compact.conftest import (
    TOL,
    rel_err,
)


def test_fastest_mode_times_interleaved_and_skips_each_first_call():
    from compact.dense_paths import fastest_mode

    calls: list[str] = []

    def run(m):
        first = m not in calls
        calls.append(m)
        time.sleep({"a": (0.0, 0.004), "b": (0.03, 0.001)}[m][0 if first else 1])

    assert fastest_mode(run, ["a", "b"], rounds=3) == "b"  # b's slow first call (a warm-up) does not count
    assert calls == ["a", "b"] * 3


def test_dense_paths_one_vocabulary():
    """Every dense path computes conv(x); the engine's old names still read (saved models), unknown ones refused."""
    from compact.dense_paths import DENSE_PATHS, DenseConv, canonical_path, run_dense

    conv = nn.Conv3d(4, 6, 3, padding=1).eval()
    x = torch.randn(2, 4, 3, 5, 5)
    with torch.no_grad():
        ref = conv(x)
        for path in DENSE_PATHS:
            assert rel_err(run_dense(conv, x, path), ref) < TOL, path
            assert rel_err(DenseConv(conv, path)(x), ref) < TOL, path
    assert canonical_path("torch") == "contiguous" and canonical_path("torch_cl") == "channels_last"
    with pytest.raises(ValueError, match="unknown conv path"):
        run_dense(conv, x, "cuda")
