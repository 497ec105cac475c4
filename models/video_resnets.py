"""torchvision's R(2+1)D-18 and S3D with a new classifier, and an S3D head that fits any clip size."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.video import r2plus1d_18, s3d


def build_r2plus1d_18(num_classes: int, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """`state`: torchvision's Kinetics-400 weights, loaded before the classifier is replaced (if needed)."""
    model = r2plus1d_18(weights=None)
    if state is not None:
        model.load_state_dict(state)
    if state is None or num_classes != model.fc.out_features:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


class S3DHeadPool(nn.Module):
    """torchvision's S3D pools (2, 7, 7) with stride 1, which only fits 224x224 input. This pools (min(2, T), H, W)
    instead: identical to torchvision's at 224 (so its published weights still apply), and valid at 112."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # int(): under ONNX export's tracing the sizes are traced values, which avg_pool3d's kernel cannot be; the
        # export then holds this clip size's kernel (only the batch axis is dynamic there)
        t, h, w = (int(d) for d in x.shape[2:])
        return nn.functional.avg_pool3d(x, kernel_size=(min(2, t), h, w), stride=1)


def build_s3d(num_classes: int, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """`state`: torchvision's Kinetics-400 weights, loaded before the classifier is replaced (if needed)."""
    model = s3d(weights=None)
    model.avgpool = S3DHeadPool()
    if state is not None:
        model.load_state_dict(state)
    head = model.classifier[1]
    if state is None or num_classes != head.out_channels:
        model.classifier[1] = nn.Conv3d(head.in_channels, num_classes, kernel_size=1, bias=True)
    return model
