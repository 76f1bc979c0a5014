"""The run folder's contract (`s2d annotate --out`): never a stale or foreign result counted as ok, each input shown
once, a folder that can be moved, and every fault one line, before any work where it can be. Real files, the real
CLI (in this process, on the shared local Ray), a re-run after each fault equal to a clean run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from media import write_video


def s2d(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def options(detector_weights, landmark_weights):
    return ["--weights", "random-tiny", "--detector-weights", detector_weights, "--landmark-weights",
            landmark_weights, "--device", "cpu"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fixtures_dir):
    """single_face.mp4 (2.4 s, one face) and group.mp4 (1 s, five faces)."""
    root = tmp_path_factory.mktemp("run_folder") / "in"
    root.mkdir()
    shutil.copy(fixtures_dir / "videos" / "single_face.mp4", root / "single_face.mp4")
    still = cv2.cvtColor(cv2.imread(str(fixtures_dir / "images" / "multi_face.jpg")), cv2.COLOR_BGR2RGB)
    write_video(root / "group.mp4", [still[:666]] * 8, fps=8)
    return root


@pytest.fixture(scope="module")
def clean(ray_local, inputs, options):
    """A clean run whose run folder lies inside its input folder (with overlays, which are videos): its
    {file name: timeline rows}."""
    out = inputs / "run"
    code, stdout, stderr = s2d("annotate", inputs, "--out", out, "--overlay", *options)
    assert code == 0, stderr[-3000:]
    return rows(out)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def rows(out: Path) -> dict[str, list]:
    """{input file name: its timeline rows (video_id and path left out)} by the manifest, and the manifest's own
    per-input counts agreeing with them."""
    found = {}
    for r in manifest(out)["videos"]:
        table = pq.read_table(out / r["timeline"]).drop(["video_id", "video_path"])
        assert r["n_segments"] == table.num_rows
        found[Path(r["video_path"]).name] = table.to_pylist()
    return found


def timeline_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.timeline.parquet"))


def test_the_run_folder_inside_the_input_folder_is_not_input(clean, inputs, options):
    assert sorted(clean) == ["group.mp4", "single_face.mp4"]
    assert len(list((inputs / "run" / "overlays").glob("*.mp4"))) == 2
    code, stdout, stderr = s2d("annotate", inputs, "--out", inputs / "run", "--overlay", *options)
    assert code == 0, stderr[-3000:]
    assert "videos: 2 ok" in stdout and "(2 already done)" in stdout  # not its own overlay videos
    assert rows(inputs / "run") == clean


def test_a_foreign_timeline_is_not_taken_as_done(clean, inputs, options):
    out = inputs / "run"
    by_name = {Path(r["video_path"]).name: out / r["timeline"] for r in manifest(out)["videos"]}
    shutil.copy(by_name["single_face.mp4"], by_name["group.mp4"])  # the other video's rows, the same settings
    code, stdout, stderr = s2d("annotate", inputs, "--out", out, *options)
    assert code == 0, stderr[-3000:]
    assert "(1 already done)" in stdout  # group.mp4 was done again
    assert rows(out) == clean
    code, stdout, _ = s2d("timeline", out)
    assert code == 0 and stdout.count("group.mp4") >= 1


def test_a_replaced_video_leaves_one_timeline(clean, inputs, options, tmp_path):
    out = inputs / "run"
    before = timeline_files(out)
    video = inputs / "single_face.mp4"
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # "re-encoded": a new id
    code, stdout, stderr = s2d("annotate", inputs, "--out", out, "--overlay", *options)
    assert code == 0, stderr[-3000:]
    assert len(timeline_files(out)) == 2 and timeline_files(out) != before  # the old one is gone
    assert len(list((out / "overlays").glob("single_face.*.mp4"))) == 1
    assert rows(out) == clean
    from pipeline.timeline import read_timelines

    assert len(read_timelines(out)) == sum(len(r) for r in clean.values())


def test_a_file_name_that_is_not_utf8_is_handled(clean, inputs, options):
    out = inputs / "run"
    odd = os.fsdecode(bytes(inputs) + b"/caf\xe9.mp4")
    shutil.copy(inputs / "single_face.mp4", odd)
    try:
        code, stdout, stderr = s2d("annotate", inputs, "--out", out, *options)
        assert code == 0, stderr[-3000:]
        assert "videos: 3 ok" in stdout
        assert manifest(out)["videos"][0]["video_path"] == odd  # sorted first: "c" < "g"
        got = rows(out)
        assert got["caf\udce9.mp4"] == clean["single_face.mp4"]
        assert (out / "report.html").is_file()
    finally:
        os.unlink(odd)
    code, stdout, stderr = s2d("annotate", inputs, "--out", out, *options)
    assert code == 0 and rows(out) == clean


def test_a_copied_run_folder_reads_its_own_files(clean, inputs, tmp_path):
    out = inputs / "run"
    m = manifest(out)
    assert m["cache_dir"] == "cache" and all(not Path(r["timeline"]).is_absolute() for r in m["videos"])
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for f in out.glob("*.timeline.parquet"):  # the original's timelines changed after the copy
        pq.write_table(pq.read_table(f).slice(0, 0), f)
    code, stdout, stderr = s2d("report", copy)
    assert code == 0, stderr
    assert rows(copy) == clean
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, stdout, stderr = s2d("overlay", "copy", "single_face.mp4", "-o", tmp_path / "o.mp4")
    finally:
        os.chdir(cwd)
    assert code == 0, stderr
    shutil.rmtree(out)
    shutil.copytree(copy, out)  # the original back, for the tests after this one


def test_a_corrupt_cache_entry_is_a_miss(clean, inputs, options):
    out = inputs / "run"
    vid = next(r["video_id"] for r in manifest(out)["videos"] if r["video_path"].endswith("group.mp4"))
    faces = next((out / "cache" / "faces").glob(f"*/{vid}.faces.parquet"))
    faces.write_bytes(faces.read_bytes()[:100])
    code, stdout, stderr = s2d("annotate", inputs, "--out", out, "--force", *options)
    assert code == 0, stderr[-3000:]
    assert "cannot be read" in stderr and str(faces) in stderr
    assert rows(out) == clean
    assert pq.read_table(faces).num_rows > 0  # replaced


def hand_made_run(out: Path) -> Path:
    """A run folder of two videos written by hand: a.mp4's timeline, and b.mp4's, cut short."""
    import numpy as np

    from pipeline.timeline import timeline_path, timeline_table, write_timeline
    from s2d_model.labels import LABEL_SETS

    rows = dict(track_id=np.zeros(2), segment=np.arange(2), start_s=np.arange(2.0), end_s=np.arange(2.0) + 2,
                n_face_frames=np.full(2, 16), bbox=np.ones((2, 4)))
    probs = np.eye(7)[[0, 1]]
    records = []
    for vid, name in (("a1", "a.mp4"), ("b2", "b.mp4")):
        t = timeline_table(vid, f"/v/{name}", rows, probs, LABEL_SETS["dfew"], "m", "h", "ok")
        path = write_timeline(t, timeline_path(out, vid, f"/v/{name}"))
        records.append({"video_id": vid, "video_path": f"/v/{name}", "status": "ok", "timeline": path.name,
                        "duration_s": 3.0})
    path.write_bytes(path.read_bytes()[:300])
    (out / "manifest.json").write_text(json.dumps({"videos": records, "labels": LABEL_SETS["dfew"]}))
    return out


def test_timeline_says_which_files_it_left_out(tmp_path):
    out = hand_made_run(tmp_path)
    code, stdout, stderr = s2d("timeline", out, "--plot", tmp_path / "t.png")
    assert code == 0, stderr
    assert "a.mp4" in stdout and "b.mp4" not in stdout
    assert stderr.startswith(f"skipped: {out / 'b.b2.timeline.parquet'}: not a finished timeline")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"videos": 3}', '{"videos": [{"x": 1}]}'])
@pytest.mark.parametrize("command", [["timeline"], ["timeline", "--plot", "p.png"], ["report"],
                                     ["overlay", "--", "a.mp4"]])
def test_a_damaged_manifest_is_one_line(tmp_path, text, command):
    out = hand_made_run(tmp_path)
    (out / "manifest.json").write_text(text)
    code, stdout, stderr = s2d(command[0], out, *command[1:])
    assert code == 1 and stderr == f"error: {out / 'manifest.json'} is not a manifest: " + stderr.split(": ", 2)[2]
    assert stderr.count("\n") == 1


def mounted(folder: Path, options: str) -> bool:
    """A small tmpfs at ``folder`` (False where this test cannot mount one: not root, no mount)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def unmount(folder: Path) -> None:
    import subprocess

    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_stops_the_run_in_one_line_and_a_rerun_finishes(clean, inputs, options, tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    videos = [inputs / "single_face.mp4", inputs / "group.mp4"]
    real = mounted(disk, "size=1m")
    try:
        if real:  # fill it but for a few pages: the probe fits, the cache entries and timelines do not
            filler = disk / "filler"
            with open(filler, "wb") as f:
                try:
                    f.write(b"\0" * (1 << 20))
                except OSError:
                    pass
            filler.write_bytes(b"\0" * (filler.stat().st_size - (16 << 10)))
        else:  # a filesystem stub at the write call
            import errno

            import s2d_model.files as files

            def full(path, data):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))

            monkeypatch.setattr("pipeline.storage.atomic_write", full)
        code, stdout, stderr = s2d("annotate", *videos, "--out", disk / "run", *options)
        assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
        line = stderr.splitlines()[-1]
        assert line.startswith(f"error: no space left in {disk / 'run'}") and "MiB free)" in line, stderr[-3000:]
        assert not (disk / "run" / "manifest.json").exists()
        assert not [p for p in disk.rglob("*") if p.name.startswith(".") and p.name != ".s2d.lock"]  # no temp files
        if real:
            filler.unlink()
        else:
            monkeypatch.setattr("pipeline.storage.atomic_write", files.atomic_write)
        code, stdout, stderr = s2d("annotate", *videos, "--out", disk / "run", *options)
        assert code == 0, stderr[-3000:]
        assert rows(disk / "run") == clean
    finally:
        if real:
            unmount(disk)


