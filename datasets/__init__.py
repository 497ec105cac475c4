"""Video data: raw videos -> JPEG frames -> clip LMDB -> clip datasets (UCF101, HMDB51, synthetic)."""

from .clips import ClipDataset, FrameFolderClips, LmdbClips, build_dataset, consecutive_indices, segment_indices
from .errors import DataError
from .metrics import clip_metrics, video_metrics

__all__ = ["ClipDataset", "DataError", "FrameFolderClips", "LmdbClips", "build_dataset", "consecutive_indices",
           "segment_indices", "clip_metrics", "video_metrics"]
