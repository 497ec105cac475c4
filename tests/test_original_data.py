"""Frame folders as the originals' extract_videos.py writes them (RT3D, TCAD), and create_lmdb's options of theirs:
--sep, -n/--num_processes, --max-frame, -s test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets import DataError, FrameFolderClips, build_dataset
from datasets import create_lmdb as cl
from datasets.frame_lists import parse_frame_list
from datasets.lmdb_format import META_KEY, decode_header, frame_bytes, read_meta, video_key
from tests.conftest import lmdb_records as records

ROOT = Path(__file__).resolve().parent.parent
KW = dict(clip_len=8, crop_size=32, short_side=40)


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "datasets" / "create_lmdb.py"), *args], cwd=cwd,
                          capture_output=True, text=True)


def one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if "%|" not in ln]  # tqdm's bars aside
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    return lines[0]


def original_layout(ours: Path, dest: Path, sep: str = " ") -> Path:
    """What the originals' extract_videos.py leaves: <vid>/%05d.jpg and train.txt/val.txt of "vid 1 N label"
    lines (dataset/extract_videos.py:155 in RT3D, datasets/extract_videos.py:153 in TCAD); no classes.txt, no
    markers. Same videos and order as our lists, so the databases can be compared record by record."""
    dest.mkdir(parents=True)
    for split in ("train", "val"):
        lines = []
        for line in (ours / f"{split}.txt").read_text().splitlines():
            vid, n, label = line.split()
            (dest / vid).mkdir()
            for f in sorted((ours / vid).glob("*.jpg")):
                shutil.copy(f, dest / vid / f.name)
            assert len(list((dest / vid).glob("*.jpg"))) == int(n)
            lines.append(sep.join([vid, "1", n, label]))
        (dest / f"{split}.txt").write_text("".join(ln + "\n" for ln in lines))
    return dest


@pytest.fixture(scope="module")
def orig(synthetic, tmp_path_factory) -> Path:
    return original_layout(synthetic["frames"], tmp_path_factory.mktemp("orig") / "ucf101_frame")


def assert_same_records(got_db: Path, want_db: Path) -> None:
    got, want = records(got_db), records(want_db)
    assert sorted(got) == sorted(want)
    for key in want:
        if key != META_KEY:
            assert got[key] == want[key], key
    gm, wm = read_meta(got_db), read_meta(want_db)
    for field in ("video_ids", "labels", "num_frames", "num_videos"):
        assert gm[field] == wm[field], field


def test_original_frame_folder_loads_like_ours(synthetic, orig):
    for split in ("train", "val"):
        theirs = build_dataset(str(orig), split, **KW)
        ours = build_dataset(str(synthetic["frames"]), split, **KW)
        assert isinstance(theirs, FrameFolderClips)
        assert theirs.video_ids == ours.video_ids and theirs.labels == ours.labels
        assert theirs._num_frames == ours._num_frames
        for v in range(theirs.num_videos):
            last = ours._num_frames[v] - 1
            assert np.array_equal(theirs.frames(v, [0, 11, last]), ours.frames(v, [0, 11, last]))
    assert theirs.class_names == ["0", "1", "2"]  # no classes.txt in their layout: the label numbers


def test_original_frame_folder_trains(orig, tmp_path):
    from opt_main import cli as driver

    assert driver(["--train", "--arch", "c3d", "--width-mult", "0.25", "--clip-len", "8", "--crop-size", "32",
                   "--short-side", "40", "--dataset", "synthetic", "--data-location", str(orig), "--save-dir",
                   str(tmp_path / "runs"), "--epochs", "1", "--workers", "0"]) == 0


def test_a_range_other_than_the_whole_folder_is_honoured(orig, tmp_path):
    """Their 4-field line means frames start..end (create_lmdb.py:37-39, 50): start 5 reads 00005.jpg first."""
    frames = tmp_path / "f"
    shutil.copytree(orig, frames)
    vid, _, n, label = (frames / "val.txt").read_text().splitlines()[0].split()
    (frames / "val.txt").write_text(f"{vid} 5 20 {label}\n")
    ds = build_dataset(str(frames), "val", **KW)
    assert ds._num_frames == [16]
    assert np.array_equal(ds.frames(0, [0]), build_dataset(str(orig), "val", **KW).frames(0, [4]))
    meta = cl.from_frames(str(frames), str(tmp_path / "db"), splits=("val",))[0]
    assert meta["num_frames"] == [16]
    buf = records(tmp_path / "db" / "val.lmdb")[video_key(0)]
    rec = decode_header(buf, "")
    assert frame_bytes(buf, rec, 0, "") == (frames / vid / "00005.jpg").read_bytes()
    assert frame_bytes(buf, rec, 15, "") == (frames / vid / "00020.jpg").read_bytes()


def test_original_lists_build_the_same_lmdb_as_ours(synthetic, orig, tmp_path):
    # the originals' spelling, run where their README runs it
    for split in ("train", "val"):
        res = cli("-d", "ucf101_frame", "-s", split, "-o", str(tmp_path / "db"), cwd=orig.parent)
        assert res.returncode == 0, res.stderr
        assert_same_records(tmp_path / "db" / f"{split}.lmdb", synthetic["lmdb"] / f"{split}.lmdb")


@pytest.mark.parametrize("sep", [";", ","])
def test_sep(synthetic, orig, tmp_path, sep):
    frames = tmp_path / "f"
    shutil.copytree(orig, frames)
    for split in ("train", "val"):
        text = (frames / f"{split}.txt").read_text()
        (frames / f"{split}.txt").write_text(text.replace(" ", sep))
    if sep == ",":  # not guessed: without --sep, the line is refused naming the separator tried
        err = one_line(cli("--frames", str(frames), "-s", "val"))
        assert f"{frames / 'val.txt'}:1:" in err and "whitespace" in err
    args = ["--sep", sep] if sep == "," else []  # ';' (their Kinetics lists) is recognised
    res = cli("--frames", str(frames), "--out", str(tmp_path / "db"), *args)
    assert res.returncode == 0, res.stderr
    for split in ("train", "val"):
        assert_same_records(tmp_path / "db" / f"{split}.lmdb", synthetic["lmdb"] / f"{split}.lmdb")
    assert build_dataset(str(frames), "val", sep=sep, **KW).video_ids == read_meta(synthetic["lmdb"] /
                                                                                   "val.lmdb")["video_ids"]


class PidLoader:
    """A picklable loader that notes which process read each video."""

    def __init__(self, frames: Path, log: Path) -> None:
        self.frames, self.log = frames, log

    def __call__(self, vid: str) -> list[bytes]:
        (self.log / f"{vid}.{os.getpid()}").touch()
        return cl.frame_jpegs(self.frames, vid)


def test_n2_equals_n1_and_really_uses_workers(synthetic, orig, tmp_path):
    one = cli("--frames", str(orig), "--out", str(tmp_path / "n1"), "-n", "1")
    two = cli("--frames", str(orig), "--out", str(tmp_path / "n2"), "--num_processes", "2", "--max-frame", "7")
    three = cli("--frames", str(orig), "--out", str(tmp_path / "n3"), "-n", "3", "--max-frame", "7")
    assert one.returncode == two.returncode == three.returncode == 0, one.stderr + two.stderr + three.stderr
    cl.from_frames(str(orig), str(tmp_path / "m1"), max_frame=7)
    for split in ("train", "val"):
        name = f"{split}.lmdb"
        assert records(tmp_path / "n2" / name) == records(tmp_path / "m1" / name)  # byte for byte, meta too
        assert records(tmp_path / "n3" / name) == records(tmp_path / "m1" / name)
        assert_same_records(tmp_path / "n1" / name, synthetic["lmdb"] / name)
    # the records are read in other processes, and written in list order whichever finishes first
    log = tmp_path / "log"
    log.mkdir()
    items, names = cl.read_frame_list(orig, "train")
    cl.build(tmp_path / "p", "train", items, names, PidLoader(orig, log), progress=False, workers=2)
    pids = {p.suffix for p in log.iterdir()}
    assert len(list(log.iterdir())) == len(items) and f".{os.getpid()}" not in pids
    assert records(tmp_path / "p" / "train.lmdb").keys() == records(tmp_path / "n1" / "train.lmdb").keys()
    for i, (vid, label) in enumerate(items):
        rec = decode_header(records(tmp_path / "p" / "train.lmdb")[video_key(i)], "")
        assert (rec.video_id, rec.label) == (vid, label)


def test_a_bad_video_in_a_worker_is_one_line_and_the_rest_kept(orig, tmp_path):
    frames = tmp_path / "f"
    shutil.copytree(orig, frames)
    vid = (frames / "train.txt").read_text().splitlines()[3].split()[0]
    (frames / vid / "00024.jpg").unlink()
    err = one_line(cli("--frames", str(frames), "--out", str(tmp_path / "db"), "-s", "train", "-n", "2"))
    assert vid in err and "00024.jpg" in err
    err = one_line(cli("--frames", str(frames), "--out", str(tmp_path / "db"), "-n", "0"))
    assert "-n/--num_processes 0" in err


@pytest.mark.parametrize("m", [5, 10, 12, 30])
def test_max_frame_is_the_originals_stride(orig, tmp_path, m):
    """create_lmdb.py:49-50 of both originals: freq = max(N // M, 1); frames start, start+freq, ... end."""
    meta = cl.from_frames(str(orig), str(tmp_path / "db"), splits=("val",), max_frame=m)[0]
    recs = records(tmp_path / "db" / "val.lmdb")
    strides = set()
    for i, vid in enumerate(meta["video_ids"]):
        n = len(list((orig / vid).glob("*.jpg")))  # 20 to 27 frames
        want = list(range(1, n + 1, max(n // m, 1)))
        strides.add(max(n // m, 1))
        assert meta["num_frames"][i] == len(want)
        buf = recs[video_key(i)]
        rec = decode_header(buf, "")
        assert [frame_bytes(buf, rec, k, "") for k in range(rec.frames)] == \
            [(orig / vid / f"{j:05d}.jpg").read_bytes() for j in want]
    assert strides == {5: {4, 5}, 10: {2}, 12: {1, 2}, 30: {1}}[m]
    ds = build_dataset(str(tmp_path / "db"), "val", **KW)
    assert ds[0][0].shape == (3, 8, 32, 32)


def test_max_frame_changes_are_rebuilt_and_apply_to_videos(synthetic, orig, tmp_path, capsys):
    counts = [int(ln.split()[1]) for ln in (synthetic["frames"] / "val.txt").read_text().splitlines()]

    def kept(m):
        return [len(range(0, n, max(n // m, 1))) for n in counts]

    assert kept(10) != kept(5)
    cl.from_frames(str(orig), str(tmp_path / "db"), splits=("val",), max_frame=10)
    capsys.readouterr()
    meta = cl.from_frames(str(orig), str(tmp_path / "db"), splits=("val",), max_frame=5)[0]
    assert "rebuilding" in capsys.readouterr().err  # not "nothing to do": built with another option
    assert meta["num_frames"] == kept(5)
    meta = cl.from_frames(str(synthetic["frames"]), str(tmp_path / "ours"), splits=("val",), max_frame=5)[0]
    assert meta["num_frames"] == kept(5)  # our 3-field lists too
    meta = cl.from_videos("ucf101", str(synthetic["videos"]), str(synthetic["splits"]), str(tmp_path / "v"),
                          short_side=40, splits=("val",), max_frame=5, workers=2)[0]
    assert meta["num_frames"] == kept(5)  # and decoding the videos, in 2 processes


def test_test_split(synthetic, orig, tmp_path):
    """Their -s test reads <data_path>/test.txt into test.lmdb (create_lmdb.py:13-14, 60, 81)."""
    frames = tmp_path / "ucf101_frame"
    shutil.copytree(orig, frames)
    err = one_line(cli("-d", "ucf101_frame", "-s", "test", cwd=tmp_path))
    assert "test.txt: no list file" in err and "val is their official test list" in err
    shutil.copy(frames / "val.txt", frames / "test.txt")
    from_folders = build_dataset(str(frames), "test", **KW)  # the frame-folder loader reads it too
    assert isinstance(from_folders, FrameFolderClips) and not from_folders.train
    res = cli("-d", "ucf101_frame", "-s", "test", "-vr", "0", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert read_meta(frames / "test.lmdb")["num_videos"] == 2
    res = cli("--frames", str(frames), "--out", str(tmp_path / "all"))  # default: train, val and test
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "all").glob("*.lmdb")) == ["test.lmdb", "train.lmdb", "val.lmdb"]
    assert records(tmp_path / "all" / "test.lmdb").keys() == records(tmp_path / "all" / "val.lmdb").keys()
    assert_same_records(tmp_path / "all" / "test.lmdb", synthetic["lmdb"] / "val.lmdb")
    ds = build_dataset(str(tmp_path / "all"), "test", **KW)
    assert not ds.train and ds.video_ids == from_folders.video_ids == read_meta(synthetic["lmdb"] /
                                                                                "val.lmdb")["video_ids"]
    err = one_line(cli("--from-videos", "--videos", str(synthetic["videos"]), "--splits", str(synthetic["splits"]),
                       "--out", str(tmp_path / "v"), "-s", "test"))
    assert "test.txt frame list" in err


@pytest.mark.parametrize("line, why", [
    ("v_X_g01_c01 1 24 0 1", "5 fields (their multi-label form)"),
    ("v_X_g01_c01 24", "2 fields"),
    ("v_X_g01_c01 one 24 0", "a number that is not one"),
    ("v_X_g01_c01 1 24 -1", "their label for an unknown class"),
    ("v_X_g01_c01 30 24 0", "a range that ends before it starts"),
])
def test_a_malformed_list_line_is_one_line_naming_file_and_line(orig, tmp_path, line, why):
    frames = tmp_path / "f"
    shutil.copytree(orig, frames)
    lines = (frames / "val.txt").read_text().splitlines()
    (frames / "val.txt").write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    with pytest.raises(DataError) as e:
        parse_frame_list(frames / "val.txt")
    msg = str(e.value)
    assert msg.startswith(f"{frames / 'val.txt'}:3: ") and "\n" not in msg, why
    if "-1" not in line:
        assert "<video> <num_frames> <label>" in msg and "<video> <start_frame> <end_frame> <label>" in msg
    with pytest.raises(DataError, match="val.txt:3: "):
        build_dataset(str(frames), "val", **KW)
    assert "val.txt:3: " in one_line(cli("--frames", str(frames), "-s", "val"))


def test_a_label_beyond_classes_txt_is_one_line(synthetic, tmp_path):
    """The originals' label-less test lines ('vid 1 150') read as our '<video> <frames> <label>' give label 150;
    with classes.txt beside the list that is caught."""
    import shutil

    from datasets.create_lmdb import read_frame_entries
    from datasets.errors import DataError

    frames = tmp_path / "frames"
    shutil.copytree(synthetic["frames"], frames)
    first = (frames / "train.txt").read_text().splitlines()[0].split()
    (frames / "train.txt").write_text(f"{first[0]} 1 150\n")
    with pytest.raises(DataError, match="has label 150 but .*classes.txt names 3 classes"):
        read_frame_entries(frames, "train")
