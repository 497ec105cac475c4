"""Integrity of the clip LMDB and of checkpoints (issue 16, items 1, 3-5): a resumed build never mixes up
videos, damage is caught and named, disk errors and concurrent builds are one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import lmdb
import pytest
import torch

from datasets import DataError, build_dataset
from datasets import create_lmdb as cl
from datasets.extract_videos import extract
from datasets.lmdb_format import META_KEY, decode_header, meta_digest, video_key
from pruning.errors import CheckpointError
from tests.conftest import lmdb_records as records
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import make_loader

ROOT = Path(__file__).resolve().parent.parent
KW = dict(clip_len=8, crop_size=32, short_side=40)


def one_line(err: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if "%|" not in ln]  # tqdm's progress lines aside
    assert "Traceback" not in err and len(lines) == 1, err


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


# --- item 1: a resumed build after the list changed ------------------------------------------------------------

def test_resumed_build_after_a_recovered_video_equals_a_clean_build(synthetic, tmp_path, monkeypatch):
    """The issue's scenario: a video missing at extraction, the build interrupted at video k, the video restored,
    extraction run again (the list now has it, later positions shift), the build run again: every record and the
    metadata equal a clean build's."""
    raw = tmp_path / "raw"
    shutil.copytree(synthetic["raw"], raw)
    videos, splits, frames = raw / "UCF-101", raw / "ucfTrainTestlist", tmp_path / "frames"
    train_list = (splits / "trainlist01.txt").read_text().split()
    first = train_list[0]  # the first train video: every later position shifts when it comes back
    held = tmp_path / "held.avi"
    shutil.move(videos / first, held)
    extract("ucf101", str(videos), str(splits), str(frames), short_side=40, progress=False, workers=1)
    assert Path(first).stem not in (frames / "train.txt").read_text()

    real, calls = cl.frame_jpegs, []

    def interrupted(f, v):
        calls.append(v)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(f, v)

    monkeypatch.setattr(cl, "frame_jpegs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cl.from_frames(str(frames), str(tmp_path / "db"), splits=("train",))
    monkeypatch.setattr(cl, "frame_jpegs", real)
    assert len(records(tmp_path / "db" / "train.lmdb.partial")) == 4

    shutil.move(held, videos / first)  # the missing video comes back
    extract("ucf101", str(videos), str(splits), str(frames), short_side=40, progress=False, workers=1)
    assert (frames / "train.txt").read_text().split()[0] == Path(first).stem
    cl.from_frames(str(frames), str(tmp_path / "db"), splits=("train",))
    cl.from_frames(str(frames), str(tmp_path / "clean"), splits=("train",))

    got, want = records(tmp_path / "db" / "train.lmdb"), records(tmp_path / "clean" / "train.lmdb")
    assert sorted(got) == sorted(want)
    for key in want:  # record by record: same video, same label, same bytes
        assert got[key] == want[key], key
    items, _ = cl.read_frame_list(frames, "train")
    for i, (vid, label) in enumerate(items):
        rec = decode_header(got[video_key(i)], "")
        assert (rec.video_id, rec.label) == (vid, label)


def test_records_of_other_videos_in_a_partial_build_are_redone(synthetic, tmp_path, capsys):
    items, names = cl.read_frame_list(synthetic["frames"], "train")
    load = lambda v: cl.frame_jpegs(synthetic["frames"], v)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        cl.build(tmp_path, "train", items, names, lambda v: (_ for _ in ()).throw(KeyboardInterrupt)
                 if v == items[4][0] else load(v), progress=False)
    shifted = [items[1], items[0], *items[2:]]  # the list changed: positions 0 and 1 swapped
    cl.build(tmp_path, "train", shifted, names, load, progress=False)
    assert "2 of 4 finished records disagree with the list now" in capsys.readouterr().err
    ds = build_dataset(str(tmp_path), "train", **KW)
    for i in range(len(ds)):
        ds[i]  # every record is its video (record() checks id and label against the metadata)
    assert ds.video_ids == [v for v, _ in shifted]


def test_a_stale_finished_database_is_rebuilt_not_kept(synthetic, tmp_path, capsys):
    frames = tmp_path / "frames"
    shutil.copytree(synthetic["frames"], frames)
    out = tmp_path / "db"
    cl.from_frames(str(frames), str(out), splits=("val",))
    cl.from_frames(str(frames), str(out), splits=("val",))
    assert "nothing to do" in capsys.readouterr().out
    # a video re-extracted with other frames: the list is the same, the frame folder is not
    vid = (frames / "val.txt").read_text().split()[0]
    last = sorted((frames / vid).glob("*.jpg"))[-1]
    last.unlink()
    cl.from_frames(str(frames), str(out), splits=("val",))
    err = capsys.readouterr().err
    assert "val.lmdb: built from another list" in err and "rebuilding it" in err
    ds = build_dataset(str(out), "val", **KW)
    assert ds.meta["num_frames"][0] == len(list((frames / vid).glob("*.jpg")))
    # a database of format version 1 is rebuilt too (and refused by the reader with a line saying so)
    env = lmdb.open(str(out / "val.lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        meta = json.loads(txn.get(META_KEY))
        txn.put(META_KEY, json.dumps({**meta, "version": 1}).encode())
    env.close()
    with pytest.raises(DataError, match="format version 1 of an older prune3d.*create_lmdb.py again"):
        build_dataset(str(out), "val", **KW)
    cl.from_frames(str(frames), str(out), splits=("val",))
    assert "rebuilding it" in capsys.readouterr().err
    build_dataset(str(out), "val", **KW)


# --- item 5: integrity ----------------------------------------------------------------------------------------

def flip(path: Path, offset: int, n: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def test_flipped_bytes_in_a_checkpoint_are_one_line_naming_it(tmp_path):
    path = tmp_path / "dense.pth"
    save_checkpoint({"model": {"conv5b.weight": torch.randn(64, 64)}, "epoch": 3}, path)
    assert load_checkpoint(path)["epoch"] == 3
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    flip(path, info.header_offset + 30 + name_len + extra_len + 1000, 64)  # inside the tensor's bytes
    with pytest.raises(CheckpointError, match=r"dense.pth: damaged checkpoint \(.*data/0 fails its CRC check\)") as e:
        load_checkpoint(path)
    one_line(str(e.value))
    # the CLI prints it as one line
    out = cli("-c", "import sys; from training.checkpoint import load_checkpoint; from pruning import UserError\n"
              f"try: load_checkpoint({str(path)!r})\nexcept UserError as e: print(e, file=sys.stderr); sys.exit(2)")
    assert out.returncode == 2 and "dense.pth: damaged checkpoint" in out.stderr
    one_line(out.stderr)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path)

    class Full:  # torch.save writes through the file object: fail like a full disk does
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _Ctx(Full(real_fdopen(fd, mode))))
    with pytest.raises(CheckpointError, match="last.pth: No space left on device while writing the checkpoint; "
                                              "free some space.*previous last.pth is unchanged") as e:
        save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    one_line(str(e.value))
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left


class _Ctx:
    def __init__(self, obj):
        self.obj = obj

    def __enter__(self):
        return self.obj

    def __exit__(self, *a):
        self.obj.f.close()


def damaged_copy(synthetic, tmp_path: Path) -> Path:
    db = tmp_path / "db"
    shutil.copytree(synthetic["lmdb"], db)
    return db


def test_flipped_bytes_in_a_jpeg_payload_are_a_failed_sample_naming_the_video(synthetic, tmp_path):
    db = damaged_copy(synthetic, tmp_path)
    env = lmdb.open(str(db / "train.lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        buf = bytearray(txn.get(video_key(2)))
        rec = decode_header(bytes(buf), "")
        for i in range(rec.frames):  # 8 bytes in the middle of every JPEG: whichever frames a clip takes
            mid = rec.start + (rec.offsets[i] + rec.offsets[i + 1]) // 2
            buf[mid: mid + 8] = bytes(b ^ 0x5A for b in buf[mid: mid + 8])
        txn.put(video_key(2), bytes(buf))
    env.close()
    ds = build_dataset(str(db), "train", **KW)
    failed = []
    for _, _, _, f in make_loader(ds, batch_size=4, workers=0, train=False, seed=0, epoch=0):
        failed += f
    assert len(failed) == 1, failed
    index, message = failed[0]
    assert index == 2 and f"video {ds.video_ids[2]}" in message and "fails its checksum" in message


def test_a_changed_label_in_the_metadata_is_detected(synthetic, tmp_path):
    db = damaged_copy(synthetic, tmp_path)
    env = lmdb.open(str(db / "val.lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        meta = json.loads(txn.get(META_KEY))
    meta["labels"][0] = (meta["labels"][0] + 1) % len(meta["class_names"])
    with env.begin(write=True) as txn:
        txn.put(META_KEY, json.dumps(meta).encode())
    env.close()
    with pytest.raises(DataError, match="val.lmdb: metadata does not match its checksum"):
        build_dataset(str(db), "val", **KW)
    # edited along with its digest: the record still names its own label
    meta["digest"] = meta_digest(meta)
    env = lmdb.open(str(db / "val.lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(META_KEY, json.dumps(meta).encode())
    env.close()
    ds = build_dataset(str(db), "val", **KW)
    with pytest.raises(DataError, match=rf"video {meta['video_ids'][0]} .*record holds .* label"):
        ds[0]


def btree_root(data_mdb: Path) -> int:
    """The root page of an LMDB file's main B-tree, from the newer of its two meta pages (64-bit layout: the
    main DB's md_root at byte 128 of a meta page, the meta's txnid at 144)."""
    raw = data_mdb.read_bytes()
    newer = max((0, 1), key=lambda q: struct.unpack_from("<Q", raw, q * 4096 + 144)[0])
    assert struct.unpack_from("<I", raw, newer * 4096 + 16)[0] == 0xBEEFC0DE  # LMDB's meta magic
    return struct.unpack_from("<Q", raw, newer * 4096 + 128)[0]


def test_a_damaged_btree_page_is_one_line(synthetic, tmp_path):
    db = damaged_copy(synthetic, tmp_path)
    data = db / "val.lmdb" / "data.mdb"
    page = btree_root(data)
    with open(data, "r+b") as f:
        f.seek(page * 4096)
        f.write(b"\0" * 4096)
    with pytest.raises(DataError, match=r"val.lmdb: the database is damaged \(.*CORRUPTED.*\); delete it") as e:
        build_dataset(str(db), "val", **KW)
    one_line(str(e.value))
    out = cli("-c", "from datasets.errors import run_cli\nfrom datasets import build_dataset\n"
              f"raise SystemExit(run_cli(lambda a: build_dataset({str(db)!r}, 'val', clip_len=8, crop_size=32, "
              "short_side=40)))")
    assert out.returncode == 2 and "val.lmdb: the database is damaged" in out.stderr
    one_line(out.stderr)


# --- items 3-4: disk errors and concurrent builds --------------------------------------------------------------

def test_a_second_concurrent_build_of_one_output_gets_one_line(synthetic, tmp_path):
    out = tmp_path / "db"
    out.mkdir()
    with cl.build_lock(out, "val"):  # the first build, still running
        res = cli("datasets/create_lmdb.py", "--frames", str(synthetic["frames"]), "--out", str(out),
                  "--split-name", "val")
    assert res.returncode == 2, res.stderr
    assert f"{out / 'val.lmdb'}: another build holds it (pid {os.getpid()}" in res.stderr
    one_line(res.stderr)
    assert not (out / "val.lmdb.partial").exists() and not (out / "val.lmdb").exists()
    assert not (out / "val.lmdb.lock").exists()  # the first build ended: no lock file left behind
    res = cli("datasets/create_lmdb.py", "--frames", str(synthetic["frames"]), "--out", str(out),
              "--split-name", "val")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["val.lmdb"]  # nothing else left in the output folder


def test_a_lock_file_left_by_a_killed_build_is_taken_by_the_next(tmp_path):
    out = tmp_path / "db"
    out.mkdir()
    (out / "val.lmdb.lock").write_text("pid 999999")  # a build killed with SIGKILL: the file, no lock on it
    with cl.build_lock(out, "val"):
        assert (out / "val.lmdb.lock").read_text() == f"pid {os.getpid()}"
    assert not (out / "val.lmdb.lock").exists()


class _FullDiskTxn:
    def __init__(self, txn, state):
        self.txn, self.state = txn, state

    def put(self, key, value):
        if key != META_KEY and self.state["puts"] >= self.state["limit"]:
            raise lmdb.Error("mdb_put: No space left on device")
        self.state["puts"] += 1
        return self.txn.put(key, value)

    def __getattr__(self, name):
        return getattr(self.txn, name)

    def __enter__(self):
        self.txn.__enter__()
        return self

    def __exit__(self, *exc):
        return self.txn.__exit__(*exc)


class _FullDiskEnv:
    def __init__(self, env, state):
        self.env, self.state = env, state

    def begin(self, write=False, **kw):
        txn = self.env.begin(write=write, **kw)
        return _FullDiskTxn(txn, self.state) if write else txn

    def __getattr__(self, name):
        return getattr(self.env, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.env.close()


def test_a_full_disk_while_building_is_one_line_and_the_rerun_finishes(synthetic, tmp_path, monkeypatch):
    out = tmp_path / "db"
    real_open, state = lmdb.open, {"puts": 0, "limit": 3}
    monkeypatch.setattr(lmdb, "open", lambda *a, **kw: _FullDiskEnv(real_open(*a, **kw), state))
    with pytest.raises(DataError, match=r"No space left on device while writing val.lmdb.partial; free some "
                                        r"space, then run the same command again \(finished videos are kept") as e:
        cl.from_frames(str(synthetic["frames"]), str(out), splits=("val",))
    one_line(str(e.value))
    monkeypatch.setattr(lmdb, "open", real_open)
    assert len(records(out / "val.lmdb.partial")) == 3 and not (out / "val.lmdb").exists()
    cl.from_frames(str(synthetic["frames"]), str(out), splits=("val",))
    assert records(out / "val.lmdb") == records(synthetic["lmdb"] / "val.lmdb")


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_really_full_disk_while_building_and_saving(synthetic, tmp_path):
    """The same on a real small tmpfs (root only): LMDB reports its short write as EIO, torch.save a RuntimeError
    around the ENOSPC; each is one line, and after the disk grows the rerun finishes."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "192k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        save_checkpoint({"epoch": 1}, disk / "last.pth")
        res = cli("datasets/create_lmdb.py", "--frames", str(synthetic["frames"]), "--out", str(disk / "db"))
        assert res.returncode == 2, res.stderr
        one_line(res.stderr)
        assert "while writing train.lmdb.partial" in res.stderr and "then run the same command again" in res.stderr
        assert (disk / "db" / "train.lmdb.partial").exists()
        with pytest.raises(CheckpointError, match="last.pth: No space left on device while writing the checkpoint"):
            save_checkpoint({"epoch": 2, "w": torch.zeros(1 << 20)}, disk / "last.pth")
        assert load_checkpoint(disk / "last.pth")["epoch"] == 1
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        res = cli("datasets/create_lmdb.py", "--frames", str(synthetic["frames"]), "--out", str(disk / "db"))
        assert res.returncode == 0, res.stderr
        for split in ("train", "val"):
            assert records(disk / "db" / f"{split}.lmdb") == records(synthetic["lmdb"] / f"{split}.lmdb")
    finally:
        subprocess.run(["umount", str(disk)], check=True)
