"""C3D (Tran et al. 2015) as used by RT3D and the TCAD paper: 8 convs, 5 pools, 3 fully connected layers.

At 3x16x112x112 it has 78.4 M parameters and 38.5 GMAC. Smaller clips and a width multiplier use the same
layers and names, so tests and the demo exercise the real model: a pool whose input has a single frame left
pools only in space, and fc6's input size follows from the clip size.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.errors import UserError

CONVS = (("conv1", 64), ("conv2", 128), ("conv3a", 256), ("conv3b", 256), ("conv4a", 512), ("conv4b", 512),
         ("conv5a", 512), ("conv5b", 512))
# Pool placed after these convs, with the full-size kernel; pool1 keeps time, pool5 pads space by one.
POOLS = {"conv1": ("pool1", (1, 2, 2), (0, 0, 0)), "conv2": ("pool2", (2, 2, 2), (0, 0, 0)),
         "conv3b": ("pool3", (2, 2, 2), (0, 0, 0)), "conv4b": ("pool4", (2, 2, 2), (0, 0, 0)),
         "conv5b": ("pool5", (2, 2, 2), (0, 1, 1))}


def _width(c: int, width_mult: float) -> int:
    return max(1, int(round(c * width_mult)))


class C3D(nn.Module):
    def __init__(self, num_classes: int = 101, *, width_mult: float = 1.0, clip_len: int = 16,
                 crop_size: int = 112, dropout: float = 0.5) -> None:
        super().__init__()
        self.clip_len, self.crop_size = clip_len, crop_size
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(p=dropout)
        cin, t, s = 3, clip_len, crop_size
        for name, cout in CONVS:
            cout = _width(cout, width_mult)
            setattr(self, name, nn.Conv3d(cin, cout, kernel_size=3, padding=1))
            cin = cout
            if name in POOLS:
                pool, (kt, ks, _), (_, pad, _) = POOLS[name]
                kt = kt if t >= kt else 1  # short clips run out of frames before pool5
                setattr(self, pool, nn.MaxPool3d((kt, ks, ks), stride=(kt, ks, ks), padding=(0, pad, pad)))
                t, s = t // kt, (s + 2 * pad - ks) // ks + 1
        if s < 1:
            raise UserError(f"C3D needs crop_size >= 16, got {crop_size}")
        fc = _width(4096, width_mult)
        self.fc6 = nn.Linear(cin * t * s * s, fc)
        self.fc7 = nn.Linear(fc, fc)
        self.fc8 = nn.Linear(fc, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Without normalisation, PyTorch's default init (and He fan_out, as channels widen) shrinks the signal
        # through 8 convs and C3D trained from scratch sits at chance for epochs; He fan_in keeps its scale.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name, _ in CONVS:
            x = self.relu(getattr(self, name)(x))
            if name in POOLS:
                x = getattr(self, POOLS[name][0])(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        x = self.dropout(self.relu(self.fc6(x)))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)
