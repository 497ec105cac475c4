"""The clip database: one LMDB per split, pickle-free and versioned.

Keys: ``b"%08d" % video_index`` -> one video record; ``b"__meta__"`` -> UTF-8 JSON metadata. The metadata record
is written last, in the same step that renames ``<split>.lmdb.partial`` to ``<split>.lmdb``: a reader never sees
a database without it, so never a half-written one.

Video record (little-endian)::

    magic    4s   b"P3DV"
    version  u16  FORMAT_VERSION
    reserved u16  0
    label    i32  0-based class index
    frames   u32  n
    offsets  (n + 1) x u64   byte offsets of each JPEG inside the payload; offsets[n] = payload length
    payload  the n JPEG files, concatenated

Metadata JSON: ``{"format": "prune3d-clips", "version", "split", "dataset", "class_names", "num_videos",
"video_ids", "labels", "num_frames"}``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import DataError

FORMAT = "prune3d-clips"
FORMAT_VERSION = 1
MAGIC = b"P3DV"
META_KEY = b"__meta__"
_HEAD = struct.Struct("<4sHHiI")
MAP_SIZE = 1 << 40  # address space only; the file grows with the data


def video_key(index: int) -> bytes:
    return b"%08d" % index


def encode_record(label: int, jpegs: list[bytes]) -> bytes:
    offsets = [0]
    for j in jpegs:
        offsets.append(offsets[-1] + len(j))
    return b"".join([_HEAD.pack(MAGIC, FORMAT_VERSION, 0, label, len(jpegs)),
                     struct.pack(f"<{len(offsets)}Q", *offsets), *jpegs])


def decode_header(buf: bytes, where: str) -> tuple[int, list[int], int]:
    """(label, offsets, payload start) of a record; DataError naming `where` when it is damaged."""
    if len(buf) < _HEAD.size:
        raise DataError(f"{where}: record is truncated ({len(buf)} bytes); rebuild the LMDB with create_lmdb.py")
    magic, version, _, label, n = _HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise DataError(f"{where}: record is damaged (bad magic {magic!r}); rebuild the LMDB with create_lmdb.py")
    if version > FORMAT_VERSION:
        raise DataError(f"{where}: record format version {version} is newer than this prune3d reads "
                        f"({FORMAT_VERSION}); upgrade prune3d")
    start = _HEAD.size + 8 * (n + 1)
    if n == 0 or len(buf) < start:
        raise DataError(f"{where}: record is damaged ({n} frames, {len(buf)} bytes); rebuild the LMDB")
    offsets = list(struct.unpack_from(f"<{n + 1}Q", buf, _HEAD.size))
    if offsets[0] != 0 or offsets[-1] != len(buf) - start or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise DataError(f"{where}: record is damaged (frame offsets do not match its {len(buf)} bytes); "
                        "rebuild the LMDB with create_lmdb.py")
    return label, offsets, start


def frame_bytes(buf: bytes, offsets: list[int], start: int, i: int) -> bytes:
    return buf[start + offsets[i]: start + offsets[i + 1]]


def check_meta(raw: bytes | None, path: Path) -> dict:
    if raw is None:
        raise DataError(f"{path}: no metadata record: not a prune3d clip database (or an unfinished one); "
                        "build it with datasets/create_lmdb.py")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: metadata record is damaged; rebuild the LMDB with create_lmdb.py") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a prune3d clip database (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise DataError(f"{path}: written by a newer prune3d (format version {meta['version']}, this one reads "
                        f"{FORMAT_VERSION}); upgrade prune3d or rebuild the LMDB")
    return meta


def open_readonly(path: Path):
    """Open an LMDB for reading (no lock file: many loader workers read it at once)."""
    import lmdb

    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = (f"{partial} exists: the build was interrupted, run create_lmdb.py again to finish it"
                if partial.exists() else "build it with datasets/create_lmdb.py")
        raise DataError(f"{path}: no such LMDB; {hint}")
    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=512)
    except lmdb.Error as e:
        raise DataError(f"{path}: cannot open as LMDB ({e}); rebuild it with create_lmdb.py") from None
