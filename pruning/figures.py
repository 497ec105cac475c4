"""Figures of a pruned model: kernel-group maps, MACs per layer, training curves, latency per layer (PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .report import ModelReport  # noqa: E402


def kernel_group_map(mask: torch.Tensor, name: str, group_size: tuple[int, int], path: Path,
                     max_rows: int = 64, max_channels: int = 16) -> Path:
    """Kept (dark) and pruned (light) weights of one layer: rows = filters, columns = input channel x kernel tap.
    Grid lines mark kernel groups, so KGR rows, KGC columns and KGS positions are visible per group."""
    cout, cin = mask.shape[:2]
    K = math.prod(mask.shape[2:])
    rows, chans = min(cout, max_rows), min(cin, max_channels)
    img = mask[:rows, :chans].reshape(rows, chans * K).float().numpy()
    fig, ax = plt.subplots(figsize=(min(16, 2 + chans * K / 12), min(10, 1.5 + rows / 8)))
    ax.imshow(img, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    gM, gN = group_size
    for r in range(gM, rows, gM):
        ax.axhline(r - 0.5, color="tab:red", lw=0.8)
    for c in range(gN * K, chans * K, gN * K):
        ax.axvline(c - 0.5, color="tab:red", lw=0.8)
    density = float(mask.float().mean())
    ax.set_title(f"{name} {tuple(mask.shape)}: density {density:.3f} (first {rows} filters x {chans} channels; "
                 f"groups {gM}x{gN})")
    ax.set_xlabel(f"input channel x {K} kernel taps")
    ax.set_ylabel("output filter")
    return _save(fig, path)


def macs_per_layer(report: ModelReport, path: Path) -> Path:
    layers = [lr for lr in report.layers if lr.kind == "Conv3d"]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4.5))
    x = range(len(layers))
    ax.bar([i - 0.2 for i in x], [lr.macs_dense / 1e9 for lr in layers], width=0.4, label="dense")
    ax.bar([i + 0.2 for i in x], [lr.macs_pruned / 1e9 for lr in layers], width=0.4, label="pruned")
    ax.set_xticks(list(x), [lr.name.removesuffix(".weight") for lr in layers], rotation=70, fontsize=7)
    ax.set_ylabel("GMAC per clip")
    ax.set_title(f"{report.arch}: {report.macs_dense / 1e9:.2f} -> {report.macs_pruned / 1e9:.2f} GMAC "
                 f"({report.reduction:.2f}x)")
    ax.legend()
    return _save(fig, path)


def training_curves(history: list[dict], path: Path, per_layer: dict[str, list[dict]] | None = None) -> Path:
    """Loss and accuracy over epochs, then one panel per per-layer series (ADMM's primal residual and rho, the
    norm share reweighting would still remove): {title: [{"epoch": e, layer: value, ...}, ...]}."""
    per_layer = {k: v for k, v in (per_layer or {}).items() if v}
    panels = 2 + len(per_layer)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    ep = [h["epoch"] for h in history]
    axes[0].plot(ep, [h.get("loss", float("nan")) for h in history], marker="o", label="loss")
    if any(h.get("penalty") for h in history):
        axes[0].plot(ep, [h.get("penalty", 0) for h in history], marker=".", label="penalty")
        axes[0].set_yscale("log")  # the penalty can be orders of magnitude above the loss
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    for key in ("train_top1", "clip_top1", "video_top1"):
        axes[1].plot(ep, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    for ax, (title, records) in zip(axes[2:], per_layer.items()):
        for name in (k for k in records[0] if k != "epoch"):
            pts = [(r["epoch"], r[name]) for r in records if name in r and r[name] > 0]
            ax.semilogy([e for e, _ in pts], [v for _, v in pts], marker=".", label=name.removesuffix(".weight"))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    return _save(fig, path)


def latency_per_layer(bench: dict, path: Path) -> Path:
    layers = bench.get("layers", [])
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(layers) + 2), 4.5))
    x = range(len(layers))
    ax.bar([i - 0.2 for i in x], [lr["dense_ms"] for lr in layers], width=0.4, label="dense (fastest PyTorch)")
    ax.bar([i + 0.2 for i in x], [lr["sparse_ms"] for lr in layers], width=0.4, label="compact")
    ax.set_xticks(list(x), [str(lr.get("name", i)) for i, lr in enumerate(layers)], rotation=70, fontsize=7)
    ax.set_ylabel("ms")
    ax.set_title(f"whole model: {bench.get('dense_ms', 0):.1f} -> {bench.get('sparse_ms', 0):.1f} ms "
                 f"({bench.get('speedup', 0):.2f}x, ideal {bench.get('ideal', 0):.2f}x)")
    ax.legend()
    return _save(fig, path)


def to_tensorboard(paths: list[Path], log_dir: Path) -> None:
    """The same PNGs as TensorBoard images, beside the run's scalars."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as tb:
        for p in paths:
            tb.add_image(f"figures/{p.stem}", np.asarray(Image.open(p).convert("RGB")), dataformats="HWC")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ablation(rows: dict[str, dict], dense: list[float], chance: float, path: Path) -> Path:
    """Per method: video top-1 right after the hard prune and after masked retraining (mean +- std over seeds,
    each seed a dot), against the dense models and chance."""
    names = list(rows)
    fig, ax = plt.subplots(figsize=(1.5 * len(names) + 2.5, 4.4))
    for i, name in enumerate(names):
        runs = rows[name]["runs"]
        for dx, key, color, label in ((-0.2, "after_prune", "tab:orange", "right after the hard prune"),
                                      (0.2, "video_top1", "tab:blue", "after masked retraining")):
            vals = [r[key] for r in runs]
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            ax.bar(i + dx, mean, width=0.38, yerr=std, capsize=4, color=color, alpha=0.65,
                   label=label if i == 0 else None)
            ax.scatter([i + dx] * len(vals), vals, color="black", s=10, zorder=3)
    mean_dense = sum(dense) / len(dense)
    ax.axhline(mean_dense, color="tab:green", ls="--", label=f"dense {mean_dense:.3f}")
    ax.axhline(chance, color="gray", ls=":", label=f"chance {chance:.2f}")
    ax.set_xticks(range(len(names)), [n.replace("-", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("video top-1")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"same MAC reduction, same epochs; mean +- std over {len(dense)} seeds", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=7)
    return _save(fig, path)


# the per-layer series training_curves draws from metrics.jsonl: panel title -> record key
PER_LAYER_SERIES = {"ADMM primal residual ||W-Z||/||W||": "residual", "ADMM rho per layer": "rho_layer",
                    "rew: norm share the hard prune removes": "removed"}


def for_run(run_dir: Path, masks: dict[str, torch.Tensor], group_size: tuple[int, int], report: ModelReport,
            history: list[dict], benchmark_json: Path | None = None) -> list[Path]:
    """Every figure of a run folder into <run_dir>/figures/ and its TensorBoard log: the kernel-group map of
    each pruned conv, MACs per layer, the training curves (with the per-layer ADMM/rew series of
    metrics.jsonl) and, when a benchmark JSON exists, latency per layer."""
    out = run_dir / "figures"
    written = [kernel_group_map(m, n, group_size, out / f"groups_{n.removesuffix('.weight')}.png")
               for n, m in masks.items() if m.dim() == 5]
    written.append(macs_per_layer(report, out / "macs_per_layer.png"))
    records = read_metrics(run_dir / "metrics.jsonl")
    per_layer = {title: [{"epoch": r["epoch"], **r[key]} for r in records if isinstance(r.get(key), dict)]
                 for title, key in PER_LAYER_SERIES.items()}
    if history:
        written.append(training_curves(history, out / "training_curves.png", per_layer))
    bench_json = benchmark_json or run_dir / "benchmark.json"
    if bench_json.exists():
        written.append(latency_per_layer(json.loads(bench_json.read_text()), out / "latency_per_layer.png"))
    to_tensorboard(written, run_dir / "tb")
    return written
