"""RT3D's own S3D (`network/s3d.py` of CoCoPIE-Group/video-classification-s2-1d), as RT3D builds it.

It differs from torchvision's S3D: a full (3,7,7) stem conv, a separable "STConv3d" (a (1,k,k) conv then a
(k,1,1) conv with a bias, each with its BN+ReLU), no temporal striding anywhere (RT3D passes
`without_t_stride=True`), max pooling, and a per-frame classifier averaged over time. Module and parameter
names follow the original exactly, so RT3D's `s3d_2.09x` profile and its checkpoints (`module.` prefix and
all) load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj): GoogLeNet's widths, as the original
INCEPTIONS = (
    ("inception3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception3b", 256, 128, 128, 192, 32, 96, 64),
    ("inception4a", 480, 192, 96, 208, 16, 48, 64),
    ("inception4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception4c", 512, 128, 128, 256, 24, 64, 64),
    ("inception4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception4e", 528, 256, 160, 320, 32, 128, 128),
    ("inception5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception5b", 832, 384, 192, 384, 48, 128, 128),
)
BN_EPS = 1e-3  # the original's (TensorFlow's) BN epsilon; a checkpoint's running stats assume it


class BasicConv3d(nn.Module):
    """conv (no bias) -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class STConv3d(nn.Module):
    """A k x k spatial conv then a k-tap temporal conv, each followed by BN+ReLU. The temporal conv keeps the
    original's bias (its checkpoints carry `conv_t.bias`)."""

    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, (1, k, k), padding=(0, k // 2, k // 2), bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.conv_t = nn.Conv3d(cout, cout, (k, 1, 1), padding=(k // 2, 0, 0))
        self.bn_t = nn.BatchNorm3d(cout, eps=BN_EPS)
        self.relu_t = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        return self.relu_t(self.bn_t(self.conv_t(x)))


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cpool: int) -> None:
        super().__init__()
        self.branch1 = BasicConv3d(cin, c1, 1)
        self.branch2 = nn.Sequential(BasicConv3d(cin, c3r, 1), STConv3d(c3r, c3))
        self.branch3 = nn.Sequential(BasicConv3d(cin, c5r, 1), STConv3d(c5r, c5))
        self.branch4 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv3d(cin, cpool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class S3DRT3D(nn.Module):
    """`t_stride`: the original class's default (`without_t_stride=False`), which halves time in the last three
    pools; RT3D's training code turns it off, and its published `s3d_2.09x` was counted with it on."""

    def __init__(self, num_classes: int = 400, dropout: float = 0.2, t_stride: bool = False) -> None:
        super().__init__()
        self.ts = 2 if t_stride else 1
        self.conv1 = BasicConv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
        self.conv2 = BasicConv3d(64, 64, 1)
        self.conv3 = STConv3d(64, 192)
        for name, *widths in INCEPTIONS:
            setattr(self, name, Inception(*widths))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        for m in self.modules():  # the original's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.001)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without t_stride the pools stride 2 in space only, and the last one's 2-frame window leaves T-1 frames
        # (as the original).
        ts = self.ts
        x = F.max_pool3d(self.conv1(x), (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        x = F.max_pool3d(self.conv3(self.conv2(x)), 3, stride=(ts, 2, 2), padding=1)
        x = self.inception3b(self.inception3a(x))
        x = F.max_pool3d(x, 3, stride=(ts, 2, 2), padding=1)
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            x = getattr(self, name)(x)
        x = F.max_pool3d(x, 2, stride=(ts, 2, 2))
        x = self.inception5b(self.inception5a(x))
        # Classify each remaining frame, then average the logits over time.
        x = x.mean(dim=(3, 4)).transpose(1, 2)  # N x T x 1024 (a spatial mean: exports to ONNX, unlike an
        # adaptive pool whose output size is the traced frame count)
        n, t, c = x.shape
        logits = self.fc(self.dropout(x.reshape(n * t, c))).view(n, t, -1)
        return logits.mean(1)


def build_s3d_rt3d(num_classes: int) -> nn.Module:
    """As RT3D's main.py builds it: `S3D(num_classes, without_t_stride=True)`."""
    return S3DRT3D(num_classes)


def build_s3d_rt3d_ts(num_classes: int) -> nn.Module:
    """The original class's default, with temporal striding: the model `s3d_2.09x`'s 2.09x was counted on."""
    return S3DRT3D(num_classes, t_stride=True)
