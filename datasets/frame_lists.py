"""Frame-folder list files (``<frames>/<split>.txt``): ours and the originals', one parser for every reader.

Accepted line formats (fields split on whitespace, or on ``sep``):

  <video> <num_frames> <label>               written by our extract_videos.py; frames 00001.jpg ... in the folder
  <video> <start_frame> <end_frame> <label>  written by RT3D's and TCAD's extract_videos.py as ``vid 1 N label``;
                                             frames start..end (1-based, inclusive) of ``<video>/%05d.jpg``

``<video>`` is the frame folder, relative to the list's folder (Kinetics lists give ``class/video``). A list
whose first line holds a ``;`` and no explicit separator is split on ``;`` (the originals' Kinetics lists, whose
class names have spaces). Labels are 0-based class indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

FORMATS = ("'<video> <num_frames> <label>' (this extract_videos.py) or "
           "'<video> <start_frame> <end_frame> <label>' (the originals' extract_videos.py)")


@dataclass(frozen=True)
class FrameEntry:
    """One listed video. ``start``/``end`` are set only by the 4-field format; None means every frame."""

    video: str
    label: int
    start: int | None = None
    end: int | None = None


def detect_sep(lines: list[str], sep: str | None) -> str | None:
    """The separator to split on: `sep` if given, ``;`` when the first line has one, else None (whitespace)."""
    if sep is not None:
        return sep
    first = next((ln for ln in lines if ln.strip()), "")
    return ";" if ";" in first else None


def _sep_name(sep: str | None) -> str:
    return "whitespace" if sep is None else repr(sep)


def _int(s: str) -> int | None:
    s = s.strip()
    return int(s) if s.lstrip("-").isdigit() else None


def parse_frame_list(path: Path, sep: str | None = None) -> list[FrameEntry]:
    """The entries of one list file; a line in none of the accepted formats is one DataError naming file:line."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    use = detect_sep(lines, sep)
    entries: list[FrameEntry] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.strip().split(use)] if use is not None else line.split()
        nums = [_int(p) for p in parts[1:]]
        bad = f"{path}:{n}: expected {FORMATS}, fields separated by {_sep_name(use)}; got {line!r}"
        if len(parts) not in (3, 4) or not parts[0] or any(x is None for x in nums):
            raise DataError(bad)
        label = nums[-1]
        if label < 0:
            raise DataError(f"{path}:{n}: label {label} (the originals' extract_videos.py writes -1 for a class "
                            f"missing from classInd.txt): fix or drop the line; got {line!r}")
        if len(parts) == 4:
            start, end = nums[0], nums[1]
            if start < 1 or end < start:
                raise DataError(f"{path}:{n}: frames {start}..{end} are not a range of 1-based frame numbers; "
                                f"expected {FORMATS}; got {line!r}")
            entry = FrameEntry(parts[0], label, start, end)
        else:
            entry = FrameEntry(parts[0], label)
        if entry.video in seen:
            raise DataError(f"{path}:{n}: video {entry.video!r} is listed twice (also line {seen[entry.video]})")
        seen[entry.video] = n
        entries.append(entry)
    return entries


def subsample(num_frames: int, max_frame: int | None) -> int:
    """The originals' --max-frame: keep every ``max(N // max_frame, 1)``-th frame from the first (so a video
    keeps all its frames below 2·max_frame, and between max_frame and 2·max_frame frames above)."""
    if max_frame is None:
        return 1
    return max(num_frames // max_frame, 1)


def frame_numbers(entry: FrameEntry, folder_count: int, max_frame: int | None = None) -> list[int]:
    """1-based frame numbers a record of `entry` holds (`folder_count`: frames in its folder, for 3-field lines)."""
    start, end = (entry.start, entry.end) if entry.start is not None else (1, folder_count)
    return list(range(start, end + 1, subsample(end - start + 1, max_frame)))
