"""Draw the prune3d pipeline (docs/pipeline.png) for the README: data -> dense -> ADMM/rew -> retrain -> outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

STEPS = [  # (title, command, detail)
    ("videos", "datasets/extract_videos.py", "UCF101 / HMDB51 / synthetic\nsplit lists -> frames"),
    ("LMDB", "datasets/create_lmdb.py", "train.lmdb, val.lmdb\none record per video"),
    ("dense baseline", "opt_main.py --train", "C3D, R(2+1)D-18, S3D"),
    ("find the pattern", "--admm  or  --rew", "profile YAML: KGS, KGR,\nKGC, KGRC per layer"),
    ("masked retraining", "--masked-retrain", "pattern fixed,\noptional distillation"),
]
OUTPUTS = [
    ("report", "--report", "MACs, params per layer"),
    ("figures", "--plots", "group maps, curves"),
    ("speed", "--benchmark", "sparse kernels vs dense"),
    ("ship", "--export onnx", "compact model, ONNX"),
]


def box(ax, x, y, w, h, title, cmd, detail, color):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#333"))
    ax.text(x + w / 2, y + h - 0.17, title, ha="center", va="top", fontsize=10, weight="bold")
    ax.text(x + w / 2, y + h - 0.45, cmd, ha="center", va="top", fontsize=7.5, family="monospace")
    ax.text(x + w / 2, y + 0.1, detail, ha="center", va="bottom", fontsize=7.5, color="#333")


def arrow(ax, a, b):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color="#333", lw=1.2))


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(12, 3.6))
    w, h, gap = 2.0, 1.25, 0.45
    for i, (t, c, d) in enumerate(STEPS):
        x = i * (w + gap)
        box(ax, x, 1.7, w, h, t, c, d, "#dbe9f6" if i < 2 else "#fde8c8")
        if i:
            arrow(ax, (x - gap, 1.7 + h / 2), (x, 1.7 + h / 2))
    last = (len(STEPS) - 1) * (w + gap) + w / 2
    ow = 2.3
    for j, (t, c, d) in enumerate(OUTPUTS):
        x = j * (ow + 0.5) + 0.6
        box(ax, x, 0.0, ow, 1.1, t, c, d, "#dff0d8")
        arrow(ax, (last, 1.7), (x + ow / 2, 1.1))
    ax.set_xlim(-0.1, len(STEPS) * (w + gap))
    ax.set_ylim(-0.1, 3.05)
    ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs/pipeline.png")
    draw(Path(p.parse_args().out))
