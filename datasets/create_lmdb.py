"""Frame folders (or videos directly) -> one clip LMDB per split (format: datasets/lmdb_format.py).

    python datasets/create_lmdb.py --frames ucf101_frame --out data/ucf101_lmdb          # train.lmdb + val.lmdb
    python datasets/create_lmdb.py --from-videos --dataset ucf101 --videos ucf101 --splits ucfTrainTestlist \\
        --out data/ucf101_lmdb
    cd datasets && python create_lmdb.py -d ucf101_frame -s train -vr 0 9537             # the original spelling
    python datasets/create_lmdb.py -d ucf101_frame -s test -n 8 --max-frame 64           # the originals' options

Lists: ours (``<video> <num_frames> <label>``) or the originals' (``<video> <start_frame> <end_frame> <label>``),
see datasets/frame_lists.py. ``-s NAME`` builds ``<NAME>.lmdb`` from ``<NAME>.txt`` (train, val, test,
mini-train, mini-val); without it, train and val, and test when test.txt exists. ``-n N`` reads and encodes in N
processes while this one writes in list order: the database is byte-identical to a 1-process build's.
``--max-frame M`` stores every ``max(N // M, 1)``-th frame of an N-frame video, as the originals did.

An interrupted build resumes: records go to ``<split>.lmdb.partial``; on a rerun every record already there is
checked against the list (each record names its video and label, and the frame count and bytes must match the
frame folder) and the ones that disagree are redone, so a list that changed meanwhile (a video recovered by
extract_videos.py) never shifts records onto the wrong videos. The metadata record is written and the folder
renamed to ``<split>.lmdb`` only when every video is in. A finished ``<split>.lmdb`` whose source changed since
(the list, the class names, a video's frames) is rebuilt, the old one kept until the new one is complete. A lock
(``<split>.lmdb.lock``) keeps two builds of one output apart; an OS error writing (disk full, read-only, ...)
stops with one line and keeps the ``.partial`` for the rerun.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing, contextmanager
from itertools import islice
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.errors import DISK_ERRORS, DataError, disk_errno, run_cli  # noqa: E402
from datasets.frame_lists import FrameEntry, frame_numbers, parse_frame_list, subsample  # noqa: E402
from datasets.lmdb_format import (  # noqa: E402
    FORMAT,
    FORMAT_VERSION,
    MAP_SIZE,
    META_KEY,
    decode_header,
    encode_record,
    meta_digest,
    read_meta,
    video_key,
)
from datasets.splits import locate as locate_videos  # noqa: E402
from datasets.splits import read_splits  # noqa: E402
from datasets.video_io import VideoReadError, video_to_jpegs  # noqa: E402

SPLITS = ("train", "val")
# The originals' -s choices: <frames>/<name>.txt -> <name>.lmdb.
SPLIT_CHOICES = ("train", "val", "test", "mini-train", "mini-val")


def read_frame_entries(frames: Path, split: str, sep: str | None = None) -> tuple[list[FrameEntry], list[str]]:
    """The entries of ``<frames>/<split>.txt`` (either list format, see datasets/frame_lists.py) and the class
    names of ``classes.txt`` (the label numbers when there is none, as in the originals' frame folders)."""
    lst = frames / f"{split}.txt"
    if not lst.is_file():
        hint = ("UCF101 and HMDB51 have no test list of their own (val is their official test list): write "
                "test.txt in the same format, e.g. a copy of val.txt" if split not in SPLITS else
                f"run datasets/extract_videos.py first (it writes {split}.txt)")
        raise DataError(f"{lst}: no list file; {hint}")
    entries = parse_frame_list(lst, sep)
    classes_file = frames / "classes.txt"
    names = classes_file.read_text().split() if classes_file.is_file() else \
        [str(i) for i in range(max((e.label for e in entries), default=-1) + 1)]
    beyond = next((e for e in entries if e.label >= len(names)), None)
    if beyond is not None:  # e.g. a label-less 'vid start end' test line read as 'vid frames label'
        raise DataError(f"{lst}: video {beyond.video} has label {beyond.label} but {classes_file} names "
                        f"{len(names)} classes; fix the list (lines are '<video> <frames> <label>' or "
                        "'<video> <start> <end> <label>')")
    return entries, names


def read_frame_list(frames: Path, split: str, sep: str | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """(video id, label) pairs of ``<frames>/<split>.txt`` and the class names of ``classes.txt``."""
    entries, names = read_frame_entries(frames, split, sep)
    return [(e.video, e.label) for e in entries], names


def frame_files(frames: Path, video_id: str) -> list[Path]:
    return sorted((frames / video_id).glob("*.jpg"))


def selected_files(frames: Path, entry: FrameEntry, max_frame: int | None = None) -> list[Path]:
    """The frame files a record of `entry` holds: every frame of the folder (3-field lines) or frames
    start..end (4-field lines), then every ``max(N // max_frame, 1)``-th of them with --max-frame."""
    if entry.start is None:
        files = frame_files(frames, entry.video)
        return files[::subsample(len(files), max_frame)]
    folder = frames / entry.video
    files = [folder / f"{i:05d}.jpg" for i in frame_numbers(entry, 0, max_frame)]
    for f in (files[0], files[-1]):
        if not f.is_file():
            raise DataError(f"{f}: missing, though the list gives frames {entry.start}..{entry.end} of "
                            f"{entry.video}; re-extract the video or fix its line")
    return files


def frame_jpegs(frames: Path, video_id: str, entry: FrameEntry | None = None, max_frame: int | None = None
                ) -> list[bytes]:
    files = selected_files(frames, entry, max_frame) if entry is not None else frame_files(frames, video_id)
    if not files:
        raise DataError(f"{frames / video_id}: no frames; re-run extract_videos.py (see failed.txt there)")
    try:
        return [f.read_bytes() for f in files]
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: missing frame of {video_id}; re-extract the video or fix its line") from None


def frame_stamp(frames: Path, video_id: str, entry: FrameEntry | None = None, max_frame: int | None = None
                ) -> tuple[int, int]:
    """(frame count, bytes) of a frame folder: what its record must hold, from a stat per frame, no reading."""
    files = selected_files(frames, entry, max_frame) if entry is not None else frame_files(frames, video_id)
    try:
        return len(files), sum(f.stat().st_size for f in files)
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: missing frame of {video_id}; re-extract the video or fix its line") from None


def source_digest(items: list[tuple[str, int]], class_names: list[str], stamps: list | None,
                  source: dict | None) -> str:
    """Fingerprint of what a database is built from: list order, labels, class names, per-video stamps, options."""
    body = {"items": [list(x) for x in items], "class_names": class_names,
            "stamps": [list(x) for x in stamps] if stamps is not None else None, "source": source or {}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextmanager
def build_lock(out: Path, split: str) -> Iterator[None]:
    """An exclusive flock on ``<out>/<split>.lmdb.lock`` for the build: a second build of the same database stops
    with one line instead of racing the first one to the final rename. The OS drops it with the process; a build
    that ends removes the file (a killed one leaves it, unlocked: the next build takes it)."""
    path = out / f"{split}.lmdb.lock"
    while True:
        f = open(path, "a+")  # noqa: SIM115 (held open for the build: closing it releases the lock)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise DataError(f"{out / (split + '.lmdb')}: another build holds it ({holder}, lock {path.name}); "
                            "wait for it to end (run again afterwards if it fails)") from None
        try:  # the file locked must still be the one at `path` (a build ending now removes it): else again
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: a build that opened it meanwhile sees it is gone
        f.close()


def _reason(err: DataError, path: Path) -> str:
    """The cause in a reader's DataError, without the path and the advice (the builder acts on it)."""
    return str(err).removeprefix(f"{path}: ").split(";")[0]


def _stale(final: Path, digest: str) -> tuple[dict | None, str]:
    """(metadata, "") when `final` is finished and built from this source, else (None, why it must be rebuilt)."""
    try:
        meta = read_meta(final)
    except DataError as e:
        return None, _reason(e, final)
    if meta.get("source_digest") != digest:
        return None, "built from another list, other class names or other frames than now"
    return meta, ""


def _verify_partial(env, items: list[tuple[str, int]], stamps: list | None
                    ) -> tuple[dict[int, int], list[bytes], list[str]]:
    """Which records of an interrupted build are the videos the list now puts at their positions.

    Returns (position -> frame count of the good ones, keys to delete, what was wrong with each other record)."""
    good, drop, bad = {}, [], []
    with env.begin(buffers=True) as txn:
        for raw_key, buf in txn.cursor():
            key = bytes(raw_key)
            if key == META_KEY:  # written just before the rename: rewritten at the end
                drop.append(key)
                continue
            if len(key) != 8 or not key.isdigit() or int(key) >= len(items):
                drop.append(key)
                bad.append(f"key {key.decode(errors='replace')} is not a position of the list")
                continue
            i = int(key)
            vid, label = items[i]
            try:
                rec = decode_header(buf, f"position {i}")
            except DataError as e:
                bad.append(str(e).split(";")[0])
                continue
            if (rec.video_id, rec.label) != (vid, label):
                bad.append(f"position {i} holds {rec.video_id} label {rec.label}, the list has {vid} label {label}")
            elif stamps is not None and (rec.frames, rec.payload_bytes) != tuple(stamps[i]):
                bad.append(f"position {i} ({vid}) holds {rec.frames} frames, {rec.payload_bytes} bytes; its frame "
                           f"folder has {stamps[i][0]}, {stamps[i][1]}")
            else:
                good[i] = rec.frames
    return good, drop, bad


def build(out: Path, split: str, items: list[tuple[str, int]], class_names: list[str],
          load: Callable[[str], list[bytes]], meta_extra: dict | None = None, progress: bool = True,
          stamps: list[tuple[int, int]] | None = None, source: dict | None = None, workers: int = 1) -> dict:
    """Write ``<out>/<split>.lmdb``; `load(video_id)` gives a video's JPEG frames. Returns the metadata.

    `stamps` (frame count, bytes per video, when known before loading) must match a record for a resumed build to
    keep it; `source` is anything else the database depends on (e.g. the decoder's short side). With `workers` > 1,
    `load` (picklable) runs in that many processes; this process alone writes, in list order, so the database is
    the same as a 1-process build's."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with build_lock(out, split):
            return _build(out, split, items, class_names, load, meta_extra, progress, stamps, source, workers)
    except (OSError, _lmdb_error()) as e:
        code = disk_errno(e)
        partial = out / f"{split}.lmdb.partial"
        if code is None:
            if isinstance(e, OSError):
                raise
            raise DataError(f"{partial}: the partial database is damaged ({e}); delete it and run again") from None
        kept = " (finished videos are kept in it)" if partial.exists() else ""
        raise DataError(f"{out}: {os.strerror(code)} while writing {partial.name}; {DISK_ERRORS[code]}, then run "
                        f"the same command again{kept}") from None


def _lmdb_error() -> type[Exception]:
    import lmdb

    return lmdb.Error


def _build(out: Path, split: str, items: list[tuple[str, int]], class_names: list[str],
           load: Callable[[str], list[bytes]], meta_extra: dict | None, progress: bool,
           stamps: list[tuple[int, int]] | None, source: dict | None, workers: int = 1) -> dict:
    import lmdb
    from tqdm import tqdm

    final, partial, old = (out / f"{split}.lmdb{s}" for s in ("", ".partial", ".old"))
    digest = source_digest(items, class_names, stamps, source)
    if old.exists():  # a rebuild stopped between its two renames: the old database is stale either way
        shutil.rmtree(old)
    if final.exists():
        meta, why = _stale(final, digest)
        if meta is not None:
            print(f"{final} exists and matches its source: nothing to do")
            return meta
        print(f"{final}: {why}; rebuilding it (the old one stays until the new one is complete)", file=sys.stderr)
    env = lmdb.open(str(partial), map_size=MAP_SIZE, subdir=True, sync=True)
    with env:
        good, drop, bad = _verify_partial(env, items, stamps)
        if bad:
            print(f"{partial}: {len(bad)} of {len(bad) + len(good)} finished records disagree with the list now "
                  f"(first: {bad[0]}); redoing them", file=sys.stderr)
        if drop:
            with env.begin(write=True) as txn:
                for key in drop:
                    txn.delete(key)
        frames_per_video = []
        loaded = _load_in_order(load, [v for i, (v, _) in enumerate(items) if i not in good], workers)
        with closing(loaded):
            for i, (vid, label) in enumerate(tqdm(items, desc=f"{split}.lmdb", unit="video", disable=not progress)):
                if i in good:
                    frames_per_video.append(good[i])
                    continue
                got, jpegs, err = next(loaded)
                assert got == vid, (got, vid)
                if err is not None:
                    raise DataError(f"video {vid} ({split}): {err}; fix or drop it from the list, then run again "
                                    "(finished videos are kept)")
                with env.begin(write=True) as txn:
                    txn.put(video_key(i), encode_record(vid, label, jpegs))
                frames_per_video.append(len(jpegs))
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "split": split, "class_names": class_names,
                "num_videos": len(items), "video_ids": [v for v, _ in items], "labels": [lbl for _, lbl in items],
                "num_frames": frames_per_video, **(meta_extra or {}), "source_digest": digest}
        meta["digest"] = meta_digest(meta)
        with env.begin(write=True) as txn:
            txn.put(META_KEY, json.dumps(meta).encode())
        env.sync(True)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    return meta


_worker_load: Callable[[str], list[bytes]] | None = None


def _init_worker(load: Callable[[str], list[bytes]]) -> None:
    global _worker_load
    _worker_load = load


def _load_one(load: Callable[[str], list[bytes]] | None, vid: str) -> tuple[str, list[bytes] | None, str | None]:
    """(video id, its JPEGs, None) or (video id, None, why it cannot be loaded): a bad video is reported by the
    writer, in list order, whichever process read it."""
    try:
        return vid, (load or _worker_load)(vid), None
    except (DataError, VideoReadError) as e:
        return vid, None, str(e)


def _load_in_order(load: Callable[[str], list[bytes]], vids: list[str], workers: int
                   ) -> Generator[tuple[str, list[bytes] | None, str | None], None, None]:
    """`_load_one` of each video, in list order: here, or in `workers` processes at most 2·workers videos ahead
    of the writer (bounded memory)."""
    if workers <= 1 or len(vids) <= 1:
        for v in vids:
            yield _load_one(load, v)
        return
    ex = ProcessPoolExecutor(min(workers, len(vids)), initializer=_init_worker, initargs=(load,))
    try:
        todo = iter(vids)
        pending = deque(ex.submit(_load_one, None, v) for v in islice(todo, 2 * workers))
        while pending:
            done = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(ex.submit(_load_one, None, nxt))
            yield done
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


class FrameLoader:
    """Picklable `load` of a frame folder's listed videos (for worker processes)."""

    def __init__(self, frames: Path, entries: list[FrameEntry], max_frame: int | None = None) -> None:
        self.frames, self.max_frame = frames, max_frame
        self.entries = {e.video: e for e in entries}

    def __call__(self, vid: str) -> list[bytes]:
        e = self.entries[vid]
        if e.start is None and self.max_frame is None:
            return frame_jpegs(self.frames, vid)
        return frame_jpegs(self.frames, vid, e, self.max_frame)


class VideoLoader:
    """Picklable `load` decoding video files (--from-videos), --max-frame applied to the decoded frames."""

    def __init__(self, paths: dict[str, Path | None], short_side: int, max_frame: int | None = None) -> None:
        self.paths, self.short_side, self.max_frame = paths, short_side, max_frame

    def __call__(self, vid: str) -> list[bytes]:
        jpegs = video_to_jpegs(self.paths[vid], self.short_side)[0]
        return jpegs[::subsample(len(jpegs), self.max_frame)]


def frame_splits(frames: Path) -> tuple[str, ...]:
    """The splits built by default: train and val, and test when the folder has a test.txt."""
    return SPLITS + (("test",) if (frames / "test.txt").is_file() else ())


def from_frames(frames: str, out: str, splits: Sequence[str] | None = SPLITS,
                video_range: tuple[int, int] | None = None, sep: str | None = None, workers: int = 1,
                max_frame: int | None = None) -> list[dict]:
    """Build ``<out>/<split>.lmdb`` from ``<frames>/<split>.txt`` for each split (None: frame_splits)."""
    frames_dir = Path(frames)
    if not frames_dir.is_dir():
        raise DataError(f"{frames_dir}: no such frames folder; run datasets/extract_videos.py first")
    metas = []
    for split in splits if splits is not None else frame_splits(frames_dir):
        entries, names = read_frame_entries(frames_dir, split, sep)
        if video_range:
            entries = entries[video_range[0]: video_range[1]]
        if not entries:  # e.g. every video of the split failed to extract: never build an empty database
            raise DataError(f"{frames_dir / (split + '.txt')}: lists no videos; see {frames_dir / 'failed.txt'} and "
                            "run datasets/extract_videos.py again")
        items = [(e.video, e.label) for e in entries]
        plain = max_frame is None and all(e.start is None for e in entries)
        stamps = [frame_stamp(frames_dir, e.video) if plain else frame_stamp(frames_dir, e.video, e, max_frame)
                  for e in entries]
        source = None if plain else {"max_frame": max_frame, "ranges": [[e.start, e.end] for e in entries]}
        metas.append(build(Path(out), split, items, names, FrameLoader(frames_dir, entries, max_frame),
                           {"source": str(frames_dir)}, stamps=stamps, source=source, workers=workers))
    return metas


def from_videos(dataset: str, videos: str, splits_dir: str, out: str, split: int = 1, short_side: int = 128,
                splits: Sequence[str] = SPLITS, workers: int = 1, max_frame: int | None = None) -> list[dict]:
    """Build the LMDBs by decoding the videos of the official split lists (train; val = the official test list)."""
    extra = [s for s in splits if s not in SPLITS]
    if extra:
        raise DataError(f"--from-videos builds train and val (the official split lists); {extra[0]} needs a "
                        f"{extra[0]}.txt frame list: use --frames")
    lists = read_splits(dataset, splits_dir, split)
    metas = []
    for name in splits:
        entries = locate_videos(lists.videos[name], videos)
        paths = {e.video_id: e.path for e in entries}
        missing = [e.video_id for e in entries if e.path is None]
        if missing:
            raise DataError(f"{videos}: {len(missing)} videos of the {name} list are missing (first: {missing[0]}); "
                            "unpack the dataset there or use extract_videos.py, which skips and reports them")
        source = {"short_side": short_side, "video_bytes": [Path(e.path).stat().st_size for e in entries]}
        if max_frame is not None:
            source["max_frame"] = max_frame
        metas.append(build(Path(out), name, [(e.video_id, e.label) for e in entries], lists.class_names,
                           VideoLoader(paths, short_side, max_frame), {"dataset": dataset, "split_index": split},
                           source=source, workers=workers))
    return metas


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", "--data_path", "-d", help="frames folder written by extract_videos.py (ours or the "
                   "originals')")
    p.add_argument("--out", "-o", help="output folder (default: the frames folder)")
    p.add_argument("--split-name", "--set", "-s", dest="split_name", choices=SPLIT_CHOICES, default=None,
                   help="build only this split: <frames>/<name>.txt -> <name>.lmdb (default: train and val, and "
                   "test when test.txt exists)")
    p.add_argument("--video-range", "-vr", type=int, nargs=2, default=None, metavar=("START", "END"),
                   help="only videos START..END-1 of the list")
    p.add_argument("--sep", default=None, help="field separator of the list files (default: whitespace, or ';' "
                   "when the first line has one)")
    p.add_argument("--num_processes", "--num-processes", "-n", type=int, default=1, metavar="N",
                   help="processes reading and encoding videos (the database is the same for every N)")
    p.add_argument("--max-frame", type=int, default=None, metavar="M",
                   help="store every max(N // M, 1)-th frame of an N-frame video (the originals' option)")
    p.add_argument("--from-videos", action="store_true", help="decode videos directly (no frame folders)")
    p.add_argument("--dataset", choices=("ucf101", "hmdb51"), default="ucf101")
    p.add_argument("--videos", help="with --from-videos: the videos folder")
    p.add_argument("--splits", help="with --from-videos: the split files folder")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    p.add_argument("--short-side", type=int, default=128)
    a = p.parse_args(argv)
    if a.num_processes < 1:
        raise DataError(f"-n/--num_processes {a.num_processes}: expected 1 or more processes")
    if a.max_frame is not None and a.max_frame < 1:
        raise DataError(f"--max-frame {a.max_frame}: expected 1 or more frames")
    if a.sep == "":
        raise DataError("--sep '': expected a separator such as ' ' or ';'")
    if a.from_videos:
        if not (a.videos and a.splits and a.out):
            raise DataError("--from-videos needs --videos, --splits and --out")
        metas = from_videos(a.dataset, a.videos, a.splits, a.out, a.split, a.short_side,
                            (a.split_name,) if a.split_name else SPLITS, a.num_processes, a.max_frame)
    else:
        if not a.frames:
            raise DataError("pass --frames DIR (frame folders from extract_videos.py) or --from-videos")
        metas = from_frames(a.frames, a.out or a.frames, (a.split_name,) if a.split_name else None,
                            tuple(a.video_range) if a.video_range else None, a.sep, a.num_processes, a.max_frame)
    for m in metas:
        print(f"{m['split']}.lmdb: {m['num_videos']} videos, {sum(m['num_frames'])} frames, "
              f"{len(m['class_names'])} classes")
    return 0


if __name__ == "__main__":
    from datasets.create_lmdb import main as _main  # worker processes must find the loaders in an importable module

    sys.exit(run_cli(_main))