def test_an_output_that_cannot_be_written_fails_before_any_work(inputs, options, tmp_path):
    import subprocess

    (tmp_path / "file").write_text("x")
    cases = [(tmp_path / "file" / "out", f"{tmp_path / 'file'} is a file, not a folder")]
    immutable = tmp_path / "immutable"
    immutable.mkdir()
    if subprocess.run(["chattr", "+i", str(immutable)], capture_output=True).returncode == 0:
        cases.append((immutable, "operation not permitted"))
    readonly = tmp_path / "ro"
    if mounted(readonly, "size=1m,ro"):
        cases.append((readonly, "read-only file system"))
    try:
        for out, why in cases:
            code, stdout, stderr = s2d("annotate", inputs / "single_face.mp4", "--out", out, *options)
            last = stderr.splitlines()[-1]  # after the random-tiny warning and the model's precision
            assert (code, stdout) == (1, "") and last.startswith(f"error: cannot write to {out}: ") and \
                why in last.lower() and stderr.count("\n") == 2, stderr
    finally:
        subprocess.run(["chattr", "-i", str(immutable)], capture_output=True)
        if len(cases) == 3 or readonly.is_mount():
            unmount(readonly)
    code, stdout, stderr = s2d("annotate", inputs / "single_face.mp4", "--out", tmp_path / "o", "--cache",
                               tmp_path / "file" / "cache", *options)
    assert code == 1 and stderr.splitlines()[-1].startswith(f"error: cannot write to {tmp_path / 'file' / 'cache'}")


