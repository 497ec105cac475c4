"""Raw UCF101/HMDB51 videos -> JPEG frame folders + list files (decoded with PyAV).

    python datasets/extract_videos.py -d ucf101          # ucf101/ + ucfTrainTestlist/ -> ucf101_frame/
    python datasets/extract_videos.py --dataset hmdb51 --videos hmdb51 --splits testTrainMulti_7030_splits \
        --out hmdb51_frame --split 1 --short-side 128 --workers 8

Output in ``--out``:
  <video_id>/00001.jpg ...    frames in decode order, short side resized to --short-side (1-based names)
  <video_id>/.done            JSON marker written last (atomically): the video is complete and is skipped on rerun
  train.txt, val.txt          one line per usable video: "<video_id> <num_frames> <label>" (label 0-based;
                              val = the official test list of --split)
  classes.txt                 class names, line i = label i
  dataset.json                dataset, split, short side, class names
  failed.txt                  one tab-separated line per problem video: video_id, split, status
                              (missing|empty|corrupt|truncated), kept|skipped, file, message
A truncated video keeps the frames decoded before the damage (and is listed in failed.txt as kept); missing,
empty and corrupt videos are left out of the lists (listed as skipped) and retried on the next run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python datasets/extract_videos.py, or from inside datasets/)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.errors import DISK_ERRORS, DataError, run_cli
from datasets.splits import DEFAULT_DIRS, SPLIT_NAMES, VideoEntry, index_videos, locate, read_splits
from datasets.video_io import VideoReadError, encode_jpeg, iter_frames

DONE = ".done"


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename, so readers never see a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_done(folder: Path) -> dict | None:
    try:
        return json.loads((folder / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _extract_one(args: tuple[str, str | None, str, int, int]) -> dict:
    video_id, path, out, short_side, quality = args
    folder = Path(out) / video_id
    if folder.exists():  # leftovers of an interrupted run: start this video again
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    from datasets.video_io import DecodeReport

    report = DecodeReport()
    try:
        for i, rgb in enumerate(iter_frames(path, short_side, report), 1):
            try:
                (folder / f"{i:05d}.jpg").write_bytes(encode_jpeg(rgb, quality))
            except OSError as exc:  # the output disk's problem, not the video's: stop the run, and say so
                shutil.rmtree(folder, ignore_errors=True)
                todo = DISK_ERRORS.get(exc.errno, "check --out")
                raise DataError(f"{out}: {exc.strerror or exc} while writing the frames of {video_id}; {todo}, "
                                "then run the same command again (finished videos are kept)") from None
    except VideoReadError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return {"video_id": video_id, "status": exc.status, "message": str(exc), "frames": 0, "path": path}
    except DataError:
        raise
    except Exception as exc:  # never stop the whole run for one video
        shutil.rmtree(folder, ignore_errors=True)
        msg = f"{type(exc).__name__}: {exc}"
        return {"video_id": video_id, "status": "corrupt", "message": msg, "frames": 0, "path": path}
    marker = {
        "video_id": video_id,
        "status": report.status,
        "message": report.message,
        "frames": report.frames,
        "width": report.width,
        "height": report.height,
        "source": path,
    }
    write_atomic(folder / DONE, json.dumps(marker))
    return {**marker, "path": path}


def extract(
    dataset: str,
    videos: str | os.PathLike,
    splits: str | os.PathLike,
    out: str | os.PathLike,
    split: int = 1,
    short_side: int = 128,
    quality: int = 90,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Extract every video of ``split`` (train and val); returns a summary dict. Resumable."""
    lists = read_splits(dataset, splits, split)
    index = index_videos(videos)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"dataset": dataset, "split": split, "short_side": short_side, "class_names": lists.class_names}
    old = out / "dataset.json"
    if old.is_file():
        prev = json.loads(old.read_text())
        if (prev.get("dataset"), prev.get("short_side")) != (dataset, short_side):
            raise DataError(
                f"{out} already holds {prev.get('dataset')} frames at short side {prev.get('short_side')}: "
                f"use another --out for {dataset} at short side {short_side}"
            )
    write_atomic(old, json.dumps(info, indent=1))
    write_atomic(out / "classes.txt", "".join(c + "\n" for c in lists.class_names))

    located: dict[str, list[VideoEntry]] = {s: locate(lists.videos[s], videos, index) for s in SPLIT_NAMES}
    results: dict[str, dict] = {}
    todo = []
    for entries in located.values():
        for e in entries:
            done = read_done(out / e.video_id)
            if done is not None:
                results[e.video_id] = {**done, "path": done.get("source"), "resumed": True}
            else:
                todo.append((e.video_id, str(e.path) if e.path else None, str(out), short_side, quality))
    if todo:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"extract {dataset}", unit="video")
        if workers > 1 and len(todo) > 1:
            with multiprocessing.get_context().Pool(min(workers, len(todo))) as pool:
                for r in pool.imap_unordered(_extract_one, todo):
                    results[r["video_id"]] = r
                    if bar:
                        bar.update()
        else:
            for job in todo:
                r = _extract_one(job)
                results[r["video_id"]] = r
                if bar:
                    bar.update()
        if bar:
            bar.close()

    summary: dict = {
        "out": str(out),
        "failed": [],
        "counts": {},
        "videos": len(results),
        "skipped": sum(bool(r.get("resumed")) for r in results.values()),  # finished in an earlier run
        "extracted": sum(r["status"] in ("ok", "truncated") and not r.get("resumed") for r in results.values()),
    }
    failed_lines = ["# video_id\tsplit\tstatus\tkept|skipped\tfile\tmessage\n"]
    for s in SPLIT_NAMES:
        lines, counts = [], Counter()
        for e in located[s]:
            r = results[e.video_id]
            counts[r["status"]] += 1
            counts["resumed"] += bool(r.get("resumed"))
            kept = r["status"] in ("ok", "truncated")
            if kept:
                lines.append(f"{e.video_id} {r['frames']} {e.label}\n")
            if r["status"] != "ok":
                fields = [e.video_id, s, r["status"], "kept" if kept else "skipped", r.get("path") or e.rel,
                          r.get("message", "")]
                failed_lines.append("\t".join(fields) + "\n")
                summary["failed"].append(
                    {"video_id": e.video_id, "split": s, "status": r["status"], "kept": kept, "message": fields[5]}
                )
        write_atomic(out / f"{s}.txt", "".join(lines))
        summary["counts"][s] = {"listed": len(located[s]), "written": len(lines), **counts}
    write_atomic(out / "failed.txt", "".join(failed_lines))
    return summary


