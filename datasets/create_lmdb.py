"""Frame folders (or videos directly) -> one clip LMDB per split (format: datasets/lmdb_format.py).

    python datasets/create_lmdb.py --frames ucf101_frame --out data/ucf101_lmdb          # train.lmdb + val.lmdb
    python datasets/create_lmdb.py --from-videos --dataset ucf101 --videos ucf101 --splits ucfTrainTestlist \\
        --out data/ucf101_lmdb
    cd datasets && python create_lmdb.py -d ucf101_frame -s train -vr 0 9537             # the original spelling

An interrupted build resumes: records go to ``<split>.lmdb.partial`` and videos already there are skipped; the
metadata record is written and the folder renamed to ``<split>.lmdb`` only when every video is in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.errors import DataError, run_cli  # noqa: E402
from datasets.lmdb_format import FORMAT, FORMAT_VERSION, MAP_SIZE, META_KEY, encode_record, video_key  # noqa: E402
from datasets.splits import locate as locate_videos  # noqa: E402
from datasets.splits import read_splits  # noqa: E402
from datasets.video_io import VideoReadError, video_to_jpegs  # noqa: E402

SPLITS = ("train", "val")


def read_frame_list(frames: Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(video id, label) pairs of ``<frames>/<split>.txt`` and the class names of ``classes.txt``."""
    lst = frames / f"{split}.txt"
    if not lst.is_file():
        raise DataError(f"{lst}: no list file; run datasets/extract_videos.py first (it writes {split}.txt)")
    videos = []
    for n, line in enumerate(lst.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
            raise DataError(f"{lst}:{n}: expected '<video_id> <num_frames> <label>', got {line!r}")
        videos.append((parts[0], int(parts[2])))
    classes_file = frames / "classes.txt"
    names = classes_file.read_text().split() if classes_file.is_file() else \
        [str(i) for i in range(max((lbl for _, lbl in videos), default=-1) + 1)]
    return videos, names


def frame_jpegs(frames: Path, video_id: str) -> list[bytes]:
    folder = frames / video_id
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise DataError(f"{folder}: no frames; re-run extract_videos.py (see failed.txt there)")
    return [f.read_bytes() for f in files]


def build(out: Path, split: str, items: list[tuple[str, int]], class_names: list[str],
          load: Callable[[str], list[bytes]], meta_extra: dict | None = None, progress: bool = True) -> dict:
    """Write ``<out>/<split>.lmdb``; `load(video_id)` gives a video's JPEG frames. Returns the metadata."""
    import lmdb
    from tqdm import tqdm

    final = out / f"{split}.lmdb"
    if final.exists():
        print(f"{final} exists: nothing to do (delete it to rebuild)")
        return json.loads(lmdb.open(str(final), readonly=True, lock=False).begin().get(META_KEY))
    partial = out / f"{split}.lmdb.partial"
    out.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(partial), map_size=MAP_SIZE, subdir=True, sync=True)
    frames_per_video, failed = [], []
    with env:
        with env.begin() as txn:
            done = {bytes(k) for k in txn.cursor().iternext(keys=True, values=False)}
        for i, (vid, label) in enumerate(tqdm(items, desc=f"{split}.lmdb", unit="video", disable=not progress)):
            key = video_key(i)
            if key in done:
                with env.begin() as txn:
                    frames_per_video.append(int.from_bytes(txn.get(key)[12:16], "little"))
                continue
            try:
                jpegs = load(vid)
            except (DataError, VideoReadError) as e:
                failed.append(f"{vid}: {e}")
                raise DataError(f"video {vid} ({split}): {e}; fix or drop it from the list, then run again "
                                "(finished videos are kept)") from None
            with env.begin(write=True) as txn:
                txn.put(key, encode_record(label, jpegs))
            frames_per_video.append(len(jpegs))
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "split": split, "class_names": class_names,
                "num_videos": len(items), "video_ids": [v for v, _ in items], "labels": [lbl for _, lbl in items],
                "num_frames": frames_per_video, **(meta_extra or {})}
        with env.begin(write=True) as txn:
            txn.put(META_KEY, json.dumps(meta).encode())
        env.sync(True)
    os.replace(partial, final)
    return meta


def from_frames(frames: str, out: str, splits=SPLITS, video_range: tuple[int, int] | None = None) -> list[dict]:
    frames_dir = Path(frames)
    if not frames_dir.is_dir():
        raise DataError(f"{frames_dir}: no such frames folder; run datasets/extract_videos.py first")
    metas = []
    for split in splits:
        items, names = read_frame_list(frames_dir, split)
        if video_range:
            items = items[video_range[0]: video_range[1]]
        if not items:  # e.g. every video of the split failed to extract: never build an empty database
            raise DataError(f"{frames_dir / (split + '.txt')}: lists no videos; see {frames_dir / 'failed.txt'} and "
                            "run datasets/extract_videos.py again")
        metas.append(build(Path(out), split, items, names, lambda v: frame_jpegs(frames_dir, v),
                           {"source": str(frames_dir)}))
    return metas


def from_videos(dataset: str, videos: str, splits_dir: str, out: str, split: int = 1, short_side: int = 128,
                splits=SPLITS) -> list[dict]:
    lists = read_splits(dataset, splits_dir, split)
    metas = []
    for name in splits:
        entries = locate_videos(lists.videos[name], videos)
        paths = {e.video_id: e.path for e in entries}
        missing = [e.video_id for e in entries if e.path is None]
        if missing:
            raise DataError(f"{videos}: {len(missing)} videos of the {name} list are missing (first: {missing[0]}); "
                            "unpack the dataset there or use extract_videos.py, which skips and reports them")
        metas.append(build(Path(out), name, [(e.video_id, e.label) for e in entries], lists.class_names,
                           lambda v, paths=paths: video_to_jpegs(paths[v], short_side)[0],
                           {"dataset": dataset, "split_index": split}))
    return metas


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", "-d", help="frames folder written by extract_videos.py")
    p.add_argument("--out", "-o", help="output folder (default: the frames folder)")
    p.add_argument("--split-name", "-s", dest="split_name", choices=SPLITS, default=None,
                   help="build only this split (default: both)")
    p.add_argument("--video-range", "-vr", type=int, nargs=2, default=None, metavar=("START", "END"),
                   help="only videos START..END-1 of the list")
    p.add_argument("--from-videos", action="store_true", help="decode videos directly (no frame folders)")
    p.add_argument("--dataset", choices=("ucf101", "hmdb51"), default="ucf101")
    p.add_argument("--videos", help="with --from-videos: the videos folder")
    p.add_argument("--splits", help="with --from-videos: the split files folder")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    p.add_argument("--short-side", type=int, default=128)
    a = p.parse_args(argv)
    splits = (a.split_name,) if a.split_name else SPLITS
    if a.from_videos:
        if not (a.videos and a.splits and a.out):
            raise DataError("--from-videos needs --videos, --splits and --out")
        metas = from_videos(a.dataset, a.videos, a.splits, a.out, a.split, a.short_side, splits)
    else:
        if not a.frames:
            raise DataError("pass --frames DIR (frame folders from extract_videos.py) or --from-videos")
        metas = from_frames(a.frames, a.out or a.frames, splits, tuple(a.video_range) if a.video_range else None)
    for m in metas:
        print(f"{m['split']}.lmdb: {m['num_videos']} videos, {sum(m['num_frames'])} frames, "
              f"{len(m['class_names'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
