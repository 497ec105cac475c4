"""Clips per second: the LMDB loader vs decoding the same clips from the original videos with PyAV.

    python scripts/bench_loader.py --lmdb data/demo/lmdb --videos data/demo/raw/UCF-101 [--clips 64]

Both sides use the same sampling, transforms and DataLoader; only where frames come from differs. Run side by side
in one process, interleaved per worker setting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import LmdbClips  # noqa: E402
from datasets.splits import index_videos  # noqa: E402
from datasets.video_io import read_frames  # noqa: E402


class VideoFileClips(LmdbClips):
    """The same clips, decoded from the video files (PyAV) instead of the LMDB's JPEGs."""

    def __init__(self, lmdb_path: Path, videos: Path, **kw) -> None:
        super().__init__(lmdb_path, **kw)
        index = index_videos(videos)
        self.paths = [next(p for name, p in index.items() if Path(name).stem == vid) for vid in self.video_ids]
        self.decode_short_side = kw["short_side"]  # same frame size as extraction wrote into the LMDB

    def frames(self, video: int, indices: list[int]) -> np.ndarray:
        return read_frames(self.paths[video], indices, self.decode_short_side)


def rate(ds, n: int, workers: int) -> float:
    """Clips/s over n clips (the dataset cycled if smaller), after a warm-up pass that starts the workers."""
    subset = Subset(ds, [i % len(ds) for i in range(n)])
    loader = DataLoader(subset, batch_size=8, num_workers=workers, persistent_workers=workers > 0)
    for _ in zip(range(2), loader):  # warm-up: worker start-up, imports, lazy LMDB open, page cache
        pass
    t0 = time.perf_counter()
    count = sum(len(batch[0]) for batch in loader)
    return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lmdb", required=True, help="folder with train.lmdb")
    ap.add_argument("--videos", required=True, help="the original videos")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--crop-size", type=int, default=112)
    a = ap.parse_args()
    torch.set_num_threads(1)
    kw = dict(clip_len=a.clip_len, crop_size=a.crop_size, short_side=a.short_side, sampling="segment", test_clips=1,
              mean=(0.45,) * 3, std=(0.225,) * 3, train=True)
    lmdb_ds = LmdbClips(Path(a.lmdb) / "train.lmdb", **kw)
    video_ds = VideoFileClips(Path(a.lmdb) / "train.lmdb", Path(a.videos), **kw)
    print(f"{'workers':>7} {'LMDB clips/s':>13} {'PyAV clips/s':>13} {'ratio':>7}")
    for workers in (0, 2):
        lm = rate(lmdb_ds, a.clips, workers)
        vi = rate(video_ds, a.clips, workers)
        print(f"{workers:>7} {lm:>13.1f} {vi:>13.1f} {lm / vi:>6.1f}x")


if __name__ == "__main__":
    main()
