"""Shared fixtures: a tiny synthetic dataset of real AVI files, taken through extraction and LMDB once."""

from __future__ import annotations

from pathlib import Path

import lmdb
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


def lmdb_records(db: Path) -> dict[bytes, bytes]:
    """Every key and value of an LMDB, for record-by-record comparisons of builds."""
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        out = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    return out
