"""ONNX export of the dense-equivalent pruned model, and saving/loading compact models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .surgery import masked_dense_copy

FORMAT = "prune3d-compact"


def export_onnx(model: nn.Module, masks: dict[str, torch.Tensor], path: str | Path, input_shape: tuple[int, ...], *,
                batch_size: int = 1, opset: int = 17) -> Path:
    """Export the dense-equivalent pruned model (pruned weights zeroed) to ONNX with a dynamic batch axis.

    ONNX runtimes run it densely; the file carries the pruned weights for other engines. `input_shape` is one
    clip (C, T, H, W). Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dense = masked_dense_copy(model, masks)
    x = torch.randn(batch_size, *input_shape)
    kwargs = dict(input_names=["clip"], output_names=["logits"], opset_version=opset,
                  dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}})
    try:
        torch.onnx.export(dense, (x,), str(path), dynamo=False, **kwargs)
    except TypeError:  # torch without the dynamo switch
        torch.onnx.export(dense, (x,), str(path), **kwargs)
    return path


def save_compact(compact: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """torch.save the compact model: the module itself (plans, compact weights) and its state_dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": 1, "model": compact, "state_dict": compact.state_dict(),
                "meta": meta or {}}, path)
    return path


def load_compact(path: str | Path) -> nn.Module:
    """Load a model written by `save_compact` (a pickled module: only load files you trust); its zip CRCs are
    checked first, like every checkpoint's."""
    from training.checkpoint import load_checkpoint

    data = load_checkpoint(path, trusted_pickle=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a prune3d compact model")
    return data["model"].eval()
