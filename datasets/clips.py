"""Clip datasets over the LMDB (or over frame folders): frame sampling, transforms, multi-clip testing.

Each item is ``(clip float [3, T, H, W], label, video_index)``. With ``test_clips = N`` a video yields N clips
(item k is clip k % N of video k // N), and evaluation averages their softmax per video.
"""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .errors import DataError
from .lmdb_format import REBUILD, Record, decode_header, frame_bytes, open_readonly, read_meta, video_key


def segment_indices(n: int, t: int, clip: int = 0, clips: int = 1) -> list[int]:
    """T frames at the centres of T equal segments of an n-frame video (clip j of N shifts within segments).

    floor((i + (j + 0.5) / N) * n / T): for n=100, T=4: 12, 37, 62, 87. Short videos repeat frames."""
    return [min(n - 1, math.floor((i + (clip + 0.5) / clips) * n / t)) for i in range(t)]


def consecutive_indices(n: int, t: int, start: int) -> list[int]:
    """T consecutive frames from `start`, looping a video shorter than the clip."""
    return [(start + i) % n for i in range(t)]


def consecutive_start(n: int, t: int, clip: int, clips: int, train: bool) -> int:
    span = max(n - t, 0)
    if train:
        return random.randint(0, span)
    return round(span * (clip + 0.5) / clips) if clips > 1 else span // 2


