"""Inputs and outputs on an object store: pipeline.storage against a real S3-compatible server (moto, on
127.0.0.1), ``s2d annotate`` / ``s2d faces`` / ``s2d timeline`` with videos read from it and the cache,
timelines and manifest written to it, and ``s2d prepare`` / ``train`` / ``evaluate`` with their data, checkpoints
and results there. Before that, locally and on the store: a full disk said plainly (``NoSpace``) and an output
folder tried before any work (``check_writable``), on real small tmpfs mounts where this machine lets us mount."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from golden.check import assert_timelines_equal_golden
from golden.make_golden import inputs
from loopback import running
from pipeline import storage
from pipeline.sources import list_videos, probe

REPO = Path(__file__).resolve().parents[1]


def upload(folder: Path, uri: str) -> list[str]:
    out = []
    for f in sorted(folder.iterdir()):
        out.append(str(storage.write(storage.join(uri, f.name), f.read_bytes())))
    return out


def test_storage_on_s3(s3, tmp_path, fixtures_dir):
    root = s3.bucket("unit")
    assert storage.beside(f"{root}/d/v.csv", "clips/a") == f"{root}/d/clips/a"  # a CSV row's path
    assert storage.beside(f"{root}/d/v.csv", "/abs/a.mp4") == Path("/abs/a.mp4")
    assert storage.beside(tmp_path / "v.csv", "a.mp4") == tmp_path / "a.mp4"
    assert storage.absolute(f"{root}/x") == f"{root}/x" and storage.absolute("~") == Path.home().resolve()
    assert storage.write(f"{root}/a/b.txt", "hello") == f"{root}/a/b.txt"
    assert storage.read_bytes(f"{root}/a/b.txt") == b"hello" and storage.is_file(f"{root}/a/b.txt")
    assert storage.is_dir(f"{root}/a") and storage.folders(root) == ["a"] and not storage.exists(f"{root}/x")
    assert [f.path for f in storage.files(root)] == [f"{root}/a/b.txt"]
    with pytest.raises(ZeroDivisionError):  # an upload that fails leaves no object, not a part of one
        storage.write(f"{root}/a/c.txt", lambda f: (f.write(b"part"), 1 / 0))
    assert not storage.exists(f"{root}/a/c.txt")
    storage.remove(f"{root}/a/b.txt")
    storage.remove(f"{root}/a/b.txt")  # gone already: nothing to do
    assert storage.files(root) == []
    storage.write(f"{root}/file", b"x")
    with pytest.raises(NotADirectoryError):
        storage.check_output(f"{root}/file")
    from jobs.datasets import DatasetError, load_split
    from jobs.prepare import read_videos_csv

    with pytest.raises(DatasetError, match=f"videos CSV not found: {root}/none.csv"):  # before any work
        read_videos_csv(f"{root}/none.csv")
    with pytest.raises(DatasetError, match=f"dataset not found: {root}/no-data"):
        load_split(f"{root}/no-data", "csv")
    storage.write(f"{root}/data/train.csv", "path,label\nclips/gone,1\n")
    with pytest.raises(DatasetError, match=f"train.csv:2: file or frame folder not found: {root}/data/clips/gone"):
        load_split(f"{root}/data", "csv")
    # videos: listed by extension under a prefix (hidden names skipped), probed and decoded through pyarrow
    upload(fixtures_dir / "videos", f"{root}/videos")
    storage.write(f"{root}/videos/.hidden.mp4", b"x")
    storage.write(f"{root}/videos/notes.txt", b"x")
    found = list_videos([f"{root}/videos/"])
    local = list_videos([fixtures_dir / "videos"])
    assert [storage.name(s.path) for s in found] == [Path(s.path).name for s in local]
    assert probe(f"{root}/videos/single_face.mp4") == probe(fixtures_dir / "videos" / "single_face.mp4")
    assert [s.size for s in found] == [s.size for s in local] and len({s.video_id for s in found}) == len(found)


def test_a_checkpoint_uri_is_copied_once_and_again_when_it_changes(s3, tmp_path, monkeypatch):
    from s2d_model import weights as W

    monkeypatch.setenv("S2D_HOME", str(tmp_path / "home"))
    uri = f"{s3.bucket('weights')}/run/best.pth"
    storage.write(uri, b"first")
    local = W.resolve(uri)
    assert local.read_bytes() == b"first" and str(local).startswith(str(tmp_path / "home" / "remote"))
    mtime = local.stat().st_mtime_ns
    assert W.resolve(uri) == local and local.stat().st_mtime_ns == mtime  # not copied again
    storage.write(uri, b"second, longer")
    assert W.resolve(uri).read_bytes() == b"second, longer"
    with pytest.raises(W.WeightsNotFound, match="weights file not found: .*/run/nothing.pth"):
        W.resolve(f"{s3.bucket('weights')}/run/nothing.pth")


MSG = r"free some space and run again; what is done is kept"


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A small tmpfs mounted at ``path`` (root, and a machine that lets us mount), unmounted after; skip otherwise."""
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_is_said_in_one_line_and_leaves_no_temp_file(tmp_path):
    with tmpfs(tmp_path / "mnt", "size=1m") as mnt:
        out = mnt / "out"
        storage.write(out / "done.txt", "a video done before")
        with pytest.raises(storage.NoSpace) as caught:
            storage.write(out / "done.txt", os.urandom(2 << 20))
        assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
        assert re.fullmatch(rf"no space left in {out} \(\d+\.\d MiB free\): {MSG}", str(caught.value))
        assert [p.name for p in out.iterdir()] == ["done.txt"]  # no temp file, and what was done is kept
        assert (out / "done.txt").read_text() == "a video done before"


