"""The clip database: one LMDB per split, pickle-free, versioned and checksummed.

Keys: ``b"%08d" % video_index`` -> one video record; ``b"__meta__"`` -> UTF-8 JSON metadata. The metadata record
is written last, in the same step that renames ``<split>.lmdb.partial`` to ``<split>.lmdb``: a reader never sees
a database without it, so never a half-written one.

Video record (little-endian), format version 2::

    magic     4s   b"P3DV"
    version   u16  FORMAT_VERSION
    id_len    u16  bytes of the video id
    label     i32  0-based class index
    frames    u32  n
    head_crc  u32  CRC-32 of the record up to the payload, this field excluded
    video_id  id_len bytes, UTF-8
    offsets   (n + 1) x u64   byte offsets of each JPEG inside the payload; offsets[n] = payload length
    crcs      n x u32         CRC-32 of each JPEG
    payload   the n JPEG files, concatenated

A record names its video and label, so a record at the wrong position (a resumed build after the list changed)
or a label that disagrees with the metadata is caught; per-frame CRCs are checked only for the frames a clip
reads, so verifying costs little.

Metadata JSON: ``{"format": "prune3d-clips", "version", "split", "class_names", "num_videos", "video_ids",
"labels", "num_frames", "source_digest", "digest", ...}`` where ``source_digest`` fingerprints what the database
was built from (the list, the class names, each video's frame count and bytes) so a rebuild after the frames
changed is not "nothing to do", and ``digest`` is the SHA-256 of the rest of the metadata (an edited or damaged
label is caught when the database is opened). Version 1 databases (no ids, no checksums) are refused with a line
saying to run create_lmdb.py again, which rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from .errors import DataError

FORMAT = "prune3d-clips"
FORMAT_VERSION = 2
MAGIC = b"P3DV"
META_KEY = b"__meta__"
_HEAD = struct.Struct("<4sHHiII")
_CRC_AT = 16  # byte offset of head_crc
MAP_SIZE = 1 << 40  # address space only; the file grows with the data
REBUILD = "delete it and run datasets/create_lmdb.py again"


class Record(NamedTuple):
    video_id: str
    label: int
    offsets: list[int]
    crcs: list[int]
    start: int  # payload start

    @property
    def frames(self) -> int:
        return len(self.crcs)

    @property
    def payload_bytes(self) -> int:
        return self.offsets[-1]


def video_key(index: int) -> bytes:
    return b"%08d" % index


def encode_record(video_id: str, label: int, jpegs: list[bytes]) -> bytes:
    vid = video_id.encode("utf-8")
    offsets = [0]
    for j in jpegs:
        offsets.append(offsets[-1] + len(j))
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(vid), label, len(jpegs), 0)
    tail = b"".join([vid, struct.pack(f"<{len(offsets)}Q", *offsets),
                     struct.pack(f"<{len(jpegs)}I", *(zlib.crc32(j) for j in jpegs))])
    crc = zlib.crc32(tail, zlib.crc32(head[:_CRC_AT]))
    return b"".join([head[:_CRC_AT], struct.pack("<I", crc), tail, *jpegs])


def decode_header(buf: bytes | memoryview, where: str) -> Record:
    """A record's header, its CRC checked; DataError naming `where` when it is damaged. Reads only the header,
    so `buf` may be a zero-copy LMDB buffer of a large record."""
    damaged = f"{where}: record is damaged"
    if len(buf) < _HEAD.size:
        raise DataError(f"{damaged} (truncated, {len(buf)} bytes); {REBUILD}")
    magic, version, id_len, label, n, crc = _HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise DataError(f"{damaged} (bad magic {bytes(magic)!r}); {REBUILD}")
    if version == 1:
        raise DataError(f"{where}: record of format version 1 (no video id, no checksums); {REBUILD}")
    if version > FORMAT_VERSION:
        raise DataError(f"{where}: record format version {version} is newer than this prune3d reads "
                        f"({FORMAT_VERSION}); upgrade prune3d")
    if version != FORMAT_VERSION:
        raise DataError(f"{damaged} (format version {version}); {REBUILD}")
    start = _HEAD.size + id_len + 8 * (n + 1) + 4 * n
    if n == 0 or len(buf) < start:
        raise DataError(f"{damaged} ({n} frames, {len(buf)} bytes); {REBUILD}")
    if zlib.crc32(buf[_HEAD.size:start], zlib.crc32(buf[:_CRC_AT])) != crc:
        raise DataError(f"{damaged} (header checksum); {REBUILD}")
    at = _HEAD.size + id_len
    offsets = list(struct.unpack_from(f"<{n + 1}Q", buf, at))
    crcs = list(struct.unpack_from(f"<{n}I", buf, at + 8 * (n + 1)))
    if offsets[0] != 0 or offsets[-1] != len(buf) - start or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise DataError(f"{damaged} (frame offsets do not match its {len(buf)} bytes); {REBUILD}")
    try:
        video_id = bytes(buf[_HEAD.size:at]).decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{damaged} (video id); {REBUILD}") from None
    return Record(video_id, label, offsets, crcs, start)


def frame_bytes(buf: bytes, rec: Record, i: int, where: str) -> bytes:
    """JPEG `i` of a record, its CRC checked: a flipped byte is a DataError naming `where`, not a damaged frame
    trained on."""
    data = buf[rec.start + rec.offsets[i]: rec.start + rec.offsets[i + 1]]
    if zlib.crc32(data) != rec.crcs[i]:
        raise DataError(f"{where}: frame {i + 1} fails its checksum (damaged); {REBUILD}")
    return data


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the metadata without its own `digest` field (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_meta(raw: bytes | None, path: Path) -> dict:
    if raw is None:
        raise DataError(f"{path}: no metadata record: not a prune3d clip database (or an unfinished one); "
                        "build it with datasets/create_lmdb.py")
    try:
        meta = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: metadata record is damaged; {REBUILD}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(f"{path}: not a prune3d clip database (format {fmt!r})")
    version = meta.get("version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise DataError(f"{path}: written by a newer prune3d (format version {meta['version']}, this one reads "
                        f"{FORMAT_VERSION}); upgrade prune3d or rebuild the LMDB")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: format version {version!r} of an older prune3d (no checksums); run "
                        "datasets/create_lmdb.py again, which rebuilds it")
    if meta.get("digest") != meta_digest(meta):
        raise DataError(f"{path}: metadata does not match its checksum (edited or damaged); {REBUILD}")
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
        raise DataError(f"{path}: cannot open as LMDB ({e}); {REBUILD}") from None


def read_meta(path: Path) -> dict:
    """The checked metadata of a finished database; a damaged B-tree is a one-line DataError, not a traceback."""
    import lmdb

    env = open_readonly(path)
    try:
        with env.begin() as txn:
            raw = txn.get(META_KEY)
    except lmdb.Error as e:
        raise DataError(f"{path}: the database is damaged ({e}); {REBUILD}") from None
    finally:
        env.close()
    return check_meta(raw, path)
