"""Official split files of UCF101 and HMDB51 -> class names and (video id, label, file) lists.

UCF101 (``ucfTrainTestlist/``): ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based), ``trainlist0N.txt``
("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and ``testlist0N.txt`` (no label).
HMDB51 (``testTrainMulti_7030_splits/``): ``<class>_test_split{1,2,3}.txt`` with "<video> <0|1|2>" lines,
1 = train, 2 = test, 0 = unused. Labels here are 0-based everywhere; "val" is the official test list (the
papers use split-1 test as validation).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

DATASETS = ("ucf101", "hmdb51")
SPLIT_NAMES = ("train", "val")
# Defaults of the original README (run inside datasets/): videos dir, splits dir, frames dir.
DEFAULT_DIRS = {
    "ucf101": ("ucf101", "ucfTrainTestlist", "ucf101_frame"),
    "hmdb51": ("hmdb51", "testTrainMulti_7030_splits", "hmdb51_frame"),
}
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv", ".ogv", ".3gp")


@dataclass(frozen=True)
class VideoEntry:
    """One video of a split: ``rel`` is the name as the split file gives it, ``path`` the file found (or None)."""

    video_id: str
    label: int
    rel: str
    path: Path | None = None


@dataclass
class SplitLists:
    dataset: str
    split: int
    class_names: list[str]
    videos: dict[str, list[VideoEntry]]  # "train" / "val"


def _read_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"missing split file {path}: download and unpack the official split archive, or pass --splits")
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _ucf_class_from_name(name: str) -> str | None:
    m = re.match(r"v_(.+)_g\d+_c\d+", Path(name).stem)
    return m.group(1) if m else None


def read_ucf101(splits_dir: Path, split: int) -> SplitLists:
    lines = _read_lines(splits_dir / "classInd.txt")
    class_names: list[str] = []
    for n, line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(class_names) + 1:
            raise DataError(
                f"{splits_dir / 'classInd.txt'}:{n}: expected '<index> <ClassName>' with indices 1, 2, 3, ...; "
                f"got {line!r}"
            )
        class_names.append(parts[1])
    by_lower = {c.lower(): i for i, c in enumerate(class_names)}
    videos: dict[str, list[VideoEntry]] = {}
    for name, fname in (("train", f"trainlist0{split}.txt"), ("val", f"testlist0{split}.txt")):
        path = splits_dir / fname
        entries = []
        for n, line in _read_lines(path):
            parts = line.split()
            rel = parts[0].replace("\\", "/")
            cls = rel.split("/")[0] if "/" in rel else _ucf_class_from_name(rel)
            # Case-insensitive: UCF101 itself spells HandstandPushups / HandStandPushups both ways.
            if cls is None or cls.lower() not in by_lower:
                raise DataError(
                    f"{path}:{n}: video {rel!r} names class {cls!r}, which is not in {splits_dir / 'classInd.txt'}: "
                    "use the split files that came with these videos"
                )
            label = by_lower[cls.lower()]
            if len(parts) > 1 and (not parts[1].isdigit() or int(parts[1]) - 1 != label):
                raise DataError(
                    f"{path}:{n}: label {parts[1]} does not match class {cls!r} (index {label + 1} in classInd.txt)"
                )
            entries.append(VideoEntry(Path(rel).stem, label, rel))
        videos[name] = entries
    return SplitLists("ucf101", split, class_names, videos)


def read_hmdb51(splits_dir: Path, split: int) -> SplitLists:
    if not splits_dir.is_dir():
        raise DataError(f"missing split directory {splits_dir}: unpack test_train_splits.rar there, or pass --splits")
    suffix = f"_test_split{split}.txt"
    files = sorted(p for p in splits_dir.iterdir() if p.name.endswith(suffix))
    if not files:
        raise DataError(
            f"no '*{suffix}' split files in {splits_dir}: unpack HMDB51's test_train_splits.rar there, or pass --splits"
        )
    class_names = [p.name[: -len(suffix)] for p in files]
    videos: dict[str, list[VideoEntry]] = {"train": [], "val": []}
    for label, (cls, path) in enumerate(zip(class_names, files)):
        for n, line in _read_lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{n}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == "0":
                continue  # unused in this split
            name = "train" if parts[1] == "1" else "val"
            videos[name].append(VideoEntry(Path(parts[0]).stem, label, f"{cls}/{parts[0]}"))
    return SplitLists("hmdb51", split, class_names, videos)


def read_splits(dataset: str, splits_dir: str | os.PathLike, split: int = 1) -> SplitLists:
    """Parse the official split files of ``dataset`` (``ucf101`` or ``hmdb51``) for split 1, 2 or 3."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if split not in (1, 2, 3):
        raise DataError(f"split must be 1, 2 or 3, got {split}")
    splits_dir = Path(splits_dir)
    lists = read_ucf101(splits_dir, split) if dataset == "ucf101" else read_hmdb51(splits_dir, split)
    seen: dict[str, str] = {}
    for name, entries in lists.videos.items():
        for e in entries:
            if e.video_id in seen:
                raise DataError(
                    f"{splits_dir}: video {e.video_id!r} is listed twice ({seen[e.video_id]} and {name}) "
                    f"in split {split}"
                )
            seen[e.video_id] = name
    return lists


def index_videos(videos_dir: str | os.PathLike) -> dict[str, Path]:
    """Map file name (and lower-cased file name) -> path for every video under ``videos_dir``.

    Walking the tree makes the flat (``unrar e``) and the nested (``UCF-101/<Class>/``) layouts equivalent.
    """
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise DataError(f"video directory {videos_dir} does not exist: unpack the dataset there, or pass --videos")
    index: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(videos_dir):
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower().endswith(VIDEO_EXTENSIONS):
                p = Path(dirpath) / f
                index.setdefault(f, p)
                index.setdefault(f.lower(), p)
    return index


def locate(
    entries: list[VideoEntry], videos_dir: str | os.PathLike, index: dict[str, Path] | None = None
) -> list[VideoEntry]:
    """Fill in ``path`` for each entry (None when the file is missing)."""
    videos_dir = Path(videos_dir)
    index = index_videos(videos_dir) if index is None else index
    out = []
    for e in entries:
        p = videos_dir / e.rel
        if not p.is_file():
            name = Path(e.rel).name
            p = index.get(name) or index.get(name.lower())
        out.append(VideoEntry(e.video_id, e.label, e.rel, p))
    return out