def clip_transform(train: bool, short_side: int, crop_size: int, mean, std, hflip: bool = True) -> v2.Compose:
    """Whole-clip transforms on uint8 [T, C, H, W]: one crop and one flip for all frames of a clip.

    Flipping swaps left and right motion, so it is for datasets whose labels do not depend on direction."""
    steps = [v2.Resize(short_side, antialias=True)]
    if train:
        steps += [v2.RandomCrop(crop_size)] + ([v2.RandomHorizontalFlip()] if hflip else [])
    else:
        steps += [v2.CenterCrop(crop_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


class ClipDataset(Dataset):
    """Shared sampling and transform logic; subclasses supply `num_frames(v)` and `frames(v, indices)`."""

    def __init__(self, *, labels: list[int], video_ids: list[str], class_names: list[str], clip_len: int,
                 crop_size: int, short_side: int, sampling: str, test_clips: int, mean, std, train: bool,
                 num_frames: list[int], hflip: bool = True) -> None:
        if sampling not in ("segment", "consecutive"):
            raise DataError(f"unknown sampling {sampling!r}: expected segment or consecutive")
        self.labels, self.video_ids, self.class_names = labels, video_ids, class_names
        self.clip_len, self.sampling, self.train = clip_len, sampling, train
        self.clips_per_video = 1 if train else max(1, test_clips)
        self._num_frames = num_frames
        self.transform = clip_transform(train, short_side, crop_size, mean, std, hflip)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    def __len__(self) -> int:
        return self.num_videos * self.clips_per_video

    def indices(self, video: int, clip: int = 0) -> list[int]:
        n = self._num_frames[video]
        if self.sampling == "segment":
            return segment_indices(n, self.clip_len, clip, self.clips_per_video)
        return consecutive_indices(n, self.clip_len,
                                   consecutive_start(n, self.clip_len, clip, self.clips_per_video, self.train))

    def frames(self, video: int, indices: list[int]) -> np.ndarray:  # uint8 [T, H, W, 3]
        raise NotImplementedError

    def __getitem__(self, k: int):
        video, clip = divmod(k, self.clips_per_video)
        raw = torch.from_numpy(self.frames(video, self.indices(video, clip))).permute(0, 3, 1, 2)
        clip_t = self.transform(raw).permute(1, 0, 2, 3).contiguous()  # [C, T, H, W]
        return clip_t, self.labels[video], video


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for broken JPEGs
        raise DataError(f"{where}: frame does not decode ({type(e).__name__}); rebuild the LMDB") from None


class LmdbClips(ClipDataset):
    """Clips from a clip LMDB. The environment is opened lazily in each worker: it must not cross a fork."""

    def __init__(self, path: str | Path, **kw) -> None:
        self.path = Path(path)
        meta = read_meta(self.path)
        self.meta = meta
        self._env = None
        super().__init__(labels=meta["labels"], video_ids=meta["video_ids"], class_names=meta["class_names"],
                         num_frames=meta["num_frames"], **kw)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = None
        return state

    def record(self, video: int) -> tuple[bytes, Record]:
        """Video `video`'s record, checked: its header CRC, and its id and label against the metadata."""
        import lmdb

        if self._env is None:
            self._env = open_readonly(self.path)
        where = f"{self.path} video {self.video_ids[video]} (key {video_key(video).decode()})"
        try:
            with self._env.begin(buffers=False) as txn:
                buf = txn.get(video_key(video))
        except lmdb.Error as e:  # a damaged B-tree page: a failed sample naming the database, not a traceback
            raise DataError(f"{where}: the database is damaged ({e}); {REBUILD}") from None
        if buf is None:
            raise DataError(f"{where}: record missing; {REBUILD}")
        rec = decode_header(buf, where)
        if rec.video_id != self.video_ids[video] or rec.label != self.labels[video]:
            raise DataError(f"{where}: record holds {rec.video_id} label {rec.label}, the metadata says "
                            f"{self.video_ids[video]} label {self.labels[video]}; {REBUILD}")
        return buf, rec

    def frames(self, video: int, indices: list[int]) -> np.ndarray:
        buf, rec = self.record(video)
        where = f"{self.path} video {self.video_ids[video]}"
        return np.stack([_decode(frame_bytes(buf, rec, i, where), where) for i in indices])


class FrameFolderClips(ClipDataset):
    """Clips from ``<root>/<video_id>/00001.jpg...`` with ``<split>.txt`` lists, for users who skip LMDB.

    Lists in our format or the originals' (``vid start end label``: frames start..end), see frame_lists.py."""

    def __init__(self, root: str | Path, split: str, sep: str | None = None, **kw) -> None:
        from .create_lmdb import read_frame_entries

        self.root = Path(root)
        entries, names = read_frame_entries(self.root, split, sep)
        counts, self._first = [], []
        for e in entries:
            folder = self.root / e.video
            if e.start is None:
                n = len(list(folder.glob("*.jpg")))
            else:  # the originals' range: its first and last frames must be there
                n = e.end - e.start + 1
                if not all((folder / f"{i:05d}.jpg").is_file() for i in (e.start, e.end)):
                    raise DataError(f"{folder}: frames {e.start:05d}.jpg..{e.end:05d}.jpg of {self.root / split}"
                                    ".txt are not all there; re-extract the video or fix its line")
            if n == 0:
                raise DataError(f"{folder}: no frames; re-run extract_videos.py")
            counts.append(n)
            self._first.append(e.start or 1)
        super().__init__(labels=[e.label for e in entries], video_ids=[e.video for e in entries], class_names=names,
                         num_frames=counts, **kw)

    def frames(self, video: int, indices: list[int]) -> np.ndarray:
        folder, first = self.root / self.video_ids[video], self._first[video]
        return np.stack([_decode((folder / f"{first + i:05d}.jpg").read_bytes(), str(folder)) for i in indices])


def build_dataset(root: str, split: str, *, clip_len: int = 16, crop_size: int = 112, short_side: int = 128,
                  sampling: str = "segment", test_clips: int = 1, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                  train: bool | None = None, hflip: bool = True, sep: str | None = None) -> ClipDataset:
    """The clips of one split under `root`: ``<root>/<split>.lmdb`` if present, else frame folders (`sep`: their
    lists' field separator, see frame_lists.py)."""
    root_p = Path(root)
    if not root_p.is_dir():
        raise DataError(f"{root}: no such data folder; pass --data-location (a folder with train.lmdb/val.lmdb)")
    kw = dict(clip_len=clip_len, crop_size=crop_size, short_side=short_side, sampling=sampling,
              test_clips=test_clips, mean=mean, std=std, train=split == "train" if train is None else train,
              hflip=hflip)
    if (root_p / f"{split}.lmdb").exists() or (root_p / f"{split}.lmdb.partial").exists():
        return LmdbClips(root_p / f"{split}.lmdb", **kw)
    if (root_p / f"{split}.txt").is_file():
        return FrameFolderClips(root_p, split, sep=sep, **kw)
    raise DataError(f"{root}: neither {split}.lmdb nor {split}.txt with frame folders; build them with "
                    "datasets/extract_videos.py and datasets/create_lmdb.py")