@pytest.mark.parametrize("code, said", [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_disk_stubbed(tmp_path, code, said):
    """The same where no tmpfs can be mounted: the write fails half way with ENOSPC / EDQUOT."""
    def fill(f):
        f.write(b"half a file")
        raise OSError(code, os.strerror(code))

    with pytest.raises(storage.NoSpace) as caught:
        storage.write(tmp_path / "out" / "a.parquet", fill)
    assert caught.value.errno == code
    assert re.fullmatch(rf"{said} in {tmp_path / 'out'} \(\d+\.\d MiB free\): {MSG}", str(caught.value))
    assert list((tmp_path / "out").iterdir()) == []

    def broken(f):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError) as caught:  # other errors pass as they are
        storage.write(tmp_path / "out" / "a.parquet", broken)
    assert type(caught.value) is OSError and caught.value.errno == errno.EIO


def test_check_writable(tmp_path):
    out = tmp_path / "new" / "out"
    storage.check_writable(out)  # created, probed, and removed again: nothing is left
    assert not (tmp_path / "new").exists()
    out.mkdir(parents=True)
    storage.check_writable(out)  # a folder that was there stays, empty
    assert out.is_dir() and list(out.iterdir()) == []
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "f" / "out"):
        with pytest.raises(storage.NotWritable) as caught:
            storage.check_writable(path)
        assert str(caught.value) == f"cannot write to {path}: {tmp_path / 'f'} is a file, not a folder"


