"""Run logging: a line per epoch on stdout, `metrics.jsonl` for scripts, TensorBoard scalars for people."""

from __future__ import annotations

import json
from pathlib import Path


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self.tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("epoch", 0)
            for key, value in _flatten(record).items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()
        print(format_record(record), flush=True)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard point between the per-epoch records (e.g. the training loss every --print-freq)."""
        if self.enabled and self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def format_record(r: dict) -> str:
    parts = [f"[{r.get('phase', '')}] epoch {r.get('epoch')}"]
    for key in ("loss", "penalty", "lr", "clip_top1", "video_top1", "sparsity", "rho", "mean_residual", "max_residual",
                "max_removed", "load_errors"):
        if key in r and r[key] is not None:
            v = r[key]
            parts.append(f"{key} {v:.4g}" if isinstance(v, float) else f"{key} {v}")
    return "  ".join(parts)
