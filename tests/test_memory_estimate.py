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


@pytest.mark.parametrize("argv,least", [
    (["--report", "--arch", "s3d", "--clip-len", "16", "--crop-size", "16"], "use at least --crop-size 17"),
    (["--report", "--arch", "s3d", "--clip-len", "2", "--crop-size", "64"], "use at least --clip-len 5"),
    (["--report", "--arch", "s3d", "--clip-len", "4", "--crop-size", "16"], "use at least --clip-len 5 --crop-size 17"),
    (["--benchmark", "--arch", "s3d-rt3d-ts", "--clip-len", "4", "--crop-size", "32", "--config-file", "s3d_2.09x"],
     "use at least --clip-len 5"),
])
def test_a_clip_too_small_for_the_model_is_one_line_with_the_smallest_it_takes(argv, least, capfd):
    """S3D's layers shrink a 16x16 crop (or a 4-frame clip) to nothing: one line naming the smallest sizes (found
    on the meta device), not PyTorch's traceback from inside the model; the sizes named do run."""
    assert cli(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the clip is too small for the model" in err[0] and least in err[0], err
    import torch

    from models import build_model
    t = int(argv[argv.index("--clip-len") + 1])
    c = int(argv[argv.index("--crop-size") + 1])
    words = least.split()
    t = int(words[words.index("--clip-len") + 1]) if "--clip-len" in words else t
    c = int(words[words.index("--crop-size") + 1]) if "--crop-size" in words else c
    with torch.no_grad():
        assert build_model(argv[argv.index("--arch") + 1], 10).eval()(torch.randn(1, 3, t, c, c)).shape == (1, 10)