def print_summary(summary: dict, file=sys.stdout) -> None:
    for s, c in summary["counts"].items():
        extra = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k not in ("listed", "written", "ok") and v)
        note = f" ({extra})" if extra else ""
        print(f"{s}: {c['written']} of {c['listed']} videos in {s}.txt{note}", file=file)
    if summary["failed"]:
        print(f"{len(summary['failed'])} problem video(s), listed in {Path(summary['out']) / 'failed.txt'}:", file=file)
        for f in summary["failed"][:20]:
            kept = "kept" if f["kept"] else "skipped"
            print(f"  {f['video_id']} [{f['split']}] {f['status']} ({kept}): {f['message']}", file=file)
        if len(summary["failed"]) > 20:
            print(f"  ... and {len(summary['failed']) - 20} more", file=file)


def default_videos_dir(dataset: str) -> str:
    d = DEFAULT_DIRS[dataset][0]
    # `unrar x UCF101.rar` gives UCF-101/; the original README's `unrar e` gives a flat ucf101/.
    if dataset == "ucf101" and not Path(d).exists() and Path("UCF-101").exists():
        return "UCF-101"
    return d


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", "-d", choices=list(DEFAULT_DIRS), default="ucf101")
    p.add_argument("--videos", help="folder of raw videos, flat or one folder per class (default: ucf101/ or hmdb51/)")
    p.add_argument("--splits", help="split folder (default: ucfTrainTestlist/ or testTrainMulti_7030_splits/)")
    p.add_argument("--out", "-o", help="output folder (default: ucf101_frame/ or hmdb51_frame/)")
    p.add_argument("--split", "-s", type=int, default=1, choices=[1, 2, 3])
    p.add_argument("--short-side", type=int, default=128,
                   help="resize the short side to N (256 for S3D); 0 keeps the size")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--workers", "-j", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    videos = a.videos or default_videos_dir(a.dataset)
    splits = a.splits or DEFAULT_DIRS[a.dataset][1]
    out = a.out or DEFAULT_DIRS[a.dataset][2]
    summary = extract(a.dataset, videos, splits, out, a.split, a.short_side, a.quality, a.workers)
    print_summary(summary)
    if summary["videos"] and summary["extracted"] + summary["skipped"] == 0:
        raise DataError(f"no video of the split could be read from {videos}: check --videos (see {out}/failed.txt)")
    return 0


if __name__ == "__main__":
    from datasets.extract_videos import main as _main  # workers must find _extract_one in an importable module

    sys.exit(run_cli(_main))
