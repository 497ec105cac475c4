"""Write a small action-recognition dataset of real encoded videos, in the exact UCF101 (or HMDB51) layout.

Classes differ only in *motion*: every video shows 2-3 shapes of random kind, colour and size at random
positions over a random texture that itself pans in a random direction; the class decides only how the shapes
move (drift direction, speed, back-and-forth swing, orbit, pulsation). A single frame carries no class
information, so a model has to use time. Everything is deterministic from ``--seed``.

    python datasets/make_synthetic.py --out synth --classes 5 --videos-per-class 12 --frames 48

UCF101 layout: ``<out>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and ``<out>/ucfTrainTestlist/`` (classInd.txt,
trainlist01-03.txt, testlist01-03.txt; groups are assigned so each split tests on ~28% of the groups, like
UCF101). HMDB51 layout (``--layout hmdb51``): ``<out>/hmdb51/<class>/<video>.avi`` and
``<out>/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt`` (~30% test, ~10% unused when a class has
10 or more videos). Motions are tuned for clips of 16 frames sampled from videos of ~32-96 frames.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python datasets/make_synthetic.py or from inside datasets/)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np

from datasets.errors import DataError, run_cli

WIDTH, HEIGHT, FPS = 320, 240, 25


@dataclass(frozen=True)
class Motion:
    kind: str  # linear | swing | orbit | pulse | zigzag
    angle: float = 0.0  # degrees, 0 = right, 90 = up
    speed: float = 0.0  # px/frame (linear, zigzag)
    period: float = 0.0  # frames (swing, orbit, pulse, zigzag)
    amp: float = 0.0  # px (swing, orbit, zigzag)
    direction: int = 1  # orbit sense


def motion_catalogue() -> list[tuple[str, Motion]]:
    """Class names and motions, most distinct first; ``--classes N`` takes the first N."""
    cat: list[tuple[str, Motion]] = [
        ("DriftRight", Motion("linear", 0, 2.0)),
        ("DriftLeft", Motion("linear", 180, 2.0)),
        ("SwingHorizontal", Motion("swing", 0, period=20, amp=40)),
        ("OrbitClockwise", Motion("orbit", period=32, amp=36, direction=1)),
        ("DriftUp", Motion("linear", 90, 2.0)),
        ("DriftDown", Motion("linear", 270, 2.0)),
        ("SwingVertical", Motion("swing", 90, period=20, amp=40)),
        ("OrbitCounterClockwise", Motion("orbit", period=32, amp=36, direction=-1)),
        ("DashRight", Motion("linear", 0, 5.0)),
        ("DashLeft", Motion("linear", 180, 5.0)),
        ("Pulse", Motion("pulse", period=20)),
        ("ZigZagRight", Motion("zigzag", 0, 2.0, period=16, amp=24)),
    ]
    for a in range(0, 360, 45):
        if a % 90:
            cat.append((f"Drift{a:03d}", Motion("linear", a, 2.0)))
    for a in range(0, 360, 45):
        cat.append((f"Dash{a:03d}", Motion("linear", a, 5.0)))
    for a in (45, 135):
        cat.append((f"Swing{a:03d}", Motion("swing", a, period=20, amp=40)))
    for a in (0, 45, 90, 135):
        cat.append((f"SwingFast{a:03d}", Motion("swing", a, period=10, amp=30)))
    for d, name in ((1, "Clockwise"), (-1, "CounterClockwise")):
        cat.append((f"OrbitFast{name}", Motion("orbit", period=16, amp=30, direction=d)))
    cat.append(("PulseSlow", Motion("pulse", period=40)))
    for a in (90, 180, 270):
        cat.append((f"ZigZag{a:03d}", Motion("zigzag", a, 2.0, period=16, amp=24)))
    seen: dict[str, Motion] = {}
    for name, m in cat:
        seen.setdefault(name, m)
    return list(seen.items())


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A periodic (torus) texture of random gratings, so it can pan with np.roll without seams."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    tex = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    base = rng.uniform(40, 140, 3)
    for _ in range(6):
        fx, fy = rng.integers(-8, 9, 2)
        phase = rng.uniform(0, 2 * math.pi)
        g = np.sin(2 * math.pi * (fx * x / WIDTH + fy * y / HEIGHT) + phase)
        tex += g[..., None] * rng.uniform(-25, 25, 3).astype(np.float32)
    tex += base.astype(np.float32)
    tex += rng.normal(0, 6, (HEIGHT, WIDTH, 3)).astype(np.float32)  # fine grain, like sensor noise
    return tex


def _displacement(m: Motion, t: float, phase: float) -> tuple[float, float, float]:
    """(dx, dy, scale) of the shapes at frame t; image y grows downwards, so 'up' is -dy."""
    ca, sa = math.cos(math.radians(m.angle)), -math.sin(math.radians(m.angle))
    if m.kind == "linear":
        return m.speed * t * ca, m.speed * t * sa, 1.0
    w = 2 * math.pi * t / m.period + phase if m.period else 0.0
    if m.kind == "swing":
        s = m.amp * math.sin(w)
        return s * ca, s * sa, 1.0
    if m.kind == "orbit":
        return m.amp * math.cos(m.direction * w), m.amp * math.sin(m.direction * w), 1.0
    if m.kind == "pulse":
        return 0.0, 0.0, 1.0 + 0.45 * math.sin(w)
    if m.kind == "zigzag":
        s = m.amp * math.sin(w)
        return m.speed * t * ca - s * sa, m.speed * t * sa + s * ca, 1.0
    raise ValueError(m.kind)


SCENES = ("panning", "static", "plain")


def render_video(motion: Motion, num_frames: int, rng: np.random.Generator, scene: str = "panning",
                 shape_scale: float = 1.0, speed_scale: float = 1.0) -> list[np.ndarray]:
    """Frames [H, W, 3] uint8 of one video of the given motion class.

    ``scene``: ``panning`` texture (the hard default: background motion competes with the class motion),
    ``static`` texture, or ``plain`` dark colour with bright shapes and sensor noise: edges of one polarity,
    which a tiny model learns from in minutes."""
    # Per-video jitter: classes stay separable but are not a single exact trajectory.
    m = Motion(
        motion.kind,
        motion.angle + rng.uniform(-6, 6),
        motion.speed * speed_scale * rng.uniform(0.85, 1.15),
        motion.period / speed_scale * rng.uniform(0.9, 1.1),
        motion.amp * rng.uniform(0.85, 1.15),
        motion.direction,
    )
    if scene not in SCENES:
        raise DataError(f"unknown scene {scene!r}: expected one of {', '.join(SCENES)}")
    tex = _texture(rng)
    bg_angle, bg_speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.5)
    if scene != "panning":
        bg_speed = 0.0
    if scene == "plain":
        # dark ground, bright shapes: edges keep one polarity, so a single oriented 3D filter sees the direction
        tex = rng.uniform(10, 60, 3).astype(np.float32) + rng.normal(0, 6, (HEIGHT, WIDTH, 3)).astype(np.float32)
    shapes = []
    for _ in range(int(rng.integers(2, 4))):
        shapes.append(
            dict(
                kind=rng.choice(["disc", "square", "ring", "diamond"]),
                r=float(rng.uniform(12, 22)) * shape_scale,
                color=rng.uniform(*((150, 255) if scene == "plain" else (0, 255)), 3).astype(np.float32),
                x0=float(rng.uniform(0, WIDTH)),
                y0=float(rng.uniform(0, HEIGHT)),
            )
        )
    phase = rng.uniform(0, 2 * math.pi)
    t0 = rng.uniform(0, 50)  # random time offset: position along the trajectory is uninformative
    frames = []
    for t in range(num_frames):
        bx, by = int(round(bg_speed * t * math.cos(bg_angle))), int(round(bg_speed * t * math.sin(bg_angle)))
        img = np.roll(tex, (by, bx), axis=(0, 1))
        dx, dy, scale = _displacement(m, t + t0, phase)
        for s in shapes:
            r = s["r"] * scale
            cx, cy = (s["x0"] + dx) % WIDTH, (s["y0"] + dy) % HEIGHT
            R = int(math.ceil(r)) + 1
            rows = (int(cy) + np.arange(-R, R + 1)) % HEIGHT
            cols = (int(cx) + np.arange(-R, R + 1)) % WIDTH
            oy = (int(cy) + np.arange(-R, R + 1) - cy)[:, None]
            ox = (int(cx) + np.arange(-R, R + 1) - cx)[None, :]
            if s["kind"] == "disc":
                mask = ox**2 + oy**2 <= r * r
            elif s["kind"] == "square":
                mask = (np.abs(ox) <= r * 0.85) & (np.abs(oy) <= r * 0.85)
            elif s["kind"] == "ring":
                d2 = ox**2 + oy**2
                mask = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
            else:
                mask = np.abs(ox) + np.abs(oy) <= r
            win = img[np.ix_(rows, cols)]
            win[mask] = s["color"]
            img[np.ix_(rows, cols)] = win
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def write_video(path: Path, frames: list[np.ndarray], container: str = "avi") -> None:
    """Encode frames into ``path`` (AVI/MPEG-4 Part 2 tagged XVID like UCF101, or MP4/H.264); atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format=container) as out:
        if container == "avi":
            stream = out.add_stream("mpeg4", rate=FPS)
            stream.codec_context.codec_tag = "XVID"
            stream.bit_rate = 900_000
        else:
            stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.thread_count = 1  # deterministic output
        for a in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Job:
    path: str
    class_index: int
    video_index: int
    num_frames: int
    seed: int
    container: str
    scene: str = "panning"
    shape_scale: float = 1.0
    speed_scale: float = 1.0


