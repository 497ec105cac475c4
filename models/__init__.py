"""Model registry: `--arch c3d|r2+1d|s3d` -> a model, its normalisation and its natural clip size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pruning.errors import UserError

from .c3d import C3D
from .video_resnets import build_r2plus1d_18, build_s3d

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# --norm: the input statistics a model's weights were trained with
NORMALIZATIONS = {"kinetics": (KINETICS_MEAN, KINETICS_STD),
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of --norm `name`."""
    if name not in NORMALIZATIONS:
        raise UserError(f"unknown --norm {name!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return NORMALIZATIONS[name]


@dataclass(frozen=True)
class ArchInfo:
    name: str
    builder: Callable[..., nn.Module]
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    crop_size: int = 112
    short_side: int = 128
    width_mult: bool = False  # whether the builder takes width_mult / clip_len / crop_size


ARCHS: dict[str, ArchInfo] = {
    "c3d": ArchInfo("c3d", C3D, width_mult=True),
    "r2+1d": ArchInfo("r2+1d", build_r2plus1d_18),
    "s3d": ArchInfo("s3d", build_s3d, crop_size=224, short_side=256),
}
ALIASES = {"r2plus1d": "r2+1d", "r2plus1d_18": "r2+1d", "r21d": "r2+1d", "r2+1d-18": "r2+1d", "C3D": "c3d"}


def arch_info(arch: str) -> ArchInfo:
    key = ALIASES.get(arch, arch)
    if key not in ARCHS:
        raise UserError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[key]


def build_model(arch: str, num_classes: int, *, width_mult: float = 1.0, clip_len: int = 16,
                crop_size: int = 112, dropout: float | None = None) -> nn.Module:
    """Build a model; C3D also adapts to the clip size and width so tests can run the real model small.

    `dropout` (C3D's fc6/fc7, S3D's classifier) defaults to the published value, 0.5 and 0.2."""
    info = arch_info(arch)
    if info.width_mult:
        model = info.builder(num_classes, width_mult=width_mult, clip_len=clip_len, crop_size=crop_size)
    elif width_mult != 1.0:
        raise UserError(f"--width-mult is only supported for c3d, not {info.name}")
    else:
        model = info.builder(num_classes)
    if dropout is not None:
        drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        if not drops:
            raise UserError(f"--dropout: {info.name} has no dropout layer")
        for m in drops:
            m.p = dropout
    return model


def conv_weight_names(model: nn.Module) -> list[str]:
    """Names of every Conv3d weight: the parameters a profile may prune."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv3d)]