def test_a_run_folder_in_use_stops_a_second_run(inputs, options, tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pipeline.runlock import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
                               str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, stdout, stderr = s2d("annotate", inputs / "single_face.mp4", "--out", tmp_path / "out", *options)
        last = stderr.splitlines()[-1]  # after the random-tiny warning and the model's precision
        assert code == 1 and last.startswith(f"error: {tmp_path / 'out'} is in use by s2d annotate (pid "
                                             f"{holder.pid} on ")
        assert last.endswith("wait for it to finish, or use another --out") and stderr.count("\n") == 3
        assert "video model random-tiny: fp32 on CPU, bf16 on GPU" in stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_video_whose_outputs_cannot_be_written_is_its_own_error_row(clean, inputs, options, monkeypatch):
    """Any failure writing one video's timeline (not a full disk) fails that video alone: the others are done, the
    report is written, and a re-run equals a clean run."""
    import pipeline.annotate_run as run

    real = run.write_timeline

    def write(table, path):
        if "group" in str(path):
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "a stand-in for any write failure")
        return real(table, path)

    out = inputs / "run"
    monkeypatch.setattr(run, "write_timeline", write)
    code, stdout, stderr = s2d("annotate", inputs, "--out", out, "--force", *options)
    assert code == 0, stderr[-3000:]
    assert "videos: 1 ok, 0 no faces, 1 failed" in stdout
    status = {Path(r["video_path"]).name: (r["status"], r["error"]) for r in manifest(out)["videos"]}
    assert status["single_face.mp4"] == ("ok", None) and status["group.mp4"][0] == "error"
    assert status["group.mp4"][1].startswith("writing its outputs: UnicodeEncodeError")
    assert (out / "report.html").is_file()
    monkeypatch.setattr(run, "write_timeline", real)
    code, stdout, stderr = s2d("annotate", inputs, "--out", out, *options)
    assert code == 0 and rows(out) == clean