def test_check_writable_read_only(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        for path in (ro, ro / "out"):
            with pytest.raises(storage.NotWritable) as caught:
                storage.check_writable(path)
            assert str(caught.value) == f"cannot write to {path}: read-only file system"
            assert caught.value.errno == errno.EROFS


def test_check_writable_immutable(tmp_path):
    folder = tmp_path / "frozen"
    folder.mkdir()
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +i does not work here")
    try:
        for path in (folder, folder / "out"):
            with pytest.raises(storage.NotWritable) as caught:
                storage.check_writable(path)
            assert str(caught.value) == f"cannot write to {path}: operation not permitted (is the folder immutable? " \
                                        "see lsattr -d)"
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode bits say")
def test_check_writable_permission_denied(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(storage.NotWritable, match=f"^cannot write to {folder}: permission denied$"):
            storage.check_writable(folder)
    finally:
        folder.chmod(0o700)


def test_check_writable_on_s3(s3):
    root = s3.bucket("probe")
    storage.check_writable(f"{root}/out")
    assert storage.files(root) == []  # the probe object is gone
    with pytest.raises(storage.NotWritable) as caught:
        storage.check_writable("s3://no-such-bucket/out")
    assert str(caught.value).startswith("cannot write to s3://no-such-bucket/out: ")
    assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def s2d(s3, detector_weights, landmark_weights):
    """``s2d ARGS`` in a shell with the S3 settings and the fixture weights, joining (``RAY_ADDRESS``) one Ray node
    of 2 CPUs, like CI, that every command here shares: started once (tests/loopback.py) with the S3 settings, as
    a cluster's nodes have their credentials, instead of a local Ray started and stopped by each command."""
    env = {**s3.env, "S2D_DETECTOR_WEIGHTS": str(detector_weights), "S2D_LANDMARK_WEIGHTS": str(landmark_weights)}
    with running("s2d-st", env, head_cpus=2) as head:
        def run(*args):
            return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=REPO, text=True,
                                  env=head.client_env(RAY_ADDRESS=head.address), capture_output=True, timeout=900)

        yield run


@pytest.mark.ray
def test_annotate_reads_from_and_writes_to_s3_as_it_does_locally(s3, s2d, tmp_path):
    """Videos, cache and timelines on the object store only: the timelines equal the golden copy; a re-run skips
    every video; ``s2d timeline`` reads them back; ``s2d faces`` writes a cache there too."""
    root = s3.bucket("runs")
    inputs(tmp_path / "in")
    upload(tmp_path / "in", f"{root}/videos")
    run = s2d("annotate", f"{root}/videos/", "--out", f"{root}/out", "--weights", "random-tiny")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"manifest: {root}/out/manifest.json" in run.stdout
    m = json.loads(storage.read_bytes(f"{root}/out/manifest.json"))
    assert sorted(v["status"] for v in m["videos"]) == ["no_faces", "ok", "ok", "ok"]
    assert m["cache_dir"] == "cache" and all("/" not in v["timeline"] for v in m["videos"])  # within the run
    assert_timelines_equal_golden([{**v, "timeline": f"{root}/out/{v['timeline']}"} for v in m["videos"]])
    entries = [f.path for f in storage.files(f"{root}/out/cache") if f.path.endswith(".meta.parquet")]
    assert len(entries) == 4
    again = s2d("annotate", f"{root}/videos/", "--out", f"{root}/out", "--weights", "random-tiny")
    assert again.returncode == 0 and "(4 already done)" in again.stdout, again.stdout + again.stderr[-2000:]
    summary = s2d("timeline", f"{root}/out")
    assert summary.returncode == 0 and "single_face" in summary.stdout, summary.stderr[-2000:]
    faces = s2d("faces", f"{root}/videos/single_face.mp4", "--cache", f"{root}/faces-cache")
    assert faces.returncode == 0, faces.stderr[-2000:]
    assert any(f.path.endswith(".faces.parquet") for f in storage.files(f"{root}/faces-cache"))
    missing = s2d("annotate", f"{root}/nothing-here/", "--out", f"{root}/out2", "--weights", "random-tiny")
    assert missing.returncode != 0 and f"no such file or folder: {root}/nothing-here/" in missing.stderr
    assert "Traceback" not in missing.stderr


import test_jobs_cli  # noqa: E402

videos = test_jobs_cli.videos  # the labelled raw videos fixture, used here under its own name


@pytest.mark.ray
def test_prepare_train_and_evaluate_with_data_and_outputs_on_s3(s3, s2d, videos, tmp_path):
    """The training side with no local folder: ``prepare`` reads its CSV and videos from the store and writes the
    clip dataset there (the same clips as a local ``prepare``); ``train dynamic`` reads that dataset and keeps its
    checkpoints and metrics there; ``evaluate`` takes the checkpoint's URI and writes its results there, and gives
    on the store's dataset what it gives on the local one; ``annotate --weights URI`` classifies with it."""
    root = s3.bucket("training")
    upload(videos, f"{root}/raw")
    data, run, local = f"{root}/data", f"{root}/run", tmp_path / "data"
    done = s2d("prepare", f"{root}/raw/videos.csv", "--out", data, "--labels", "dfew")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    done = s2d("prepare", videos / "videos.csv", "--out", local, "--labels", "dfew")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    def by_stem(names):  # clips/<stem>-<video_id>: the id is made from the path, which differs here
        return {n.rsplit("-", 1)[0]: n for n in names}

    for split in ("train", "test"):
        rows = [line.split(",") for line in storage.read_text(f"{data}/{split}.csv").splitlines()]
        want = [line.split(",") for line in (local / f"{split}.csv").read_text().splitlines()]
        assert [(r[0].rsplit("-", 1)[0], r[1]) for r in rows] == [(r[0].rsplit("-", 1)[0], r[1]) for r in want]
    on_s3, here = by_stem(storage.folders(f"{data}/clips")), by_stem(p.name for p in (local / "clips").iterdir())
    assert on_s3.keys() == here.keys() and len(here) == 5
    for stem, name in here.items():  # the same aligned frames, byte for byte, and the same frame choice
        frames = sorted((local / "clips" / name).glob("*.jpg"))
        assert len(frames) == 16
        for f in frames:
            assert storage.read_bytes(f"{data}/clips/{on_s3[stem]}/{f.name}") == f.read_bytes(), f
        got = json.loads(storage.read_text(f"{data}/clips/{on_s3[stem]}/clip.json"))
        assert got["frame_index"] == json.loads((local / "clips" / name / "clip.json").read_text())["frame_index"]
    assert json.loads(storage.read_text(f"{data}/prepare.json"))["clips_written"] == 5

    done = s2d("train", "dynamic", "--data", data, "--format", "csv", "--labels", "dfew", "--model", "s2d_tiny",
               "--epochs", "2", "--batch-size", "2", "--val-fraction", "0", "--out", run)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"best checkpoint: {run}/best.pth" in done.stdout
    rows = [json.loads(line) for line in storage.read_text(f"{run}/metrics.jsonl").splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and storage.is_file(f"{run}/metrics.csv")
    assert storage.is_file(f"{run}/last.pth") and any(n.startswith("checkpoint_") for n in storage.folders(run))

    results = []
    for where, out in ((data, f"{root}/eval"), (local, tmp_path / "eval")):
        done = s2d("evaluate", "--data", where, "--format", "csv", "--labels", "dfew", "--checkpoint",
                   f"{run}/best.pth", "--out", out)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        results.append(json.loads(storage.read_text(storage.join(out, "metrics.json"))))
    assert storage.is_file(f"{root}/eval/confusion.png") and storage.is_file(f"{root}/eval/predictions.csv")
    s3_metrics, local_metrics = results
    assert s3_metrics["n"] == 1 and s3_metrics["checkpoint"] == f"{run}/best.pth"
    assert {k: s3_metrics[k] for k in ("uar", "war", "confusion")} == \
        {k: local_metrics[k] for k in ("uar", "war", "confusion")}
    done = s2d("annotate", videos / "a.mp4", "--out", tmp_path / "ann", "--weights", f"{run}/best.pth")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert [v["status"] for v in json.loads((tmp_path / "ann" / "manifest.json").read_text())["videos"]] == ["ok"]
