"""Raw videos -> JPEG frame folders and split lists, decoded with PyAV.

    python datasets/extract_videos.py --dataset ucf101 --videos ucf101 --splits ucfTrainTestlist --out ucf101_frame
    cd datasets && python extract_videos.py -d ucf101         # the original README's spelling, same defaults

Writes ``<out>/<video_id>/00001.jpg ...`` (short side resized), ``<out>/train.txt`` and ``<out>/val.txt``
(lines ``<video_id> <num_frames> <label>``, 0-based labels), ``<out>/classes.txt`` (one class name per line,
in label order) and ``<out>/failed.txt`` (``<video_id>\\t<status>\\t<message>``: missing, empty, corrupt, or
truncated (frames kept)). Finished videos are skipped on a re-run; a broken video never stops the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.errors import DataError, run_cli  # noqa: E402
from datasets.splits import DEFAULT_DIRS, read_splits  # noqa: E402
from datasets.splits import locate as locate_videos  # noqa: E402
from datasets.video_io import VideoReadError, encode_jpeg, iter_frames  # noqa: E402


@dataclass
class Outcome:
    video_id: str
    status: str  # ok, skipped, truncated, missing, empty, corrupt
    frames: int = 0
    message: str = ""


def extract_one(job: tuple[str, str | None, str, int, int]) -> Outcome:
    """Decode one video into ``<out>/<video_id>/`` via a temporary folder renamed at the end (atomic)."""
    video_id, path, out, short_side, quality = job
    final = Path(out) / video_id
    if final.is_dir():
        return Outcome(video_id, "skipped", len(list(final.glob("*.jpg"))))
    tmp = Path(out) / f".{video_id}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from datasets.video_io import DecodeReport

    report = DecodeReport()
    try:
        for i, frame in enumerate(iter_frames(path, short_side, report), 1):
            (tmp / f"{i:05d}.jpg").write_bytes(encode_jpeg(frame, quality))
    except VideoReadError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        return Outcome(video_id, e.status, 0, str(e))
    os.replace(tmp, final)
    return Outcome(video_id, report.status, report.frames, report.message)


def extract(dataset: str, videos: str, splits: str, out: str, split: int = 1, short_side: int = 128,
            workers: int = 1, quality: int = 90, progress: bool = True) -> dict:
    """Extract every video of one split; returns a summary with the failures."""
    lists = read_splits(dataset, splits, split)
    entries = {name: locate_videos(es, videos) for name, es in lists.videos.items()}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(e.video_id, str(e.path) if e.path else None, str(out_dir), short_side, quality)
            for es in entries.values() for e in es]
    outcomes: dict[str, Outcome] = {}
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            it = pool.imap_unordered(extract_one, jobs, chunksize=1)
            for o in _progress(it, len(jobs), progress):
                outcomes[o.video_id] = o
    else:
        for o in _progress(map(extract_one, jobs), len(jobs), progress):
            outcomes[o.video_id] = o
    failed = [o for o in outcomes.values() if o.status not in ("ok", "skipped")]
    for name, es in entries.items():
        lines = [f"{e.video_id} {outcomes[e.video_id].frames} {e.label}\n" for e in es
                 if outcomes[e.video_id].frames > 0]
        (out_dir / f"{name}.txt").write_text("".join(lines))
    (out_dir / "classes.txt").write_text("".join(c + "\n" for c in lists.class_names))
    (out_dir / "failed.txt").write_text("".join(f"{o.video_id}\t{o.status}\t{o.message}\n"
                                                for o in sorted(failed, key=lambda o: o.video_id)))
    return {"videos": len(jobs), "extracted": sum(o.status == "ok" for o in outcomes.values()),
            "skipped": sum(o.status == "skipped" for o in outcomes.values()), "failed": failed,
            "out": str(out_dir)}


def _progress(it, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(it, total=total, desc="extract", unit="video", disable=not enabled)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", "-d", choices=sorted(DEFAULT_DIRS), default="ucf101")
    p.add_argument("--videos", help="folder of the unpacked videos (flat or <Class>/ layout)")
    p.add_argument("--splits", help="folder of the official split files")
    p.add_argument("--out", "-o", help="output folder of frame folders and lists")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    p.add_argument("--short-side", type=int, default=128, help="resize so the short side is N (256 for S3D)")
    p.add_argument("--workers", "-j", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    a = p.parse_args(argv)
    videos, splits, out = DEFAULT_DIRS[a.dataset]
    s = extract(a.dataset, a.videos or videos, a.splits or splits, a.out or out, a.split, a.short_side,
                a.workers, a.quality)
    print(f"{s['videos']} videos: {s['extracted']} extracted, {s['skipped']} already done, "
          f"{len(s['failed'])} with problems (listed in {s['out']}/failed.txt)")
    for o in s["failed"]:
        print(f"  {o.video_id}: {o.status}: {o.message}", file=sys.stderr)
    if s["videos"] and s["extracted"] + s["skipped"] == 0:
        raise DataError(f"no video of the split could be read from {a.videos or videos}: check --videos")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
