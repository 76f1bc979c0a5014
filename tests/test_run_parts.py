"""The chains' driver-side parts and their resource plan, without Ray (the chains themselves: test_annotate)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.annotate_run import Timelines
from pipeline.plans import plan_actors
from pipeline.segments import Segment
from pipeline.settings import AnnotateSettings, FaceSettings, plan_faces
from pipeline.sources import Source
from pipeline.units import Clip, UnitFaces, empty_faces

SHAPES = [(c, g, n) for c in (1, 2, 3, 4, 6, 8, 16, 64, 256) for g in (0, 1, 2, 4, 8) for n in (1, 2, 4)]


@pytest.mark.parametrize("emotions", [False, True])
def test_every_pool_fits_on_the_cluster_at_once(emotions):
    for cpus, gpus, nodes in SHAPES:
        pools = plan_actors(cpus, gpus, [cpus / nodes] * nodes, emotions)
        assert set(pools) == ({"faces", "s2d"} if emotions else {"faces"})
        assert sum(p.size * p.num_cpus for p in pools.values()) <= cpus + 1e-9, (cpus, gpus, pools)
        assert sum(p.size * p.num_gpus for p in pools.values()) <= gpus + 1e-9, (cpus, gpus, pools)
        assert all(p.size >= 1 and p.threads >= 1 for p in pools.values())
        if emotions and gpus:
            assert pools["s2d"].size == gpus and pools["s2d"].num_gpus == 0.5  # one S2D actor per GPU
        if emotions and not gpus:
            assert pools["s2d"].num_gpus == 0.0 and pools["faces"].num_gpus == 0.0


def test_two_cpus_one_face_actor_and_an_s2d_actor_on_both_cores():
    pools = plan_actors(2, 0, [2.0], emotions=True)
    assert (pools["faces"].size, pools["faces"].num_cpus) == (1, 1.0)
    assert (pools["s2d"].size, pools["s2d"].num_cpus, pools["s2d"].threads) == (1, 1.0, 2)  # no core idles
    assert plan_actors(16, 0, [16.0], emotions=True)["s2d"].size == 2  # one S2D actor per 8 CPUs
    assert plan_actors(16, 0, [8.0, 8.0], emotions=True)["s2d"].threads == 8


def _segment(track: int, k: int, view: int = 0) -> Segment:
    t = np.linspace(k, k + 2, 16)
    return Segment(track_id=track, segment=k, start_s=float(k), end_s=float(k + 2), frame_index=np.arange(16) + 8 * k,
                   time_s=t, kps5=np.zeros((16, 10), np.float32), bbox=np.tile([10, 20, 110, 140], (16, 1)).astype(
                       np.float32), n_face_frames=16, view=view)


def _unit(vid: str, index: int = 0, count: int = 1, n_clips: int = 0, tracks=(), **kw) -> UnitFaces:
    """A unit whose face rows hold one face per track at t = index."""
    faces = empty_faces()
    k = len(tracks)
    faces.update(frame_index=np.full(k, 8 * index, np.int64), time_s=np.full(k, float(index)),
                 face=np.arange(k, dtype=np.int16), track_id=np.array(tracks, np.int32),
                 score=np.ones(k, np.float32), bbox=np.tile([10, 20, 110, 140], (k, 1)).astype(np.float32),
                 kps5=np.zeros((k, 10), np.float32), landmarks68=np.zeros((k, 136), np.float32), own=np.ones(k, bool))
    return UnitFaces(vid, index, count, faces=faces, n_clips=n_clips, n_sampled_own=k, frame_count=16,
                     sampled=(faces["frame_index"], faces["time_s"]), width=640, height=360,
                     info={"duration_s": 4.0, "native_fps": 8.0, "rotation": 0, "width": 640, "height": 360}, **kw)


def _clip(vid: str, seg: Segment, p: np.ndarray, unit: int = 0) -> Clip:
    return Clip(vid, unit, seg, None, p)


@pytest.fixture
def timelines(tmp_path, detector_weights, landmark_weights):
    plan = plan_faces(FaceSettings(detector_weights=str(detector_weights), landmark_weights=str(landmark_weights)))
    sources = {v: Source(f"/videos/{v}.mp4", v, 1, 0.0) for v in ("a", "b", "c")}
    from pipeline.annotate_run import Labelling
    from pipeline.classifier import resolve_classifier

    video = Labelling(resolve_classifier("random-tiny", None, str(landmark_weights)), "random-tiny", "hash", "hash")
    return Timelines(sources, plan, tmp_path / "cache", tmp_path / "out", {"video": video, "image": None}, {})


def test_clips_may_arrive_before_their_unit(timelines):
    p = np.eye(7, dtype=np.float32)
    # the stream keeps no order between a unit's clips and the unit itself: two clips first
    assert timelines.add(_clip("a", _segment(0, 1), p[1])) is None
    assert timelines.add(_clip("a", _segment(1, 0), p[2])) is None
    assert timelines.add(_unit("a", n_clips=3, tracks=(0, 1))) is None  # one clip still missing
    rec = timelines.add(_clip("a", _segment(0, 0), p[0])).record
    assert rec.status == "ok" and rec.n_segments == 3 and rec.n_tracks == 2
    df = pq.read_table(rec.timeline).to_pandas()
    assert list(zip(df.track_id, df.segment)) == [(0, 0), (0, 1), (1, 0)]  # in track order, whatever came first
    assert list(df.label) == ["Happy", "Sad", "Neutral"] and (df.confidence == 1.0).all()
    assert not timelines.units and not timelines.clips  # nothing held once a video is written
    assert timelines.face_metas["a"]["status"] == "ok" and timelines.face_metas["a"]["n_tracks"] == 2
    assert timelines.add(_clip("a", _segment(0, 0), p[0])) is None  # a retried task's copy changes nothing


def test_shards_complete_a_video_only_together_and_their_tracks_are_stitched(timelines):
    p = np.eye(7, dtype=np.float32)
    # shard 1's own track 0 is shard 0's track 1 (the same face in the frames both decoded)
    u0, u1 = _unit("a", 0, 2, n_clips=1, tracks=(0, 1)), _unit("a", 1, 2, n_clips=1, tracks=(0,))
    u1.faces["time_s"][:] = 0.0  # seen at the same time as shard 0's faces: in the overlap
    u1.faces["face"][:] = 1
    u1.faces["own"][:] = False
    u1.sampled = (u0.sampled[0], u0.sampled[1])
    assert timelines.add(u1) is None and timelines.add(_clip("a", _segment(0, 3), p[3], unit=1)) is None
    assert timelines.add(u0) is None
    rec = timelines.add(_clip("a", _segment(0, 0), p[0])).record
    df = pq.read_table(rec.timeline).to_pandas()
    assert list(zip(df.track_id, df.segment)) == [(0, 0), (1, 3)]  # shard 1's track 0 is the video's track 1


def test_a_failed_unit_fails_its_video_and_no_faces_write_an_empty_timeline(timelines, tmp_path):
    rec = timelines.add(_unit("b", status="error", error="/videos/b.mp4: file not found")).record
    assert rec.status == "error" and rec.error == "/videos/b.mp4: file not found" and rec.timeline is None
    rec = timelines.add(_unit("c")).record
    table = pq.read_table(rec.timeline)
    assert rec.status == "no_faces" and table.num_rows == 0 and table.schema.metadata[b"s2d.status"] == b"no_faces"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [Path(rec.timeline).name]


def test_views_of_a_window_are_averaged_into_one_row(timelines):
    p = np.eye(7, dtype=np.float32)
    second = _segment(0, 0, view=1)
    second.n_face_frames = 9
    timelines.add(_unit("a", n_clips=3, tracks=(0,)))
    timelines.add(_clip("a", second, p[3]))
    timelines.add(_clip("a", _segment(0, 1), p[4]))
    rec = timelines.add(_clip("a", _segment(0, 0), p[0])).record
    assert rec.n_segments == 2  # windows, not clips
    df = pq.read_table(rec.timeline).to_pandas()
    assert list(df.segment) == [0, 1] and df.n_face_frames.tolist() == [16, 16]  # the first view's count
    np.testing.assert_allclose(df[["p_happy", "p_angry", "p_surprise"]].to_numpy(), [[.5, .5, 0], [0, 0, 1]])


def test_bad_views_fail_at_the_settings_not_per_video():
    with pytest.raises(ValueError, match="views must be 1 or 2, not 3"):
        AnnotateSettings(views=3)


def test_the_s2d_actor_computes_a_shared_frame_once_and_gives_the_model_s_own_probabilities(landmark_weights):
    """Overlapping windows share frames: the S2D actor computes each frame's landmark features once (by its pixels)
    and its probabilities equal the model's own forward on each clip (BN folded, channels_last: float rounding)."""
    import torch

    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker

    worker = S2DWorker(resolve_classifier("random-tiny", None, str(landmark_weights)), threads=1)
    worker.load("video")
    frames = np.random.default_rng(0).integers(0, 256, (40, 224, 224, 3), dtype=np.uint8)
    clips = [frames[i:i + 16] for i in (0, 8, 16, 24)]  # 2 s windows at a 1 s stride, 8 fps
    got = np.concatenate([worker.probabilities(c[None]) for c in clips[:2]] + [worker.probabilities(np.stack(clips[2:]))])
    assert (worker.landmarks.computed, worker.landmarks.reused) == (40, 24)

    import s2d_model as S

    torch.manual_seed(0)
    model = S.create_model("s2d_tiny", 7)
    S.load_landmark_weights(model, landmark_weights)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (S.IMAGENET_MEAN, S.IMAGENET_STD))
    x = (torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 255 - mean) / std
    with torch.inference_mode():
        want = model.eval()(x).softmax(-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert not np.allclose(want[0], want[1])  # the clips differ: a reuse of the wrong frames would show


def test_the_s2d_actor_gives_a_still_images_faces_to_the_image_model(landmark_weights):
    """One-frame clips (an image's faces) go to the static model, 16-frame clips of the same batch to the video model;
    the image model's probabilities are S2DImage's own forward on the aligned face."""
    import torch

    import s2d_model as S
    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker
    from pipeline.units import Clip

    video = resolve_classifier("random-tiny", None, str(landmark_weights))
    image = resolve_classifier("random-tiny", None, str(landmark_weights), kind="image")
    worker = S2DWorker(video, threads=1, image=image)
    faces = np.random.default_rng(1).integers(0, 256, (3, 1, 224, 224, 3), dtype=np.uint8)
    clip = np.random.default_rng(2).integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    items = [Clip("img", 0, _segment(i, 0), faces[i]) for i in range(3)] + [Clip("vid", 0, _segment(0, 0), clip)]
    worker({"item": items})
    assert [c.probs.shape for c in items] == [(7,)] * 4 and all(c.pixels is None for c in items)
    torch.manual_seed(0)
    model = S.create_image_model("s2d_tiny", 7)
    S.load_landmark_weights(model, landmark_weights)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (S.IMAGENET_MEAN, S.IMAGENET_STD))
    x = (torch.from_numpy(faces[:, 0]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.inference_mode():
        want = model.eval()(x).softmax(-1).numpy()
    np.testing.assert_allclose(np.stack([c.probs for c in items[:3]]), want, atol=1e-5, rtol=0)
    assert set(worker.models) == {"video", "image"}
    with pytest.raises(ValueError, match="no image weights"):
        S2DWorker(video, threads=1).probabilities(faces[:1])


def test_random_tiny_is_the_same_model_every_time_and_leaves_torch_s_rng_alone(landmark_weights):
    """``random-tiny`` is seeded (the same weights in every actor: the golden outputs rely on it), but its build does
    not reseed the process: the numbers torch draws next are the ones it would have drawn without the build."""
    import torch

    from pipeline.classifier import build_model, resolve_classifier

    c = resolve_classifier("random-tiny", None, str(landmark_weights))
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    first = build_model(c).state_dict()
    assert torch.equal(torch.rand(4), want)
    second = build_model(c).state_dict()
    assert all(torch.equal(v, second[k]) for k, v in first.items())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_the_s2d_actor_s_lanes_classify_a_batch_side_by_side_one_thread_each(landmark_weights, monkeypatch, precision):
    """On CPU with 2 threads the S2D actor runs a real model in 2 lanes: each classifies its own contiguous share of
    the batch on one torch thread, at the same time as the other; the clip left over (5 clips, 2 lanes) goes alone
    with both threads. Each clip gets what one actor on one thread gives it, and a frame is still computed once
    within a lane; in every precision. (The tiny model's architecture stands in for ViT-B here, taken for a real
    one; as itself, it runs one forward at a time on the calling thread.)"""
    import threading

    import torch

    from pipeline import s2d_actor
    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker

    c = resolve_classifier("random-tiny", None, str(landmark_weights), precision=precision)
    frames = np.random.default_rng(3).integers(0, 256, (48, 224, 224, 3), dtype=np.uint8)
    pixels = [frames[i:i + 16] for i in range(0, 33, 8)]  # 5 windows, each sharing half its frames with the next

    def batch():
        return {"item": [Clip("v", 0, _segment(0, k), p.copy()) for k, p in enumerate(pixels)]}

    before = torch.get_num_threads()
    try:
        as_tiny = S2DWorker(c, batch_size=1, threads=2)
        seen = []
        forward = as_tiny.probabilities
        as_tiny.probabilities = lambda x, *slots: seen.append(threading.current_thread().name) or forward(x, *slots)
        as_tiny(batch())
        assert seen == [threading.current_thread().name] * 5
        monkeypatch.setattr(s2d_actor, "tiny", lambda c: False)
        lanes = S2DWorker(c, batch_size=1, threads=2)
        assert lanes.lanes == 2 and S2DWorker(None, device="cuda", threads=2).lanes == 1  # a GPU: one forward at once
        runs, barrier = [], threading.Barrier(2, timeout=60)
        forward = lanes.probabilities

        def probabilities(x, *slots):  # which thread ran each clip, on how many torch threads; the lanes' first clips meet
            name = threading.current_thread().name
            runs.append((name, torch.get_num_threads()))
            if name.startswith("s2d-lane") and sum(r[0].startswith("s2d-lane") for r in runs) <= 2:
                barrier.wait()  # both lanes are in at once (a lane on its own would time out here)
            return forward(x, *slots)

        lanes.probabilities = probabilities
        got = lanes(batch())["item"]
        assert [n for _, n in runs] == [1, 1, 1, 1, 2]
        assert len({name for name, _ in runs[:4]}) == 2 and runs[4][0] == threading.current_thread().name
        assert lanes.landmarks.computed + lanes.landmarks.reused == 5 * 16
        assert 48 <= lanes.landmarks.computed <= 48 + 8  # the frames the two shares have in common, at most twice
        one = S2DWorker(c, batch_size=1, threads=1)(batch())["item"]
    finally:
        torch.set_num_threads(before)
    assert all(g.pixels is None and g.s2d_seconds > 0 for g in got)
    atol = 1e-6 if precision == "fp32" else 1e-3  # bf16 / int8 kernels may round differently on another thread
    np.testing.assert_allclose(np.stack([g.probs for g in got]), np.stack([o.probs for o in one]), atol=atol, rtol=0)
    assert not np.allclose(got[0].probs, got[1].probs)
