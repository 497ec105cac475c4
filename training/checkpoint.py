"""Checkpoints (docs/algorithms.md): one plain dict per file, written atomically, verified and read with
weights_only=True."""

from __future__ import annotations

import fcntl
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.errors import DISK_ERRORS, disk_errno
from pruning.errors import CheckpointError


def _disk_error(exc: BaseException) -> int | None:
    """The disk errno behind `exc` or its chain: torch.save turns a failed write into a RuntimeError("unexpected
    pos ...") whose context is the OSError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = disk_errno(exc)
        if code is not None:
            return code
        exc = exc.__cause__ or exc.__context__
    return None


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves a torn file.

    A full disk, a quota, a read-only or forbidden folder is one CheckpointError naming the file; the previous
    checkpoint of that name is untouched (the rename never happened)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        code = _disk_error(e) if isinstance(e, Exception) else None
        if code is None:
            raise
        kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
        raise CheckpointError(f"{path}: {os.strerror(code)} while writing the checkpoint; {DISK_ERRORS[code]}, "
                              f"then run again (--resume picks up the last checkpoint){kept}") from None


def verify_zip(path: Path) -> None:
    """Check every member of a torch.save zip against its CRC-32 (torch.load itself does not): a flipped byte in
    the tensor data is one CheckpointError naming the file, not weights silently off. Files of the pre-1.6
    non-zip format carry no checksum and are read unverified."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:  # zlib/struct errors surface as these
        raise CheckpointError(f"{path}: damaged checkpoint ({e}); use another copy, or the run's previous "
                              "checkpoint") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint ({bad} fails its CRC check); use another copy, or the "
                              "run's previous checkpoint") from None


def load_checkpoint(path: str | Path, *, trusted_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely: its zip CRCs verified, then torch.load with weights_only=True; a bare state_dict
    becomes {"model": state_dict}. Every checkpoint read of the project goes through here.

    `trusted_pickle` (only for files this project wrote, e.g. compact models holding a module) unpickles
    arbitrary objects: weights_only=False."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    verify_zip(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted_pickle)
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
