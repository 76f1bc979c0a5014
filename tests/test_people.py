"""pipeline.people_link: a run's persons linked across its videos (``s2d people``), on run folders written by hand (no
Ray): made-up descriptors whose answer is certain, and real ones of the fixture faces."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline import cache, storage
from pipeline.people_link import PEOPLE_SCHEMA, link_people, people_path, write_people
from pipeline.timeline import timeline_path, timeline_table, write_timeline

LABELS = ["Happy", "Sad", "Neutral"]
FH = "facehash00000000"


def e(i: int, scale: float = 1.0) -> np.ndarray:
    v = np.zeros(cache.DESCRIPTOR_SIZE)
    v[i] = scale
    return v


A, B = e(0), e(1)  # two people, 1.41 apart


def thumb(vid: str, track: int) -> str:
    return f"data:image/jpeg;base64,{vid}-{track}"


def write_video(out: Path, cache_dir: Path, vid: str, path: str, tracks: dict, kind: str = "video") -> dict:
    """One input of a hand-made run: its cache entry (a face row per track, ``tracks`` as ``cache.tracks_table``
    takes them) and its timeline (a 2 s segment per track from its first time, its thumbnails) -> its record."""
    ids = sorted(tracks)
    n = len(ids)
    first = np.array([tracks[t][1] for t in ids], np.float64)
    person = np.array([tracks[t][0] for t in ids], np.int32)
    faces = dict(video_id=vid, frame_index=np.arange(n), time_s=first, face=np.zeros(n), track_id=np.array(ids),
                 person_id=person, score=np.ones(n), bbox=np.tile([1, 2, 30, 40], (n, 1)), kps5=np.zeros((n, 10)),
                 landmarks68=np.zeros((n, 136)), width=64, height=48)
    meta = dict(source_path=path, duration_s=10.0, native_fps=8.0, frame_count=n, sampled_frames=n, settings={},
                status="ok", error=None, identity_threshold=0.34)
    cache.write_entry(cache_dir, FH, vid, faces, meta, tracks)
    rows = dict(track_id=np.array(ids), person_id=person, segment=np.zeros(n), start_s=first, end_s=first + 2,
                n_face_frames=np.full(n, 16), bbox=np.tile([1, 2, 30, 40], (n, 1)))
    table = timeline_table(vid, path, rows, np.tile([0.7, 0.2, 0.1], (n, 1)), LABELS, "m", "h", "ok",
                           {t: thumb(vid, t) for t in ids})
    tl = write_timeline(table, timeline_path(out, vid, path))
    return {"video_id": vid, "video_path": path, "kind": kind, "status": "ok", "error": None, "duration_s": 10.0,
            "timeline": storage.name(tl), "n_tracks": n, "n_persons": len(set(person.tolist()))}


def write_manifest(out: Path, videos: list[dict], on: bool = True) -> Path:
    m = {"identities": {"on": on, "threshold": 0.34 if on else None, "weights": None}, "face_settings_hash": FH,
         "cache_dir": "cache", "labels": LABELS, "videos": videos}
    return storage.write(out / "manifest.json", json.dumps(m))


def made_up_run(tmp_path: Path) -> Path:
    """a.mp4: A (tracks 0: 7 chips at A, 2: 1 chip far off: their weighted mean lies 0.125 from A, the plain mean
    0.5), B, C (no descriptor); a failed video; b.mp4: two persons both near A (0.24 and 0.13 from a.mp4's A: only
    the nearer joins it, they are never one), the nearer with two tracks of 2 chips each; c.jpg: one near B, one
    without a descriptor."""
    out = tmp_path / "out"
    cache_dir = out / "cache"
    videos = [
        write_video(out, cache_dir, "va", "/in/a.mp4", {0: (0, 0.0, 7, A), 1: (1, 1.0, 2, B), 2: (0, 5.0, 1, A + e(5)),
                                                        3: (2, 2.0, 0, None)}),
        {"video_id": "vx", "video_path": "/in/broken.mp4", "status": "error", "error": "broken", "timeline": None},
        write_video(out, cache_dir, "vb", "/in/b.mp4", {0: (0, 0.5, 3, A + e(6, 0.2)), 1: (1, 3.0, 2, A + e(6, 0.05)),
                                                        2: (1, 1.0, 2, A + e(6, 0.05))}),
        write_video(out, cache_dir, "vc", "/in/c.jpg", {0: (0, 0.0, 1, B + e(7, 0.1)), 1: (1, 0.0, 0, None)},
                    kind="image"),
    ]
    write_manifest(out, videos)
    return out


def test_persons_are_linked_across_videos_and_never_within_one(tmp_path):
    out = made_up_run(tmp_path)
    df = link_people(out)
    got = [(r.global_person_id, r.video_id, r.person_id, r.n_tracks, r.first_s, r.thumbnail, r.video_path)
           for r in df.itertuples()]
    assert got == [(0, "va", 0, 2, 0.0, thumb("va", 0), "/in/a.mp4"),  # most chips: track 0
                   (0, "vb", 1, 2, 1.0, thumb("vb", 2), "/in/b.mp4"),  # a chips tie: the earlier track
                   (1, "va", 1, 1, 1.0, thumb("va", 1), "/in/a.mp4"),
                   (1, "vc", 0, 1, 0.0, thumb("vc", 0), "/in/c.jpg"),
                   (2, "va", 2, 1, 2.0, thumb("va", 3), "/in/a.mp4"),  # no descriptor: its own
                   (3, "vb", 0, 1, 0.5, thumb("vb", 0), "/in/b.mp4"),  # near A too, but beside b.mp4's other A
                   (4, "vc", 1, 1, 0.0, thumb("vc", 1), "/in/c.jpg")]
    assert list(df.columns) == PEOPLE_SCHEMA.names
    assert [str(df[c].dtype) for c in ("person_id", "global_person_id", "n_tracks", "first_s")] == \
        ["int32", "int32", "int32", "float64"]
    assert list(link_people(out, threshold=0.01).global_person_id) == [0, 1, 2, 3, 4, 5, 6]  # nobody linked
    # b.mp4's p1 joins a.mp4's A by the weighted mean (the plain one is 0.5 away); at 0.2 still, its p0 (0.24) not
    assert link_people(out, threshold=0.2).query("video_id == 'vb'").global_person_id.tolist() == [0, 3]

    path = write_people(out)
    assert path == people_path(out) == out / "people.parquet" and sorted(p.name for p in out.iterdir()) == [
        "a.va.timeline.parquet", "b.vb.timeline.parquet", "c.vc.timeline.parquet", "cache", "manifest.json",
        "people.parquet"]  # no temp file left
    table = pq.read_table(path)
    assert table.schema.remove_metadata().equals(PEOPLE_SCHEMA) and table.schema.metadata[b"s2d.threshold"] == b"0.34"
    assert table.to_pandas().equals(df)


def test_errors_are_one_line(tmp_path):
    out = made_up_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.json not found: pass an `s2d annotate --out` folder"):
        link_people(tmp_path / "nothing")
    tracks = cache.tracks_path(out / "cache", FH, "vb")
    tracks.unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{tracks} not found: the landmark-cache entry of b.mp4 is "
                                                "missing; run s2d annotate again$"):
        write_people(out)
    assert not people_path(out).exists()
    m = json.loads((out / "manifest.json").read_text())
    write_manifest(out, m["videos"], on=False)
    with pytest.raises(ValueError, match="identities off.*run s2d annotate again without --no-identities$"):
        link_people(out)


def test_cli_and_api(tmp_path):
    from cli import app
    from pipeline import people

    out = made_up_run(tmp_path)
    res = CliRunner().invoke(app, ["people", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["person 0: 2 files (a.mp4 p0, b.mp4 p1)", "person 1: 2 files (a.mp4 p1, "
                                       "c.jpg p0)", "person 2: 1 file (a.mp4 p2)", "person 3: 1 file (b.mp4 p0)",
                                       "person 4: 1 file (c.jpg p1)", f"people: {out / 'people.parquet'}"]
    res = CliRunner().invoke(app, ["people", str(out), "--threshold", "0.01"])
    assert res.exit_code == 0 and "person 6: 1 file (c.jpg p1)" in res.output
    df = people(out, threshold=0.01)
    assert df.global_person_id.tolist() == list(range(7)) and pq.read_table(out / "people.parquet").num_rows == 7
    res = CliRunner().invoke(app, ["people", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and res.output.startswith("error: ") and res.output.count("\n") == 1


def test_real_descriptors_link_the_same_man_and_no_one_else(tmp_path, fixtures_dir, detector_weights):
    """face-api's recognition net on the fixture faces: single_face.mp4's frames (Jin), his still, and another
    person's still, each a one-person input of a run: Jin has one global id in two inputs, the other person another."""
    import av
    import cv2

    from pipeline.align import align_face
    from pipeline.detector import FaceDetector
    from pipeline.identity import CHIP, MARGIN
    from pipeline.settings import DETECTORS
    from s2d_model.faceapi import descriptors, load_recognition_net

    net = load_recognition_net(fixtures_dir / "weights" / "face-api" / "face_recognition_model-weights_manifest.json")
    detector = FaceDetector(detector_weights, DETECTORS["retinaface-mobilenet"])

    def chips(rgb: np.ndarray) -> list[np.ndarray]:
        return [align_face(rgb, k, CHIP, MARGIN) for k in detector(rgb[None])[0]["kps5"]]

    frames = []
    with av.open(str(fixtures_dir / "videos" / "single_face.mp4")) as video:
        for i, frame in enumerate(video.decode(video=0)):
            if i % 24 == 0:  # about one a second
                frames += chips(frame.to_ndarray(format="rgb24"))
    still = lambda name: chips(cv2.cvtColor(cv2.imread(str(fixtures_dir / "images" / name)), cv2.COLOR_BGR2RGB))  # noqa: E731
    inputs = [("v1", "/in/single_face.mp4", frames), ("v2", "/in/single_face.jpg", still("single_face.jpg")),
              ("v3", "/in/0-f1-su-ph.jpg", still("0-f1-su-ph.jpg"))]
    out = tmp_path / "out"
    videos = []
    for vid, path, cut in inputs:
        assert len(cut) >= 1
        d = descriptors(net, cut)
        videos.append(write_video(out, out / "cache", vid, path, {0: (0, 0.0, len(d), d.mean(0))}))
    write_manifest(out, videos)
    df = link_people(out)
    assert dict(zip(df.video_id, df.global_person_id)) == {"v1": 0, "v2": 0, "v3": 1}
