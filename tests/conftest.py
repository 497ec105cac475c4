"""Shared fixtures: a tiny synthetic dataset of real AVI files, taken through extraction and LMDB once."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.create_lmdb import from_frames
from datasets.extract_videos import extract
from datasets.make_synthetic import make_synthetic


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    info = make_synthetic(root / "raw", classes=3, videos_per_class=4, frames=24, seed=0, workers=2)
    extract("ucf101", info["videos"], info["splits"], str(root / "frames"), short_side=40, workers=2,
            progress=False)
    from_frames(str(root / "frames"), str(root / "lmdb"))
    return {"raw": root / "raw", "videos": Path(info["videos"]), "splits": Path(info["splits"]),
            "frames": root / "frames", "lmdb": root / "lmdb"}
