"""Video decoding with PyAV (FFmpeg): any container/codec FFmpeg reads, resized on decode by swscale."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

# A file that decodes to fewer frames than its header announces by more than this is reported as truncated.
TRUNCATION_TOLERANCE = (2, 0.05)  # frames, fraction


class VideoReadError(Exception):
    """A video could not be read; ``status`` is one of missing, empty, corrupt."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class DecodeReport:
    """What happened while decoding one file: ``status`` is ok or truncated (others raise VideoReadError)."""

    status: str = "ok"
    message: str = ""
    expected_frames: int = 0
    width: int = 0
    height: int = 0
    frames: int = 0
    warnings: list[str] = field(default_factory=list)


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side`` (aspect kept; 320x240 -> 171x128)."""
    if not short_side:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def iter_frames(
    path: str | os.PathLike | None, short_side: int | None = None, report: DecodeReport | None = None
) -> Iterator[np.ndarray]:
    """Yield every frame of ``path`` as an RGB uint8 array [H, W, 3], short side resized to ``short_side``.

    Raises VideoReadError when nothing can be decoded; a decode error after some frames ends the iteration
    and marks ``report.status = "truncated"`` (the frames before it are real and kept).
    """
    report = report if report is not None else DecodeReport()
    if path is None or not Path(path).is_file():
        raise VideoReadError("missing", "file not found")
    if Path(path).stat().st_size == 0:
        raise VideoReadError("empty", "file has 0 bytes")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError("corrupt", f"cannot open: {exc}") from None
    with container:
        if not container.streams.video:
            raise VideoReadError("corrupt", "no video stream")
        stream = container.streams.video[0]
        stream.thread_count = 1  # parallelism comes from worker processes; threads would oversubscribe
        report.expected_frames = int(stream.frames or 0)
        size = None
        try:
            for frame in container.decode(stream):
                if size is None:
                    size = resized_size(frame.width, frame.height, short_side)
                    report.width, report.height = size
                # threads=1: PyAV >= 17 scales on a pool of threads by default, which a process forked after a
                # decode here inherits broken (its first scale waits forever), and we parallelize by processes
                img = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA", threads=1)
                report.frames += 1
                yield img.to_ndarray()
        except (av.FFmpegError, OSError, ValueError) as exc:
            if report.frames == 0:
                raise VideoReadError("corrupt", f"decode error before the first frame: {exc}") from None
            report.status, report.message = "truncated", f"decode error after {report.frames} frames: {exc}"
            return
    if report.frames == 0:
        raise VideoReadError("empty", "no frame could be decoded")
    exp = report.expected_frames
    if exp and exp - report.frames > max(TRUNCATION_TOLERANCE[0], TRUNCATION_TOLERANCE[1] * exp):
        report.status = "truncated"
        report.message = f"decoded {report.frames} of {exp} frames announced by the header"


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 [H, W, 3] (PIL, so it matches what extraction wrote pixel for pixel)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def video_to_jpegs(
    path: str | os.PathLike | None, short_side: int | None = 128, quality: int = 90
) -> tuple[list[bytes], DecodeReport]:
    """Decode a whole video into JPEG-encoded frames; raises VideoReadError for missing/empty/corrupt files."""
    report = DecodeReport()
    jpegs = [encode_jpeg(a, quality) for a in iter_frames(path, short_side, report)]
    return jpegs, report


def read_frames(path: str | os.PathLike, indices: list[int], short_side: int | None = None) -> np.ndarray:
    """Decode only up to the last needed frame and return frames ``indices`` as [T, H, W, 3] (for benchmarks)."""
    wanted = sorted(set(indices))
    last = wanted[-1]
    got: dict[int, np.ndarray] = {}
    for i, frame in enumerate(iter_frames(path, short_side)):
        if i in wanted:
            got[i] = frame
        if i >= last:
            break
    if len(got) < len(wanted):
        raise VideoReadError("truncated", f"{path}: only {len(got)} of the requested frames exist")
    return np.stack([got[i] for i in indices])
