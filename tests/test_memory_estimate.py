"""Absurd sizes are refused from an estimate made on the meta device, before anything is allocated."""

from __future__ import annotations

import pytest

from opt_main import cli


@pytest.mark.parametrize("argv,says", [
    (["--report", "--clip-len", "100000", "--config-file", "c3d_kgrc_3.04x"], "--clip-len 100000 --crop-size 112:"),
    (["--benchmark", "--arch", "r2+1d", "--crop-size", "4000", "--batch-size", "64", "--config-file",
      "r2+1d_kgrc_3.05x"], "--batch-size 64"),
])
def test_a_model_that_cannot_fit_is_one_line(argv, says, capfd):
    assert cli(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "GiB, this machine has" in err[0], err


def test_ordinary_sizes_pass_the_estimate(capfd):
    assert cli(["--report", "--config-file", "c3d_kgrc_3.04x"]) == 0