def _make_one(job: _Job) -> str:
    if Path(job.path).is_file():  # resumable: files appear only complete (tmp + rename)
        return job.path
    rng = np.random.default_rng([job.seed, job.class_index, job.video_index, 1])
    motion = motion_catalogue()[job.class_index][1]
    write_video(Path(job.path), render_video(motion, job.num_frames, rng, job.scene, job.shape_scale,
                                                   job.speed_scale), job.container)
    return job.path


def _ucf_groups(videos_per_class: int) -> list[tuple[int, int]]:
    """(group, clip) for each video of a class: round-robin over min(V, 25) groups like UCF101's g01-g25."""
    g = min(videos_per_class, 25)
    return [(j % g + 1, j // g + 1) for j in range(videos_per_class)]


def _ucf_test_split(group: int, num_groups: int) -> int:
    """Which split (1-3) tests on this group: UCF101 uses groups 1-7, 8-14, 15-21; scaled to num_groups."""
    slot = (group - 1) * 25 // num_groups
    return slot // 7 + 1 if slot < 21 else 0


def _hmdb_ids(videos_per_class: int, split: int) -> list[int]:
    """HMDB51 split ids (1 train, 2 test, 0 unused) for each video of a class, rotated per split."""
    v = videos_per_class
    n_test = max(1, round(0.3 * v))
    n_unused = v // 10 if v >= 10 else 0
    ids = []
    for j in range(v):
        p = (j - (split - 1) * n_test) % v
        ids.append(2 if p < n_test else 0 if p >= v - n_unused else 1)
    return ids


def make_synthetic(
    out: str | os.PathLike,
    classes: int = 5,
    videos_per_class: int = 10,
    frames: int = 48,
    frames_jitter: float = 0.2,
    seed: int = 0,
    layout: str = "ucf101",
    container: str = "avi",
    workers: int = 1,
    progress: bool = False,
    scene: str = "panning",
    shape_scale: float = 1.0,
    speed_scale: float = 1.0,
) -> dict:
    """Write the dataset under ``out``; returns a summary dict (paths of the video and split folders)."""
    cat = motion_catalogue()
    if not 2 <= classes <= len(cat):
        raise DataError(f"--classes must be between 2 and {len(cat)}, got {classes}")
    if videos_per_class < 2:
        raise DataError("--videos-per-class must be at least 2 (one train and one test video per class)")
    if frames < 1:
        raise DataError("--frames must be at least 1")
    if scene not in SCENES:
        raise DataError(f"unknown --scene {scene!r}: expected one of {', '.join(SCENES)}")
    if not 0.25 <= shape_scale <= 4:
        raise DataError(f"--shape-scale must be between 0.25 and 4, got {shape_scale}")
    if not 0.25 <= speed_scale <= 4:
        raise DataError(f"--speed-scale must be between 0.25 and 4, got {speed_scale}")
    out = Path(out)
    names = [n for n, _ in cat[:classes]]
    ext = ".avi" if container == "avi" else ".mp4"
    jobs: list[_Job] = []
    split_lines: dict[str, list[str]] = {}
    rng_len = np.random.default_rng([seed, 7])
    lengths = rng_len.uniform(1 - frames_jitter, 1 + frames_jitter, (classes, videos_per_class))
    if layout == "ucf101":
        video_root, split_root = out / "UCF-101", out / "ucfTrainTestlist"
        groups = _ucf_groups(videos_per_class)
        ng = min(videos_per_class, 25)
        for s in (1, 2, 3):
            split_lines[f"trainlist0{s}.txt"], split_lines[f"testlist0{s}.txt"] = [], []
        for c, name in enumerate(names):
            (video_root / name).mkdir(parents=True, exist_ok=True)
            for j, (g, k) in enumerate(groups):
                rel = f"{name}/v_{name}_g{g:02d}_c{k:02d}{ext}"
                n = max(1, int(round(frames * lengths[c, j])))
                jobs.append(_Job(str(video_root / rel), c, j, n, seed, container, scene, shape_scale,
                                 speed_scale))
                for s in (1, 2, 3):
                    if _ucf_test_split(g, ng) == s:
                        split_lines[f"testlist0{s}.txt"].append(rel)
                    else:
                        split_lines[f"trainlist0{s}.txt"].append(f"{rel} {c + 1}")
        split_lines["classInd.txt"] = [f"{c + 1} {name}" for c, name in enumerate(names)]
    elif layout == "hmdb51":
        video_root, split_root = out / "hmdb51", out / "testTrainMulti_7030_splits"
        for c, name in enumerate(names):
            cls = snake(name)
            (video_root / cls).mkdir(parents=True, exist_ok=True)
            files = [f"Synthetic_{name}_{cls}_f_cm_np{1 + j % 3}_fr_med_{j}{ext}" for j in range(videos_per_class)]
            for j, f in enumerate(files):
                n = max(1, int(round(frames * lengths[c, j])))
                jobs.append(_Job(str(video_root / cls / f), c, j, n, seed, container, scene, shape_scale,
                                 speed_scale))
            for s in (1, 2, 3):
                split_lines[f"{cls}_test_split{s}.txt"] = [
                    f"{f} {i} " for f, i in zip(files, _hmdb_ids(videos_per_class, s))
                ]
    else:
        raise DataError(f"unknown --layout {layout!r}: expected ucf101 or hmdb51")
    split_root.mkdir(parents=True, exist_ok=True)
    for fname, lines in split_lines.items():
        (split_root / fname).write_text("".join(line + "\n" for line in lines))
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.imap_unordered(_make_one, jobs, chunksize=4)
            _consume(results, len(jobs), progress)
    else:
        _consume(map(_make_one, jobs), len(jobs), progress)
    return {"videos": str(video_root), "splits": str(split_root), "num_videos": len(jobs), "classes": names}


def _consume(it, total: int, progress: bool) -> None:
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=total, desc="synthetic videos", unit="video")
    for _ in it:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument(
        "--classes", "-c", type=int, default=5, help=f"number of motion classes (2-{len(motion_catalogue())})"
    )
    p.add_argument("--videos-per-class", "-n", type=int, default=10)
    p.add_argument("--frames", "-f", type=int, default=48, help="mean frames per video (25 fps)")
    p.add_argument("--frames-jitter", type=float, default=0.2, help="video length varies by +-this fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["ucf101", "hmdb51"], default="ucf101")
    p.add_argument(
        "--container", choices=["avi", "mp4"], default="avi", help="avi = MPEG-4/XviD like UCF101, mp4 = H.264"
    )
    p.add_argument("--scene", choices=SCENES, default="panning",
                   help="background: panning texture (hard), static texture, or plain colour (easy, for the demo)")
    p.add_argument("--shape-scale", type=float, default=1.0, help="multiply the moving shapes' size")
    p.add_argument("--speed-scale", type=float, default=1.0, help="multiply the motions' speed (and frequency)")
    p.add_argument("--workers", "-j", type=int, default=min(4, os.cpu_count() or 1))
    a = p.parse_args(argv)
    info = make_synthetic(
        a.out,
        a.classes,
        a.videos_per_class,
        a.frames,
        a.frames_jitter,
        a.seed,
        a.layout,
        a.container,
        a.workers,
        progress=True,
        scene=a.scene,
        shape_scale=a.shape_scale,
        speed_scale=a.speed_scale,
    )
    print(
        f"wrote {info['num_videos']} videos of {len(info['classes'])} classes to {info['videos']}, "
        f"splits in {info['splits']}"
    )
    return 0


if __name__ == "__main__":
    from datasets.make_synthetic import main as _main  # spawned workers must find _make_one by import

    sys.exit(run_cli(_main))
