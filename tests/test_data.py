"""Data pipeline: synthetic videos -> frames -> LMDB -> clips, exactly, for both dataset layouts."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

from datasets import DataError, build_dataset, consecutive_indices, segment_indices
from datasets.create_lmdb import from_videos
from datasets.extract_videos import extract
from datasets.lmdb_format import META_KEY, video_key
from datasets.make_synthetic import make_synthetic
from datasets.splits import read_splits
from datasets.video_io import decode_jpeg, iter_frames

ROOT = Path(__file__).resolve().parent.parent
KW = dict(clip_len=8, crop_size=32, short_side=40)


def test_every_video_of_the_split_yields_a_correct_clip(synthetic):
    lists = read_splits("ucf101", synthetic["splits"], 1)
    for split in ("train", "val"):
        ds = build_dataset(str(synthetic["lmdb"]), split, **KW)
        expected = {e.video_id: e.label for e in lists.videos[split]}
        assert ds.num_videos == len(expected) and ds.num_classes == 3
        for k in range(len(ds)):
            clip, label, v = ds[k]
            assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.float32
            assert label == expected[ds.video_ids[v]]


def test_frames_from_lmdb_equal_the_extracted_jpegs(synthetic):
    ds = build_dataset(str(synthetic["lmdb"]), "val", **KW)
    for v in range(ds.num_videos):
        idx = ds.indices(v)
        got = ds.frames(v, idx)
        folder = synthetic["frames"] / ds.video_ids[v]
        want = np.stack([decode_jpeg((folder / f"{i + 1:05d}.jpg").read_bytes()) for i in idx])
        assert np.array_equal(got, want)
    frames_ds = build_dataset(str(synthetic["frames"]), "val", **KW)  # the frame-folder loader agrees
    assert np.array_equal(frames_ds.frames(0, [0, 5]), ds.frames(0, [0, 5]))


def test_sampling_worked_examples():
    assert segment_indices(100, 4) == [12, 37, 62, 87]
    assert segment_indices(16, 16) == list(range(16))
    assert segment_indices(5, 8) == [0, 0, 1, 2, 2, 3, 4, 4]  # short videos repeat frames, never dropped
    assert segment_indices(100, 4, clip=0, clips=2) == [6, 31, 56, 81]
    assert consecutive_indices(5, 8, 3) == [3, 4, 0, 1, 2, 3, 4, 0]  # looped


def test_multi_clip_test_set(synthetic):
    ds = build_dataset(str(synthetic["lmdb"]), "val", test_clips=3, **KW)
    assert len(ds) == 3 * ds.num_videos
    assert [ds[k][2] for k in range(6)] == [0, 0, 0, 1, 1, 1]
    assert ds.indices(0, 0) != ds.indices(0, 2)


def test_corrupt_and_missing_videos_are_reported_and_the_rest_extracted(synthetic, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(synthetic["raw"], raw)
    vids = sorted((raw / "UCF-101").rglob("*.avi"))
    vids[0].write_bytes(b"not a video" * 100)
    vids[1].unlink()
    out = tmp_path / "frames"
    s = extract("ucf101", str(raw / "UCF-101"), str(raw / "ucfTrainTestlist"), str(out), short_side=40,
                progress=False)
    rows = [ln.split("\t") for ln in (out / "failed.txt").read_text().splitlines() if not ln.startswith("#")]
    failed = {r[0]: r[2] for r in rows}  # video_id, split, status, kept|skipped, file, message
    assert all(r[3] == "skipped" for r in rows)
    assert failed == {vids[0].stem: "corrupt", vids[1].stem: "missing"}
    assert s["extracted"] == 12 - 2
    listed = [ln.split()[0] for f in ("train.txt", "val.txt") for ln in (out / f).read_text().splitlines()]
    assert sorted(listed) == sorted(v.stem for v in vids[2:])
    again = extract("ucf101", str(raw / "UCF-101"), str(raw / "ucfTrainTestlist"), str(out), short_side=40,
                    progress=False)
    assert again["skipped"] == 10 and again["extracted"] == 0  # resumed: finished videos skipped
    assert all((out / v.stem / ".done").is_file() for v in vids[2:])


def test_a_full_disk_stops_extraction_with_one_line_not_corrupt_videos(synthetic, tmp_path, monkeypatch):
    """ENOSPC while writing frames is the machine's problem: extraction stops, naming the error and the fix,
    instead of listing every later video as corrupt and exiting 0; what was finished is kept for the rerun."""
    import errno
    from pathlib import Path as P

    from datasets.errors import DataError

    real = P.write_bytes
    written = []

    def full_after_40_frames(self, data):
        if self.suffix == ".jpg" and len(written) >= 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(self)
        return real(self, data)

    monkeypatch.setattr(P, "write_bytes", full_after_40_frames)
    out = tmp_path / "frames"
    with pytest.raises(DataError, match="No space left on device while writing the frames of .*free some space"):
        extract("ucf101", str(synthetic["videos"]), str(synthetic["splits"]), str(out), short_side=40,
                progress=False, workers=1)
    assert not (out / "failed.txt").exists()  # nothing reported as corrupt
    monkeypatch.setattr(P, "write_bytes", real)
    s = extract("ucf101", str(synthetic["videos"]), str(synthetic["splits"]), str(out), short_side=40,
                progress=False, workers=1)
    assert s["extracted"] + s["skipped"] == 12 and s["skipped"] >= 1  # the rerun keeps the finished videos


def test_hmdb51_layout_end_to_end(tmp_path):
    info = make_synthetic(tmp_path / "raw", classes=3, videos_per_class=3, frames=16, layout="hmdb51", workers=1)
    from_videos("hmdb51", info["videos"], info["splits"], str(tmp_path / "lmdb"), short_side=40)
    lists = read_splits("hmdb51", info["splits"], 1)
    for split in ("train", "val"):
        ds = build_dataset(str(tmp_path / "lmdb"), split, **KW)
        assert ds.num_videos == len(lists.videos[split]) > 0
        for k in range(len(ds)):
            _, label, v = ds[k]
            assert ds.class_names[label] == lists.class_names[label]
            assert label == {e.video_id: e.label for e in lists.videos[split]}[ds.video_ids[v]]


def test_interrupted_lmdb_build_resumes_and_is_not_readable_before(synthetic, tmp_path):
    out = tmp_path / "lmdb"
    calls = []

    def flaky(v):
        calls.append(v)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return [(synthetic["frames"] / v / "00001.jpg").read_bytes()]

    from datasets.create_lmdb import build, read_frame_list

    items, names = read_frame_list(synthetic["frames"], "train")
    with pytest.raises(KeyboardInterrupt):
        build(out, "train", items, names, flaky, progress=False)
    with pytest.raises(DataError, match="interrupted"):
        build_dataset(str(out), "train", **KW)
    calls.clear()
    build(out, "train", items, names, lambda v: (calls.append(v), [b"x"])[1], progress=False)
    assert len(calls) == len(items) - 2  # the two finished videos were kept
    assert (out / "train.lmdb").exists() and not (out / "train.lmdb.partial").exists()


def _cli_error(args: list[str]) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


def test_bad_input_is_one_clear_line(synthetic, tmp_path):
    # wrong path
    err = _cli_error(["datasets/create_lmdb.py", "--frames", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert "nope" in err
    with pytest.raises(DataError, match="no such data folder"):
        build_dataset(str(tmp_path / "nowhere"), "train", **KW)
    # a split file naming an unknown class
    splits = tmp_path / "splits"
    shutil.copytree(synthetic["splits"], splits)
    with (splits / "trainlist01.txt").open("a") as f:
        f.write("Juggling/v_Juggling_g01_c01.avi 1\n")
    err = _cli_error(["datasets/extract_videos.py", "--videos", str(synthetic["videos"]), "--splits", str(splits),
                      "--out", str(tmp_path / "f")])
    assert "Juggling" in err and "trainlist01.txt" in err
    # a damaged record, and a database of a newer format version
    db = tmp_path / "db"
    shutil.copytree(synthetic["lmdb"], db)
    env = lmdb.open(str(db / "val.lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(video_key(1), b"P3DV" + b"\x00" * 30)
        meta = json.loads(txn.get(META_KEY))
    env.close()
    ds = build_dataset(str(db), "val", **KW)
    with pytest.raises(DataError, match=rf"val.lmdb video {ds.video_ids[1]} .*damaged"):
        ds[1]
    ds._env.close()
    env = lmdb.open(str(db / "val.lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(META_KEY, json.dumps({**meta, "version": 99}).encode())
    env.close()
    with pytest.raises(DataError, match="newer prune3d"):
        build_dataset(str(db), "val", **KW)
    # the driver prints the same one line
    torch.save({"model": {}, "args": {}}, tmp_path / "x.pth")  # readable: the driver reads it before the data
    err = _cli_error(["opt_main.py", "--evaluate", "--arch", "c3d", "--data-location", str(db), "--load-path",
                      str(tmp_path / "x.pth")])
    assert "newer prune3d" in err


def test_video_metrics_average_softmax_over_clips():
    import torch

    from datasets import clip_metrics, video_metrics

    # video 0 (label 0): one confident wrong clip, two mildly right ones -> the averaged softmax still says 1;
    # video 1 (label 2): both clips right.
    logits = torch.tensor([[0.0, 9.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0, 0, 5.0], [0, 0, 5.0]])
    labels = torch.tensor([0, 0, 0, 2, 2])
    vidx = torch.tensor([0, 0, 0, 1, 1])
    assert abs(clip_metrics(logits, labels)["top1"] - 4 / 5) < 1e-6
    m = video_metrics(logits, labels, vidx)
    assert m["top1"] == 0.5 and m["top5"] == 1.0 and m["num_videos"] == 2


def test_scenes_and_scales_change_what_is_rendered():
    from datasets.make_synthetic import motion_catalogue, render_video

    motion = dict(motion_catalogue())["DriftRight"]
    pan = render_video(motion, 6, np.random.default_rng(0))
    plain = render_video(motion, 6, np.random.default_rng(0), scene="plain")
    static = render_video(motion, 6, np.random.default_rng(0), scene="static")
    fast = render_video(motion, 6, np.random.default_rng(0), scene="static", speed_scale=3)
    big = render_video(motion, 6, np.random.default_rng(0), scene="static", shape_scale=2)

    def moving(frames):  # fraction of pixels that change between the first and the last frame
        return float((np.abs(frames[-1].astype(int) - frames[0]).sum(-1) > 30).mean())

    assert moving(pan) > 0.1  # the textured background pans
    assert moving(static) < 0.05 and moving(plain) < 0.05  # only the shapes move
    assert plain[0].reshape(-1, 3).std(0).max() < static[0].reshape(-1, 3).std(0).max()
    assert moving(fast) > moving(static) and moving(big) > moving(static)
    with pytest.raises(DataError, match="scene"):
        render_video(motion, 2, np.random.default_rng(0), scene="cloudy")


def test_horizontal_flip_is_optional(synthetic):
    flips = build_dataset(str(synthetic["lmdb"]), "train", **KW)
    fixed = build_dataset(str(synthetic["lmdb"]), "train", hflip=False, **KW)
    assert any(type(t).__name__ == "RandomHorizontalFlip" for t in flips.transform.transforms)
    assert not any(type(t).__name__ == "RandomHorizontalFlip" for t in fixed.transform.transforms)


def test_an_empty_split_is_refused_before_any_work(synthetic, tmp_path):
    """A split list with no videos (every video failed to extract) is never built into an empty LMDB, and a
    data folder with an empty split is refused before training."""
    from datasets.create_lmdb import from_frames
    from datasets.errors import DataError
    from opt_main import cli

    frames = tmp_path / "frames"
    shutil.copytree(synthetic["frames"], frames)
    (frames / "val.txt").write_text("")
    with pytest.raises(DataError, match="val.txt: lists no videos"):
        from_frames(str(frames), str(tmp_path / "lmdb"))
    assert not (tmp_path / "lmdb" / "val.lmdb").exists()
    assert cli(["--train", "--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32",
                "--short-side", "40", "--dataset", "synthetic", "--data-location", str(frames), "--save-dir",
                str(tmp_path / "runs"), "--epochs", "1", "--workers", "0"]) == 2
    assert not (tmp_path / "runs").exists()


def _count_frames(path: str) -> int:
    return sum(1 for _ in iter_frames(path, 40))


def test_decoding_works_in_processes_forked_after_a_decode(synthetic):
    """A process forked after this one decoded a video (how a worker pool on Linux starts) decodes too. PyAV >= 17
    scales frames on a thread pool by default, which the forked copy inherits without its threads: its first frame
    waited forever (the LMDB build of a process that had decoded before hung so)."""
    video = str(next(synthetic["videos"].rglob("*.avi")))
    n = _count_frames(video)
    assert n > 0
    ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    try:
        futures = [ex.submit(_count_frames, video) for _ in range(2)]
        assert [f.result(timeout=120) for f in futures] == [n, n]
    finally:
        for p in list(getattr(ex, "_processes", {}).values()):  # a hung worker must not hang the test run
            p.kill()
        ex.shutdown(wait=False, cancel_futures=True)
