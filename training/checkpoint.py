"""Checkpoints (docs/algorithms.md): one plain dict per file, written atomically, read with weights_only=True."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.errors import CheckpointError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely; a bare state_dict becomes {"model": state_dict}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({first[:160]}); "
                              "is it truncated, or not saved by torch.save?") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict or a state_dict, got {type(obj).__name__}")
    return obj


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of any accepted layout (ours, {"state_dict": ...}, bare), without `module.`."""
    for key in ("model", "state_dict", "model_state_dict", "net"):
        if key in ckpt and isinstance(ckpt[key], dict):
            state = ckpt[key]
            break
    else:
        state = ckpt
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def load_weights(model: nn.Module, ckpt: dict[str, Any], source: str, arch: str,
                 allow_new_classifier: bool = False) -> list[str]:
    """Load weights into `model`, failing with one line when they belong to another architecture.

    With `allow_new_classifier`, a classifier of another class count is left at its initialisation (fine-tuning
    Kinetics weights on UCF101); the names skipped are returned.
    """
    state = model_state(ckpt)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    skipped = []
    if allow_new_classifier and not missing and not unexpected:
        skipped = [k for k in mismatched if own[k].dim() <= 2 or k.startswith(("fc8", "fc.", "classifier"))]
        mismatched = [k for k in mismatched if k not in skipped]
    if missing or unexpected or mismatched:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                f"{mismatched[0]} has shape {tuple(state[mismatched[0]].shape)}, "
                f"model wants {tuple(own[mismatched[0]].shape)}")
        raise CheckpointError(f"{source}: weights do not fit --arch {arch} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(mismatched)} of another shape; first: {what}); "
                              "check --arch, --num-classes, --width-mult, --clip-len and --crop-size")
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=not skipped)
    return skipped


_held_locks: list = []  # open lock files, held until the process ends


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on a run folder for the life of this process, so a second run with the same --name
    stops at once instead of overwriting the first one's checkpoints. The lock is the OS's (flock): it goes with
    the process, even on SIGKILL, so it never goes stale."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.lock"
    f = open(path, "a+")  # noqa: SIM115 (kept open on purpose: closing it releases the lock)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise CheckpointError(f"{run_dir}: already in use by {holder}; wait for it to end, or pass another --name "
                              "(or --save-dir)") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    _held_locks.append(f)
