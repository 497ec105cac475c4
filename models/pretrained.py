"""Weights from elsewhere: torchvision's Kinetics-400 weights through the torch hub cache, and state dicts in
other projects' key layouts (DataParallel's `module.`, the Sports-1M C3D release) mapped onto our names."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from pruning.errors import UserError

# Where a set of weights came from -> the normalisation it was trained with (models.normalization):
# - torchvision: its video weights' transforms are VideoClassification with Kinetics mean/std.
# - rt3d, tcad: both originals' get_augmentor defaults to ImageNet mean/std and no script passes others
#   (RT3D video_utils/utils.py:93-94, TCAD video_utils/video_utils.py:83-84).
# - sports1m: the Caffe C3D release subtracted a mean clip; TCAD fine-tuned it with ImageNet statistics, so
#   that is what a fine-tune from it here should use.
# - prune3d: this tool's own checkpoints so far were trained with the Kinetics statistics.
WEIGHT_NORMS: dict[str, str] = {"torchvision": "kinetics", "rt3d": "imagenet", "tcad": "imagenet",
                                "sports1m": "imagenet", "prune3d": "kinetics"}

# The Sports-1M C3D state dict as TCAD loads it (models/c3d.py there: `features.N` / `classifier.N`, the indices
# of an nn.Sequential with ReLUs and pools in between); classifier.6 is Sports-1M's 487-way fc8 when present.
SPORTS1M_C3D = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3a", "features.8": "conv3b",
                "features.11": "conv4a", "features.13": "conv4b", "features.16": "conv5a", "features.18": "conv5b",
                "classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"}
CLASSIFIERS = {"c3d": "fc8.", "r2+1d": "fc.", "s3d": "classifier.1.", "s3d-rt3d": "fc.", "s3d-rt3d-ts": "fc."}


def hub_weights_file(url: str) -> Path:
    """Where torchvision caches a weights URL: $TORCH_HOME/hub/checkpoints/<file name> (torch.hub's rule)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_torchvision_weights(member: str) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights enum member ("R2Plus1D_18_Weights.KINETICS400_V1") from the hub
    cache, downloading it there if it is missing and the machine is online; otherwise one line saying where
    to put the file."""
    from torchvision.models import get_weight

    weights = get_weight(member)
    path = hub_weights_file(weights.url)
    if not path.is_file():
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as e:  # URLError/HTTPError/timeouts are OSErrors; a bad hash a RuntimeError
            reason = str(getattr(e, "reason", e)).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"--pretrained: {path} is not cached and downloading {weights.url} failed ({reason}); "
                            "download that file on a machine with internet and place it at that path "
                            "(or set TORCH_HOME to the folder holding hub/checkpoints/)") from None
    from training.checkpoint import load_checkpoint  # its zip CRCs checked, then weights_only=True

    try:
        return load_checkpoint(path)
    except Exception as e:  # a truncated, damaged or foreign file: name it rather than show a pickle traceback
        raise UserError(f"--pretrained: cannot read {path} ({type(e).__name__}); delete it and place a complete "
                        f"copy of {weights.url} there") from None


def _strip_prefix(state: dict) -> dict:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def state_layout(state: dict, arch: str) -> str:
    """Which key layout a state dict (already unwrapped, `module.` stripped) is in: 'ours' or 'sports1m'."""
    keys = set(_strip_prefix(state))
    if arch == "c3d" and "features.0.weight" in keys and "conv1.weight" not in keys:
        return "sports1m"
    return "ours"


def _unwrap(state: dict) -> dict:
    for key in ("model", "state_dict", "model_state_dict", "net"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def convert_state_dict(state: dict, arch: str, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """`state` in our key layout for `arch`: unwraps {"state_dict": ...}, drops DataParallel's `module.` and maps
    the Sports-1M C3D release (`features.N` / `classifier.N`). RT3D's S3D checkpoints need no renaming for
    `s3d-rt3d`. A classifier the foreign layout lacks or sizes for another class count is taken from `model`
    (its fresh initialisation, as fine-tuning needs) when given, else left out. Raises a one-line UserError
    when the keys match neither our layout nor a known one."""
    from . import arch_info, build_model

    info = arch_info(arch)
    flat = {k: v for k, v in _strip_prefix(_unwrap(state)).items() if isinstance(v, torch.Tensor)}
    layout = state_layout(flat, info.name)
    if layout == "sports1m":
        flat = {SPORTS1M_C3D[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in flat.items()
                if k.rsplit(".", 1)[0] in SPORTS1M_C3D}
    if model is None:
        with torch.device("meta"):  # only the names and shapes are needed
            model = build_model(info.name, 400)
    own = model.state_dict()
    head = CLASSIFIERS[info.name]
    if layout != "ours":  # a pretraining release: its classifier is never ours
        for k in [k for k in own if k.startswith(head)]:
            if k not in flat or flat[k].shape != own[k].shape:
                flat.pop(k, None)
                if own[k].device.type != "meta":
                    flat[k] = own[k].detach().clone()
    body = [k for k in own if not k.startswith(head)]
    missing = [k for k in body if k not in flat]
    unexpected = [k for k in flat if k not in own]
    if missing or unexpected:
        what = f"unexpected key '{unexpected[0]}'" if unexpected else f"no '{missing[0]}'"
        raise UserError(f"state dict layout not recognised for --arch {info.name}: {what} ({len(missing)} of our "
                        f"keys missing, {len(unexpected)} unknown); known layouts: ours (with or without "
                        "DataParallel 'module.'), Sports-1M C3D ('features.N'/'classifier.N')")
    return flat
