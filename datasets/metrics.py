"""Clip-level and video-level top-k accuracy (video level: softmax averaged over each video's clips)."""

from __future__ import annotations

import torch


def _topk(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for k in ks:
        k_eff = min(k, scores.shape[1])  # top-5 of a 3-class problem is top-3
        hit = (scores.topk(k_eff, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = int(hit.sum()) / len(hit) if len(hit) else 0.0  # exact fraction, not float32
    return out


def clip_metrics(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of clips whose label is in the top-k logits: {'top1': .., 'top5': ..} in [0, 1]."""
    return _topk(logits.detach().float(), labels.long(), ks)


def video_metrics(logits: torch.Tensor, labels: torch.Tensor, video_index: torch.Tensor,
                  ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k over videos: clip softmaxes are averaged per ``video_index``; also returns ``num_videos``."""
    probs = logits.detach().float().softmax(dim=1)
    vids, inv = torch.unique(video_index.long(), return_inverse=True)
    summed = torch.zeros(len(vids), probs.shape[1]).index_add_(0, inv, probs)
    vlabels = torch.full((len(vids),), -1, dtype=torch.long).scatter_(0, inv, labels.long())
    if not torch.equal(vlabels[inv], labels.long()):
        raise ValueError("clips of one video carry different labels")
    return {**_topk(summed, vlabels, ks), "num_videos": len(vids)}
