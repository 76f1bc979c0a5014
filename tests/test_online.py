"""The one-pass parts without Ray: online windows equal the batch planner, shards stitch into one pass's tracks,
and ``run_unit`` (decode -> detect -> landmarks -> track -> clips) on real video equals itself cut into shards."""
from __future__ import annotations

import dataclasses
import shutil

import av
import numpy as np
import pytest

from media import write_video
from oracles import align_clip, assign_tracks, plan_segments
from pipeline.decode import FrameBatches, get_decoder, sampling_step
from pipeline.face_actor import FRAME_BYTES, FaceWorker, analysed, run_unit
from pipeline.segments import OnlineWindows, _columns
from pipeline.settings import AnnotateSettings, FaceSettings, plan_faces
from pipeline.track import OnlineTracker, stitch_units
from pipeline.units import Clip, UnitFaces, join_units, keep_best, plan_units, video_thumbnails
from test_segments import make_faces


def online(faces, duration, step, **kw):
    """OnlineWindows fed frame by frame from a faces table; payload = the row number."""
    c = _columns(faces)
    w = OnlineWindows(step, duration, **kw)
    out = []
    for f in np.unique(c["frame_index"]):
        r = np.flatnonzero(c["frame_index"] == f)
        out += w.add(float(c["time_s"][r[0]]), int(f), c["track_id"][r], c["kps5"][r], c["bbox"][r], r.tolist())
    return out + w.finish()


def key(s):
    return (s.track_id, s.segment, s.view)


@pytest.mark.parametrize("kw", [{}, dict(segment_s=4.0, views=2), dict(segment_s=1.5, stride_s=0.5, min_face_frames=4)])
def test_online_windows_equal_the_batch_planner(kw):
    rng = np.random.default_rng(3)
    tracks = {0: np.arange(0, 60), 1: np.r_[np.arange(10, 30), np.arange(33, 52)],  # 1: a 3-frame hole
              2: np.sort(rng.choice(np.arange(20, 80), 40, replace=False))}
    faces = make_faces(tracks)
    batch = sorted(plan_segments(faces, 10.0, step_s=0.125, **kw), key=key)
    got = sorted(online(faces, 10.0, 0.125, **kw), key=lambda sp: key(sp[0]))
    assert len(batch) > 5 and [key(s) for s in batch] == [key(s) for s, _ in got]
    for b, (s, rows) in zip(batch, got):
        assert dataclasses.asdict(b).keys() == dataclasses.asdict(s).keys()
        for f in ("start_s", "end_s", "n_face_frames"):
            assert getattr(b, f) == getattr(s, f)
        for f in ("frame_index", "time_s", "kps5", "bbox"):
            np.testing.assert_array_equal(getattr(b, f), getattr(s, f))
        np.testing.assert_array_equal(_columns(faces)["frame_index"][rows], s.frame_index)  # payloads follow slots


def test_online_windows_hold_only_what_open_windows_can_use():
    faces = make_faces({0: np.arange(0, 800)})  # 100 s at 8 fps
    c = _columns(faces)
    w = OnlineWindows(0.125, 100.0)
    held = 0
    for f in range(800):
        w.add(f / 8, f, c["track_id"][f:f + 1], c["kps5"][f:f + 1], c["bbox"][f:f + 1], [f])
        held = max(held, len(w._rows))
    assert held <= 2.125 * 8 + 2  # one window and one sampling interval of rows, not the video


def test_stitched_shards_give_one_pass_track_ids():
    rng = np.random.default_rng(5)
    fps, n = 8.0, 160  # 20 s; faces come and go, two of them cross
    rows = []
    for f in range(n):
        t = f / fps
        for x0, vx, on in [(50, 2, (0, 20)), (400, -3, (2, 12)), (900, 0, (6, 19)), (200, 0, (14, 20))]:
            if on[0] <= t < on[1]:
                x = x0 + vx * f + rng.normal(0, 1)
                rows.append((f, t, x))
    fi = np.array([r[0] for r in rows])
    ts = np.array([r[1] for r in rows])
    bbox = np.array([[r[2], 100, r[2] + 80, 200] for r in rows], np.float64)
    whole = assign_tracks(fi, ts, bbox, step_s=1 / fps)
    units = []
    for own0, own1 in [(0, 5), (5, 10), (10, 15), (15, np.inf)]:  # shards with 1 s warm-up and 3 s after
        sel = np.flatnonzero((ts >= max(0, own0 - 1)) & (ts < own1 + 3))
        tr = OnlineTracker(1 / fps)
        ids = np.zeros(len(sel), np.int32)
        for f in np.unique(fi[sel]):
            r = np.flatnonzero(fi[sel] == f)
            ids[r] = tr.update(ts[sel][r[0]], bbox[sel][r])
        face = np.zeros(len(sel), np.int16)
        for j in range(1, len(sel)):
            face[j] = face[j - 1] + 1 if fi[sel][j] == fi[sel][j - 1] else 0
        units.append({"time_s": ts[sel], "face": face, "track_id": ids, "own": (ts[sel] >= own0) & (ts[sel] < own1),
                      "bbox": bbox[sel], "rows": sel})
    stitched = stitch_units(units)
    got = np.full(len(fi), -1)
    for u, ids in zip(units, stitched):
        got[u["rows"][u["own"]]] = ids[u["own"]]
    np.testing.assert_array_equal(got, whole)
    assert len(np.unique(whole)) == 4


