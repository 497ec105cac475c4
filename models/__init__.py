"""Model registry: `--arch c3d|r2+1d|s3d|s3d-rt3d[-ts]` -> a model, its normalisation and its clip size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pruning.errors import UserError

from .c3d import C3D
from .pretrained import WEIGHT_NORMS, convert_state_dict, hub_weights_file, load_torchvision_weights, state_layout
from .s3d_rt3d import build_s3d_rt3d, build_s3d_rt3d_ts
from .video_resnets import build_r2plus1d_18, build_s3d

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The input statistics a set of weights was trained with; evaluating them with other statistics is wrong.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "kinetics": (KINETICS_MEAN, KINETICS_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass(frozen=True)
class ArchInfo:
    name: str
    builder: Callable[..., nn.Module]
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    crop_size: int = 112
    short_side: int = 128
    width_mult: bool = False  # whether the builder takes width_mult / clip_len / crop_size
    weights: str | None = None  # torchvision weights enum member `--pretrained` loads ("Enum.MEMBER")
    norm: str = "kinetics"  # normalisation of this arch's usual starting weights (see WEIGHT_NORMS)


ARCHS: dict[str, ArchInfo] = {
    "c3d": ArchInfo("c3d", C3D, width_mult=True),
    "r2+1d": ArchInfo("r2+1d", build_r2plus1d_18, weights="R2Plus1D_18_Weights.KINETICS400_V1"),
    "s3d": ArchInfo("s3d", build_s3d, crop_size=224, short_side=256, weights="S3D_Weights.KINETICS400_V1"),
    # RT3D's own S3D (network/s3d.py): only RT3D's checkpoints exist for it, trained with ImageNet statistics.
    "s3d-rt3d": ArchInfo("s3d-rt3d", build_s3d_rt3d, *NORMALIZATIONS["imagenet"], crop_size=224, short_side=256,
                         norm="imagenet"),
    # The same weights with the original class's temporal striding (16 frames -> 2 at the head).
    "s3d-rt3d-ts": ArchInfo("s3d-rt3d-ts", build_s3d_rt3d_ts, *NORMALIZATIONS["imagenet"], crop_size=224,
                            short_side=256, norm="imagenet"),
}
ALIASES = {"r2plus1d": "r2+1d", "r2plus1d_18": "r2+1d", "r21d": "r2+1d", "r2+1d-18": "r2+1d", "C3D": "c3d",
           "s3d_rt3d": "s3d-rt3d", "rt3d-s3d": "s3d-rt3d"}
# Spellings that also switch pretrained weights on: RT3D's `--arch r2+1d-pretrained` is torchvision's
# R(2+1)D-18 started from its Kinetics-400 weights.
PRETRAINED_ALIASES = {"r2+1d-pretrained": "r2+1d"}


def arch_info(arch: str) -> ArchInfo:
    key = PRETRAINED_ALIASES.get(arch, ALIASES.get(arch, arch))
    if key not in ARCHS:
        raise UserError(f"unknown --arch {arch!r}; choose one of {', '.join([*ARCHS, *PRETRAINED_ALIASES])}")
    return ARCHS[key]


def implies_pretrained(arch: str) -> bool:
    """Whether the --arch spelling itself asks for pretrained weights (RT3D's `r2+1d-pretrained`)."""
    return arch in PRETRAINED_ALIASES


def normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of a normalisation name: 'kinetics' or 'imagenet'."""
    if name not in NORMALIZATIONS:
        raise UserError(f"unknown --norm {name!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return NORMALIZATIONS[name]


def default_norm(arch: str, pretrained: bool = False) -> str:
    """The normalisation matching the weights a run starts from: torchvision's Kinetics weights for
    --pretrained, else the arch's usual starting point (ArchInfo.norm)."""
    info = arch_info(arch)
    return WEIGHT_NORMS["torchvision"] if pretrained or implies_pretrained(arch) else info.norm


def build_model(arch: str, num_classes: int, *, width_mult: float = 1.0, clip_len: int = 16,
                crop_size: int = 112, dropout: float | None = None, pretrained: bool = False) -> nn.Module:
    """Build a model; C3D also adapts to the clip size and width so tests can run the real model small.

    `dropout` (C3D's fc6/fc7, S3D's classifier) defaults to the published value, 0.5 and 0.2. `pretrained` (or
    the `r2+1d-pretrained` spelling) starts R(2+1)D-18 / S3D from torchvision's Kinetics-400 weights, read from
    the torch hub cache under TORCH_HOME (downloaded there if online); the classifier is new unless
    num_classes == 400."""
    info = arch_info(arch)
    pretrained = pretrained or implies_pretrained(arch)
    if pretrained and info.weights is None:
        hint = ("for Sports-1M weights pass the state dict (c3d.pickle / c3d-pretrained.pth) with --load-path"
                if info.name == "c3d" else "start from an RT3D checkpoint with --load-path")
        raise UserError(f"--pretrained: torchvision has no weights for {info.name}; {hint}")
    if info.width_mult:
        model = info.builder(num_classes, width_mult=width_mult, clip_len=clip_len, crop_size=crop_size)
    elif width_mult != 1.0:
        raise UserError(f"--width-mult is only supported for c3d, not {info.name}")
    elif pretrained:
        model = info.builder(num_classes, load_torchvision_weights(info.weights))
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


__all__ = ["ARCHS", "ArchInfo", "NORMALIZATIONS", "WEIGHT_NORMS", "arch_info", "build_model", "conv_weight_names",
           "convert_state_dict", "default_norm", "hub_weights_file", "implies_pretrained", "normalization",
           "state_layout"]
