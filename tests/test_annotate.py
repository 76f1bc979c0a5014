"""`s2d annotate` end to end on real Ray: a tiny S2D saved in the authors' format, the real fixture videos."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import s2d_model as S
from media import write_video
from pipeline.annotate_run import run_annotate
from pipeline.settings import AnnotateSettings, FaceSettings
from pipeline.timeline import read_timelines, timeline_schema

REPO = Path(__file__).resolve().parents[1]
DFEW = S.labels("dfew")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny S2D with random (non-trivial) weights in the authors' fine-tuned file layout."""
    torch.manual_seed(0)
    model = S.create_model("s2d_tiny", 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("landmark."):
                p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("weights") / "checkpoint-best.pth"
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 1, "scaler": {},
                "args": argparse.Namespace(model="s2d_tiny", nb_classes=7)}, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("videos")
    for name in ("single_face.mp4", "no_face.mp4", "face_noface.mov"):
        shutil.copy(fixtures_dir / "videos" / name, root / name)
    data = (fixtures_dir / "videos" / "single_face.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    import cv2

    still = cv2.cvtColor(cv2.imread(str(fixtures_dir / "images" / "multi_face.jpg")), cv2.COLOR_BGR2RGB)
    write_video(root / "group.mp4", [still[:666]] * 8, fps=8)  # five faces for one second
    return root


@pytest.fixture(scope="module")
def face_settings(detector_weights, landmark_weights):
    return FaceSettings(detector_weights=str(detector_weights), landmark_weights=str(landmark_weights))


@pytest.fixture(scope="module")
def settings(tiny_weights, landmark_weights):
    return AnnotateSettings(weights=str(tiny_weights), s2d_landmark_weights=str(landmark_weights))


@pytest.fixture(scope="module")
def run(ray_local, inputs, face_settings, settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return run_annotate([inputs], out, out / "cache", face_settings, settings, progress=False)


def _video(result, name) -> dict:
    return next(v for v in result.videos if Path(v["video_path"]).name == name)


def _timeline(result, name):
    return pq.read_table(_video(result, name)["timeline"])


def test_statuses_for_a_mixed_batch(run):
    status = {Path(v["video_path"]).name: v["status"] for v in run.videos}
    assert status == {"single_face.mp4": "ok", "no_face.mp4": "no_faces", "face_noface.mov": "ok",
                      "group.mp4": "ok", "truncated.mp4": "error"}
    assert "truncated" in _video(run, "truncated.mp4")["error"]
    assert _video(run, "truncated.mp4")["timeline"] is None  # nothing half-written; a re-run retries it
    assert "4 ok" not in run.summary() and "3 ok, 1 no faces, 1 failed" in run.summary()


def test_timeline_schema_is_exact(run):
    table = _timeline(run, "single_face.mp4")
    assert table.schema.remove_metadata().equals(timeline_schema(DFEW).remove_metadata())
    assert [c for c in table.column_names if c.startswith("p_")] == [f"p_{c.lower()}" for c in DFEW]
    meta = table.schema.metadata
    assert meta[b"s2d.complete"] == b"true" and meta[b"s2d.settings_hash"].decode() == run.settings_hash


def test_single_face_segments_cover_the_video(run):
    df = _timeline(run, "single_face.mp4").to_pandas()
    assert list(df.segment) == [0, 1] and (df.track_id == 0).all()
    assert df.start_s.tolist() == [0.0, 1.0] and df.end_s.iloc[-1] == pytest.approx(2.4, abs=0.01)
    assert (df.n_face_frames == 16).all() or (df.n_face_frames >= 8).all()
    probs = df[[f"p_{c.lower()}" for c in DFEW]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (df.label == [DFEW[i] for i in probs.argmax(1)]).all()
    np.testing.assert_allclose(df.confidence, probs.max(1), rtol=1e-6)
    box = np.stack(df.bbox.to_numpy())
    assert np.allclose((box[:, :2] + box[:, 2:]).mean(0) / 2, [296, 186], atol=20)
    assert (df.model == "checkpoint-best.pth").all()


def test_face_noface_timeline_ends_with_the_face(run):
    df = _timeline(run, "face_noface.mov").to_pandas()
    assert df.track_id.nunique() == 1
    assert df.start_s.is_monotonic_increasing and (df.start_s < 2.4).all()
    assert df.end_s.max() <= 6.41 and (df.end_s > df.start_s).all()
    assert df.start_s.min() == 0.0  # the face is on screen from the start


def test_no_face_video_has_an_empty_timeline(run):
    table = _timeline(run, "no_face.mp4")
    assert table.num_rows == 0 and table.schema.metadata[b"s2d.status"] == b"no_faces"


def test_five_faces_give_five_tracks_in_one_segment(run):
    df = _timeline(run, "group.mp4").to_pandas()
    assert sorted(df.track_id) == [0, 1, 2, 3, 4] and (df.segment == 0).all()


def test_manifest_records_settings_weights_versions_and_videos(run):
    manifest = json.loads((run.out_dir / "manifest.json").read_text())
    assert manifest["settings"]["segment_s"] == 2.0 and manifest["labels"] == list(DFEW)
    assert manifest["weights"]["file"]["name"] == "checkpoint-best.pth" and manifest["warning"] is None
    assert manifest["versions"]["torch"] and manifest["clips_classified"] == run.clips > 0
    assert {Path(v["video_path"]).name: v["status"] for v in manifest["videos"]}["truncated.mp4"] == "error"
    everything = read_timelines(run.out_dir)
    assert set(everything.video_path.map(lambda p: Path(p).name)) == {"single_face.mp4", "face_noface.mov",
                                                                         "group.mp4"}


def test_rerun_skips_and_force_redoes(run, inputs, face_settings, settings):
    again = run_annotate([inputs], run.out_dir, run.out_dir / "cache", face_settings, settings, progress=False)
    assert again.skipped == 4 and again.clips == 0  # the failed video is retried, and fails again
    assert _video(again, "truncated.mp4")["status"] == "error"
    forced = run_annotate([inputs / "single_face.mp4"], run.out_dir, run.out_dir / "cache", face_settings,
                          settings, force=True, progress=False)
    assert forced.skipped == 0 and forced.clips == 2
    assert forced.faces.cached == 1 and forced.faces.decoded == 0  # its faces came from the cache, not the decoder


def _worker_pids(name: str) -> list[int]:
    """Processes of this machine running a busy Ray actor of ``name`` (Ray titles them ray::...(name)).submit)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            title = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if d.name.isdigit() and title.startswith("ray::") and f"({name}))" in title and ".submit" in title:
            pids.append(int(d.name))
    return pids


def _kill_when_busy(name: str, after_s: float, timeout: float = 180.0) -> list:
    """A thread that SIGKILLs the actor process ``name`` once, when it has been seen working for ``after_s`` in all
    (its tasks one after another: a unit each for the face actor)."""
    import signal
    import threading
    import time

    killed = []

    def watch():
        end, busy, last = time.time() + timeout, 0.0, time.time()
        while time.time() < end and not killed:
            pids, now = _worker_pids(name), time.time()
            busy, last = busy + (now - last if pids else 0.0), now
            if pids and busy >= after_s:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return killed


def test_a_signal_while_the_driver_records_an_item_is_taken_once_the_record_is_done(ray_local):
    """Ctrl-C or SIGTERM while the driver's loop records an item (a timeline or cache entry being written): the
    record is finished, then the run stops as interrupted (the old loop raised in the middle of it)."""
    import signal
    import time

    import ray

    from pipeline.passes import run_passes, stop_on_sigterm

    for sig in (signal.SIGINT, signal.SIGTERM):
        log = []

        def take(item, log=log, sig=sig):
            log.append(("start", int(item)))
            os.kill(os.getpid(), sig)
            time.sleep(0.2)  # where the handler would have raised
            log.append(("end", int(item)))

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        usr1 = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a background pytest may ignore Ctrl-C
        stop_on_sigterm()
        try:
            status = run_passes(lambda: ray.data.from_items([{"item": i} for i in range(4)]), take, print)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        assert status is not None and status[0] == "interrupted", (sig, status)
        assert log == [("start", 0), ("end", 0)], (sig, log)
        assert signal.getsignal(signal.SIGUSR1) == usr1, "the node watch's handler is put back"


@pytest.fixture(scope="module")
def long_inputs(tmp_path_factory, fixtures_dir):
    """a.mp4 (the short fixture) and b.mp4 (12 s: it, back and forth; three 4 s shards)."""
    import av

    root = tmp_path_factory.mktemp("long")
    shutil.copy(fixtures_dir / "videos" / "single_face.mp4", root / "a.mp4")
    with av.open(str(fixtures_dir / "videos" / "single_face.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    write_video(root / "b.mp4", (frames + frames[::-1]) * 2 + frames, fps=30, gop=30)
    return root


@pytest.fixture(scope="module")
def clean_long_run(ray_local, long_inputs, face_settings, settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    faces = dataclasses.replace(face_settings, shard_s=4.0)
    return run_annotate([long_inputs], out, out / "cache", faces, settings, progress=False)


def _same_timelines(a, b):
    for va, vb in zip(a.videos, b.videos):
        ta, tb = pq.read_table(va["timeline"]).to_pandas(), pq.read_table(vb["timeline"]).to_pandas()
        assert ta[["track_id", "segment", "start_s", "end_s", "n_face_frames", "label"]].equals(
            tb[["track_id", "segment", "start_s", "end_s", "n_face_frames", "label"]])
        p = [c for c in ta.columns if c.startswith("p_")]
        np.testing.assert_allclose(ta[p].to_numpy(), tb[p].to_numpy(), atol=1e-5)


def test_time_shards_store_each_tracks_best_face(clean_long_run):
    """Each video track's thumbnail, picked from its shards' best faces, is the one the report would decode from
    the stitched cache entry (the highest-score row of the track)."""
    from pipeline.cache import read_entry
    from pipeline.report import thumbnails
    from pipeline.timeline import timeline_thumbnails

    for rec in clean_long_run.videos:
        faces = read_entry(clean_long_run.cache_dir, clean_long_run.faces.settings_hash, rec["video_id"])[0]
        stored = timeline_thumbnails(pq.read_table(rec["timeline"]))
        assert len(stored) == rec["n_tracks"] >= 1 and stored == thumbnails(rec, faces), rec["video_path"]


@pytest.mark.parametrize("actor", ["FaceWorker", "S2DWorker"])
def test_a_killed_actor_is_restarted_and_nothing_is_lost(actor, clean_long_run, long_inputs, face_settings, settings,
                                                       tmp_path):
    out = tmp_path / "out"
    killed = _kill_when_busy(actor, 3.0 if actor == "FaceWorker" else 0.0)  # the face actor: in b's shards
    faces = dataclasses.replace(face_settings, shard_s=4.0)
    result = run_annotate([long_inputs], out, out / "cache", faces, settings, progress=False)
    assert killed, f"the {actor} actor was never seen working"
    assert [v["status"] for v in result.videos] == ["ok", "ok"], result.videos
    assert result.videos[1]["n_segments"] == 12 and clean_long_run.videos[1]["n_segments"] == 12
    _same_timelines(result, clean_long_run)  # every window classified once, as in a clean run


def _s2d(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.ray
def test_cli_annotate_random_tiny_warns_and_timeline_summarises(inputs, tmp_path, detector_weights,
                                                               landmark_weights):
    env = {"S2D_DETECTOR_WEIGHTS": str(detector_weights), "S2D_LANDMARK_WEIGHTS": str(landmark_weights),
           "S2D_HOME": str(tmp_path / "home")}
    out = tmp_path / "out"
    res = _s2d("annotate", str(inputs / "single_face.mp4"), "--out", str(out), "--weights", "random-tiny",
               "--device", "cpu", "--segment", "3", "--views", "2", "--overlay", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "untrained: labels are meaningless" in res.stderr and "1 ok" in res.stdout
    # the 2.4 s video at 8 fps: window [0, 3) holds 19 sampled frames, so two views (frames 0-15 and 3-18)
    assert "segments: 1;" in res.stdout and "clips classified: 2 " in res.stdout
    assert "untrained" in json.loads((out / "manifest.json").read_text())["warning"]
    # the run's page and, asked for, the overlay video (tests/test_report.py and test_overlay.py check them)
    assert f"report: {out / 'report.html'}" in res.stdout and "overlays: 1 in" in res.stdout
    overlay = json.loads((out / "manifest.json").read_text())["videos"][0]["overlay"]
    assert overlay.startswith("overlays/") and os.path.getsize(out / overlay) > 10_000  # within the run folder
    res = _s2d("timeline", str(out), "--plot", str(tmp_path / "t.png"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "single_face.mp4" in res.stdout and "dominant" in res.stdout and (tmp_path / "t.png").stat().st_size > 5000
    res = _s2d("annotate", str(inputs / "single_face.mp4"), "--out", str(tmp_path / "o2"), env=env)
    assert res.returncode == 1 and "s2d-dfew" in res.stderr and "cyinen/S2D" in res.stderr