def test_each_video_track_gets_its_best_face_of_all_shards():
    best = {}
    for tid, score, face in [(0, 0.9, "a"), (1, 0.5, "b"), (1, 0.5, "b2"), (0, 0.95, "a2")]:
        keep_best(best, tid, score, face)  # track 1, equal score: the first face stays
    assert best == {0: (0.95, "a2"), 1: (0.5, "b")}
    units = [UnitFaces("v", 0, 3, thumbs={0: (0.9, "u0t0"), 1: (0.8, "u0t1")}),
             UnitFaces("v", 1, 3, thumbs={0: (0.8, "u1t0"), 1: (0.95, "u1t1"), 2: (0.99, "gone")}),
             UnitFaces("v", 2, 3, thumbs={5: (0.9, "u2t5")})]
    maps = [{0: 10, 1: 11}, {0: 11, 1: 12}, {5: 10}]  # unit 1's track 2 has no own rows: no video track
    assert video_thumbnails(units, maps) == {10: "u0t0", 11: "u0t1", 12: "u1t1"}  # 10: 0.9 first, not unit 2's
    assert video_thumbnails(units[:1], None) == {0: "u0t0", 1: "u0t1"}  # ids from a cache entry: the video's


# ---------------------------------------------------------------------------------------------------- real video
@pytest.fixture(scope="module")
def long_video(tmp_path_factory, fixtures_dir):
    """single_face.mp4 three times over (7.2 s at 30 fps, a keyframe every second): one face, smiling and not."""
    with av.open(str(fixtures_dir / "videos" / "single_face.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return write_video(tmp_path_factory.mktemp("v") / "long.mp4", frames + frames[::-1] + frames, fps=30, gop=30)


@pytest.fixture(scope="module")
def worker(detector_weights, landmark_weights):
    plan = plan_faces(FaceSettings(detector_weights=str(detector_weights), landmark_weights=str(landmark_weights)))
    return FaceWorker(plan, emotions=AnnotateSettings())


def run_units(worker, path, shard_s, workers=1, analyse=None):
    s = dataclasses.replace(worker.plan.settings, shard_s=shard_s)
    units = plan_units("v", str(path), s.fps, shard_s, 2.0)
    items = [it for u in units for it in run_unit(u, worker.decoder, analyse or worker.analyse, s, worker.emotions,
                                                   workers)]
    return units, [it for it in items if not isinstance(it, Clip)], [it for it in items if isinstance(it, Clip)]


def test_analysed_keeps_the_batches_order_and_bounds_what_is_in_flight():
    import threading
    import time

    state = {"now": 0, "most": 0, "bytes": 0, "most_bytes": 0}
    lock = threading.Lock()

    def analyse(batch):
        nbytes = sum(f.nbytes for _, _, f in batch)
        with lock:
            state["now"] += 1
            state["bytes"] += nbytes
            state["most"], state["most_bytes"] = max(state["most"], state["now"]), max(state["most_bytes"],
                                                                                       state["bytes"])
        time.sleep(0.02 * (1 + batch[0][0] % 3))  # later batches may finish first
        with lock:
            state["now"] -= 1
            state["bytes"] -= nbytes
        return [i for i, _, _ in batch]

    small = [[(i, 0.0, np.zeros((4, 4, 3), np.uint8))] for i in range(12)]
    got = list(analysed(analyse, iter(small), workers=2))
    assert [r for _, r in got] == [[i] for i in range(12)] and [b for b, _ in got] == small
    assert state["most"] == 2  # two batches at once, no more
    big = [[(i, 0.0, np.zeros(FRAME_BYTES // 2 + 1, np.uint8))] for i in range(4)]
    state["most"] = 0
    assert [r for _, r in analysed(analyse, iter(small[:3] + big + small[3:]), workers=2)] == \
        [[i] for i in range(3)] + [[i] for i in range(4)] + [[i] for i in range(3, 12)]
    assert state["most_bytes"] == FRAME_BYTES // 2 + 1  # a frame too large to share the cores with: alone
    with pytest.raises(ZeroDivisionError):  # a failure comes out in order, where its batch would
        list(analysed(lambda b: 1 / b[0][0], iter(small), workers=2))


def test_frames_come_in_batches_of_at_most_n_frames_and_the_byte_cap():
    def decoded(sizes):
        yield from ((i, i / 8, np.zeros(n, np.uint8)) for i, n in enumerate(sizes))
        return len(sizes)

    frames = FrameBatches(decoded([10] * 7 + [100] + [30] * 3), n=3, nbytes=64)
    got = [[f[0] for f in b] for b in frames]
    assert got == [[0, 1, 2], [3, 4, 5], [6], [7], [8, 9], [10]] and frames.count == 11


def test_two_batches_analysed_at_once_give_the_same_faces_and_clips(worker, long_video):
    import threading

    seen, lock = set(), threading.Lock()

    def analyse(batch):
        with lock:
            seen.add(threading.get_ident())
        return worker.analyse(batch)

    (one,), (seq,), clips = run_units(worker, long_video, 60.0)
    _, (par,), par_clips = run_units(worker, long_video, 60.0, workers=2, analyse=analyse)
    assert len(seen) == 2 and par.status == seq.status == "ok"
    for k in ("frame_index", "time_s", "face", "track_id"):
        np.testing.assert_array_equal(par.faces[k], seq.faces[k], err_msg=k)
    for k in ("bbox", "kps5", "landmarks68"):
        np.testing.assert_allclose(par.faces[k], seq.faces[k], atol=1e-3, err_msg=k)
    assert [c.segment.frame_index.tolist() for c in par_clips] == [c.segment.frame_index.tolist() for c in clips]


def test_a_video_cut_into_shards_gives_the_one_pass_faces_and_clips(worker, long_video):
    (one,), (whole,), clips = run_units(worker, long_video, 60.0)
    units, parts, shard_clips = run_units(worker, long_video, 2.0)
    assert len(units) == 4 and [p.status for p in parts] == ["ok"] * 4 and not parts[1].from_start
    faces, _, counts = join_units([whole])
    sfaces, maps, scounts = join_units(parts)
    offsets = scounts["offsets"]
    assert counts["frame_count"] == scounts["frame_count"] == 216 and counts["sampled_frames"] == 58
    for k in ("frame_index", "time_s", "face", "track_id"):
        np.testing.assert_array_equal(faces[k], sfaces[k], err_msg=k)
    for k in ("bbox", "kps5", "landmarks68"):  # other frames share the detector's batch: float noise only
        np.testing.assert_allclose(faces[k], sfaces[k], atol=1e-3, err_msg=k)
    got = {(maps[c.unit][c.segment.track_id], c.segment.segment, c.segment.view): c for c in shard_clips}
    want = {(c.segment.track_id, c.segment.segment, c.segment.view): c for c in clips}
    assert sorted(got) == sorted(want) and len(want) == 7  # windows 0..6 of the 7.2 s video
    for k, c in want.items():
        np.testing.assert_array_equal(got[k].segment.frame_index + offsets[got[k].unit], c.segment.frame_index)
        diff = np.abs(got[k].pixels.astype(int) - c.pixels)  # warpAffine snaps to 1/32 px: a 1e-5 px shift
        assert diff.mean() < 0.05 and diff.max() <= 16  # of a key point can move an edge pixel by a few levels


def test_clips_are_the_frames_aligned_as_before(worker, long_video):
    """A clip cut online is the re-decode-and-align of its segment's frames (the old CutClips path)."""
    _, _, clips = run_units(worker, long_video, 60.0)
    seg = clips[3].segment
    got = get_decoder("pyav").read_frames(str(long_video), seg.frame_index, seg.time_s)
    frames = dict(zip(got["frame_index"].tolist(), got["frames"]))
    np.testing.assert_array_equal(clips[3].pixels, align_clip(frames, seg.frame_index, seg.kps5))


def test_a_file_gone_before_its_unit_runs_is_an_error_unit(worker, tmp_path, fixtures_dir):
    video = tmp_path / "v.mp4"
    shutil.copy(fixtures_dir / "videos" / "single_face.mp4", video)
    (unit,) = plan_units("v", str(video), 8.0, 60.0, 2.0)
    video.unlink()  # removed between probing and decoding
    (done,) = run_unit(unit, worker.decoder, worker.analyse, worker.plan.settings, worker.emotions)
    assert done.status == "error" and done.error == f"{video}: file not found" and done.n_clips == 0


def test_sampling_step():
    assert sampling_step(8, 30) == 0.125 and sampling_step(8, 5) == 0.2 and sampling_step(None, 25) == 0.04
    assert sampling_step(8, None) == 0.125 and sampling_step(None, None) == pytest.approx(1 / 30)


def test_by_default_a_video_gets_no_more_shards_than_face_actors(tmp_path):
    from media import write_video

    video = write_video(tmp_path / "long.mp4", [np.full((64, 64, 3), i % 250, np.uint8) for i in range(200)], fps=1)
    counts = {n: len(plan_units("v", str(video), 8.0, None, 2.0, face_actors=n)) for n in (0, 1, 2, 8)}
    assert counts == {0: 4, 1: 1, 2: 2, 8: 4}  # 200 s: 60 s shards, as few as the actors need
    units = plan_units("v", str(video), 8.0, None, 2.0, face_actors=2)
    assert [(u.own_start_s, u.own_end_s) for u in units] == [(0.0, 100.0), (100.0, np.inf)]
    assert len(plan_units("v", str(video), 8.0, 30.0, 2.0, face_actors=1)) == 7  # a length given is kept
