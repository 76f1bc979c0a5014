"""The face stage end to end on real Ray and the real fixtures: statuses, tracks, schema, cache reuse, bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from media import write_audio_only, write_video
from pipeline import cache
from pipeline.faces_run import run_faces
from pipeline.settings import FaceSettings
from s2d_model.weights import WeightsNotFound

REPO = Path(__file__).resolve().parents[1]


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fixtures_dir):
    """A folder with the three fixture videos, generated variants and one of each kind of bad input."""
    root = tmp_path_factory.mktemp("videos")
    for name in ("single_face.mp4", "no_face.mp4", "face_noface.mov"):
        shutil.copy(fixtures_dir / "videos" / name, root / name)
    good = _frames(fixtures_dir / "videos" / "single_face.mp4")
    write_video(root / "rotated.mp4", [np.ascontiguousarray(np.rot90(f, 1)) for f in good[:24]], fps=30,
                rotation=90)  # stored sideways, display matrix turns it upright
    import cv2

    still = cv2.cvtColor(cv2.imread(str(fixtures_dir / "images" / "multi_face.jpg")), cv2.COLOR_BGR2RGB)
    write_video(root / "group.mp4", [still[:666]] * 8, fps=8)  # five still faces for one second
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    data = (fixtures_dir / "videos" / "single_face.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: int(len(data) * 0.3)])
    (bad / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    (bad / "noise.mov").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    write_audio_only(bad / "tone.mp4")
    return root


@pytest.fixture(scope="module")
def first_run(ray_local, inputs, face_settings, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    return run_faces([inputs], cache_dir, face_settings, progress=False)


def _by_name(result) -> dict[str, dict]:
    return {Path(v["source_path"]).name: v for v in result.videos}


def _faces(result, name):
    meta = _by_name(result)[name]
    entry = cache.read_entry(result.cache_dir, result.settings_hash, meta["video_id"])
    assert entry is not None, meta
    return entry[0].to_pandas(), meta


def test_every_input_gets_a_status(first_run):
    status = {k: v["status"] for k, v in _by_name(first_run).items()}
    assert status == {"single_face.mp4": "ok", "no_face.mp4": "no_faces", "face_noface.mov": "ok",
                      "rotated.mp4": "ok", "group.mp4": "ok", "empty.mp4": "error", "truncated.mp4": "error",
                      "notes.mp4": "error", "noise.mov": "error", "tone.mp4": "error"}
    errors = {k: v["error"] for k, v in _by_name(first_run).items() if v["status"] == "error"}
    for name, reason in [("empty.mp4", "empty file"), ("truncated.mp4", "truncated"), ("notes.mp4", "looks like text"),
                         ("noise.mov", "not a media file"), ("tone.mp4", "audio")]:
        assert reason in errors[name], errors[name]
    assert all(str(Path(v["source_path"]).name) in v["error"] for v in _by_name(first_run).values()
               if v["status"] == "error")
    assert first_run.decoded == 10 and first_run.cached == 0
    summary = first_run.summary()
    assert "4 ok, 1 no faces, 5 failed" in summary and "video-s per wall-s" in summary


def test_single_face_video_is_one_track_over_all_frames(first_run, expectations):
    faces, meta = _faces(first_run, "single_face.mp4")
    assert meta["frame_count"] == 72 and meta["sampled_frames"] == 19 and meta["n_tracks"] == 1
    assert len(faces) == 19 and faces.frame_index.is_unique  # one face in every sampled frame
    assert (faces.track_id == 0).all()
    box = np.stack(faces.bbox.to_numpy())
    centre = (box[:, :2] + box[:, 2:]) / 2
    assert np.allclose(centre.mean(0), [296, 186], atol=15)  # README: centre about (296, 186)
    lm = np.stack(faces.landmarks68.to_numpy()).reshape(-1, 68, 2)
    inside = (lm[..., 0] >= box[:, None, 0] - 10) & (lm[..., 0] <= box[:, None, 2] + 10) & \
             (lm[..., 1] >= box[:, None, 1] - 10) & (lm[..., 1] <= box[:, None, 3] + 10)
    assert inside.mean() > 0.97
    assert (faces.width == 640).all() and (faces.height == 360).all()
    assert np.allclose(faces.time_s.to_numpy()[:3], [0.0, 4 / 30, 8 / 30], atol=1e-3)


def test_face_disappears_at_2_4_seconds_in_the_vfr_file(first_run):
    faces, meta = _faces(first_run, "face_noface.mov")
    assert meta["frame_count"] == 169 and meta["n_tracks"] == 1
    assert faces.time_s.max() <= 2.4 and faces.time_s.max() >= 2.367 - 1 / 8
    assert faces.time_s.min() == 0.0 and faces.frame_index.max() <= 71
    # every sampled frame before the cut has the face: grid points k/8 up to the last face frame (71/30 s)
    assert len(faces) == int(np.floor(71 / 30 * 8)) + 1


def test_no_face_video_has_no_rows(first_run):
    faces, meta = _faces(first_run, "no_face.mp4")
    assert len(faces) == 0 and meta["frame_count"] == 95 and meta["n_tracks"] == 0


def test_rotated_video_is_analysed_upright(first_run):
    faces, meta = _faces(first_run, "rotated.mp4")
    assert meta["rotation"] in (90, -90) and (meta["width"], meta["height"]) == (640, 360)
    assert len(faces) == meta["sampled_frames"] and (faces.track_id == 0).all()


def test_five_still_faces_are_five_tracks(first_run):
    faces, meta = _faces(first_run, "group.mp4")
    assert meta["n_tracks"] == 5 and len(faces) == 5 * meta["sampled_frames"]
    assert faces.groupby("frame_index").size().eq(5).all()
    assert faces.groupby("track_id").size().eq(meta["sampled_frames"]).all()


def test_cache_files_have_the_exact_schema(first_run):
    meta = _by_name(first_run)["single_face.mp4"]
    faces_path, meta_path = cache.entry_paths(first_run.cache_dir, first_run.settings_hash, meta["video_id"])
    assert pq.read_schema(faces_path).remove_metadata().equals(cache.FACES_SCHEMA)
    assert pq.read_schema(meta_path).remove_metadata().equals(cache.META_SCHEMA)
    settings = json.loads(pq.read_table(meta_path).column("settings")[0].as_py())
    assert settings["fps"] == 8.0 and settings["detector_file"]["sha256"].startswith("5f88f795")
    assert not list(faces_path.parent.glob(".*tmp"))


def test_second_run_reuses_the_cache_and_retries_failures(first_run, inputs, face_settings):
    again = run_faces([inputs], first_run.cache_dir, face_settings, progress=False)
    assert again.settings_hash == first_run.settings_hash
    assert again.cached == 5 and again.decoded == 5  # the 5 good videos come from the cache; errors are retried
    assert [v["status"] for v in again.videos] == [v["status"] for v in first_run.videos]
    other = run_faces([inputs / "single_face.mp4"], first_run.cache_dir,
                      FaceSettings(**{**face_settings.__dict__, "fps": 4.0}), progress=False)
    assert other.settings_hash != first_run.settings_hash and other.cached == 0
    assert other.videos[0]["sampled_frames"] == 10


def test_missing_weights_stop_before_any_work(tmp_path, landmark_weights, monkeypatch):
    monkeypatch.setenv("S2D_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("S2D_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFound, match="mobilenet0.25_Final.pth"):
        run_faces([tmp_path], tmp_path / "cache", FaceSettings(landmark_weights=str(landmark_weights)))
    with pytest.raises(WeightsNotFound, match="weights file not found: /nope/detector.pth"):
        run_faces([tmp_path], tmp_path / "cache", FaceSettings(detector_weights="/nope/detector.pth"))
    assert not (tmp_path / "cache").exists()


def _s2d(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.ray
def test_cli_faces_summary_and_all_failed_exit_code(inputs, tmp_path, detector_weights, landmark_weights):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(detector_weights, weights / "mobilenet0.25_Final.pth")
    shutil.copy(landmark_weights, weights / "mobilefacenet_model_best.pth.tar")
    env = {"S2D_WEIGHTS_DIR": str(weights), "S2D_HOME": str(tmp_path / "home")}
    out = _s2d("faces", str(inputs / "single_face.mp4"), str(inputs / "bad" / "empty.mp4"), "--cache",
               str(tmp_path / "c"), "--fps", "4", "--device", "cpu", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "videos: 1 ok, 0 no faces, 1 failed" in out.stdout and "tracks: 1" in out.stdout
    assert "failed: " in out.stderr and "empty.mp4" in out.stderr
    out = _s2d("faces", str(inputs / "bad"), "--cache", str(tmp_path / "c"), env=env)
    assert out.returncode == 1 and "every input failed (5 of 5)" in out.stderr
    out = _s2d("faces", str(inputs), "--cache", str(tmp_path / "c"), env={"S2D_HOME": str(tmp_path / "h2")})
    assert out.returncode == 1 and "mobilenet0.25_Final.pth" in out.stderr and "S2D_WEIGHTS_DIR" in out.stderr
