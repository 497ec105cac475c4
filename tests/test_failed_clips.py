"""Clips that fail to load: counted and named; above --max-failed per epoch (or evaluation) the run stops with one
line instead of training on what is left (or on nothing)."""

from __future__ import annotations

import pytest

from datasets.clips import ClipDataset
from opt_main import cli

SMALL = ["--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32", "--short-side", "40",
         "--batch-size", "4", "--workers", "0", "--train", "--epochs", "1"]


def failing(monkeypatch, every: int) -> None:
    real = ClipDataset.__getitem__

    def getitem(self, k):
        if self.train and k % every == 0:
            raise ValueError(f"broken JPEG in video {self.video_ids[k]}")
        return real(self, k)

    monkeypatch.setattr(ClipDataset, "__getitem__", getitem)


@pytest.mark.parametrize("every", [1, 3])
def test_too_many_failed_clips_stop_the_run_with_one_line(synthetic, tmp_path, monkeypatch, capfd, every):
    failing(monkeypatch, every)
    assert cli([*SMALL, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path), "--name", "r"]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "epoch 1: training:" in err[0] and "--max-failed 0.01" in err[0], err
    assert "broken JPEG in video" in err[0]
    assert not (tmp_path / "r" / "dense.pth").exists() and not (tmp_path / "r" / "best.pth").exists()


def test_failed_clips_under_the_threshold_are_counted(synthetic, tmp_path, monkeypatch):
    failing(monkeypatch, 3)
    assert cli([*SMALL, "--data-location", str(synthetic["lmdb"]), "--save-dir", str(tmp_path), "--name", "r",
                "--max-failed", "0.5"]) == 0
    import json

    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["load_errors"] > 0
