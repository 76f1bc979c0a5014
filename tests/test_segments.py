"""plan_segments: windows per track, frame choice, gap filling, on synthetic face tables."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.cache import faces_table
from oracles import plan_segments
from pipeline.segments import Segment

FPS = 8.0


def make_faces(tracks: dict[int, np.ndarray], fps: float = FPS, video_id: str = "v") -> pa.Table:
    """{track_id: frame indices} -> FACES_SCHEMA table; every face's key points/box encode (track, frame)."""
    fi, tid = [], []
    for t, frames in tracks.items():
        fi += list(frames)
        tid += [t] * len(frames)
    fi = np.asarray(fi, np.int64)
    tid = np.asarray(tid, np.int32)
    n = len(fi)
    order = np.lexsort((tid, fi))  # frame order, like the cache
    fi, tid = fi[order], tid[order]
    kps = np.zeros((n, 10), np.float32)
    kps[:, 0] = fi  # x of the left eye = frame index: shows which frame a slot copied
    kps[:, 1] = tid
    bbox = np.stack([fi, tid, fi + 10, tid + 10], 1).astype(np.float32)
    face = np.zeros(n, np.int16)
    for i in range(1, n):
        face[i] = face[i - 1] + 1 if fi[i] == fi[i - 1] else 0
    return faces_table(dict(video_id=video_id, frame_index=fi, time_s=fi / fps, face=face, track_id=tid,
                            score=np.ones(n), bbox=bbox, kps5=kps, landmarks68=np.zeros((n, 136)),
                            width=640, height=360))


def all_frames(duration: float, fps: float = FPS):
    fi = np.arange(int(round(duration * fps)), dtype=np.int64)
    return fi, fi / fps


def check_segment(s: Segment, T: int = 16):
    assert s.frame_index.shape == (T,) and s.frame_index.dtype == np.int64
    assert s.time_s.shape == (T,) and s.time_s.dtype == np.float64
    assert s.kps5.shape == (T, 10) and s.kps5.dtype == np.float32
    assert s.bbox.shape == (T, 4) and s.bbox.dtype == np.float32
    assert s.bbox_mean.shape == (4,) and s.bbox_mean.dtype == np.float32
    assert np.all(np.diff(s.frame_index) >= 0) and np.all(np.diff(s.time_s) >= 0)
    np.testing.assert_array_equal(s.kps5[:, 0], s.frame_index)  # each slot's face is its frame's face
    np.testing.assert_array_equal(s.kps5[:, 1], s.track_id)
    np.testing.assert_allclose(s.time_s, s.frame_index / FPS)


def test_track_until_2_4_s_in_6_4_s_video():
    faces = make_faces({0: np.arange(20)})  # 0 .. 2.375 s at 8 fps
    for sampled in (None, all_frames(6.4)):
        segs = plan_segments(faces, 6.4, sampled=sampled)
        assert [(s.track_id, s.segment) for s in segs] == [(0, 0), (0, 1)]  # window 2 ([2,4)) too few: skipped
        s0, s1 = segs
        for s in segs:
            check_segment(s)
        assert (s0.start_s, s0.end_s, s0.n_face_frames) == (0.0, 2.0, 16)
        np.testing.assert_array_equal(s0.frame_index, np.arange(16))  # one frame per slot, ties -> earlier frame
        assert (s1.start_s, s1.end_s) == (1.0, 3.0)
        assert s1.n_face_frames == 12  # frames 8..19; targets past 2.4 s have no face
        np.testing.assert_array_equal(s1.frame_index, list(range(8, 20)) + [19] * 4)  # filled from the last face


def test_window_2_counts_only_four_faces():
    faces = make_faces({0: np.arange(20)})
    assert not [s for s in plan_segments(faces, 6.4, min_face_frames=4) if s.segment == 3]
    s2 = [s for s in plan_segments(faces, 6.4, min_face_frames=4, sampled=all_frames(6.4)) if s.segment == 2]
    assert len(s2) == 1 and s2[0].n_face_frames == 4
    np.testing.assert_array_equal(s2[0].frame_index, [16, 17, 18, 19] + [19] * 12)


def test_gap_in_the_middle_is_filled_from_nearest_slot():
    frames = np.setdiff1d(np.arange(16), [6, 7, 8])  # faces missing at frames 6-8 (the frames exist)
    faces = make_faces({0: frames})
    s = plan_segments(faces, 2.0, sampled=all_frames(2.0))[0]
    check_segment(s)
    assert s.segment == 0 and s.n_face_frames == 13
    np.testing.assert_array_equal(s.frame_index, [0, 1, 2, 3, 4, 5, 5, 5, 9, 9, 10, 11, 12, 13, 14, 15])
    # without `sampled` frames 6-8 are unknown: slot 8 (1.0625 s) takes frame 9, 0.0625 s away (one slot more)
    s = plan_segments(faces, 2.0)[0]
    check_segment(s)
    assert s.segment == 0 and s.n_face_frames == 14
    np.testing.assert_array_equal(s.frame_index, [0, 1, 2, 3, 4, 5, 5, 9, 9, 9, 10, 11, 12, 13, 14, 15])


def test_two_tracks_give_separate_segments():
    faces = make_faces({0: np.arange(0, 24), 1: np.arange(8, 32)})  # overlapping in time
    segs = plan_segments(faces, 4.0, sampled=all_frames(4.0))
    keys = [(s.track_id, s.segment) for s in segs]
    assert keys == sorted(keys)
    assert [k[1] for k in keys if k[0] == 0] == [0, 1, 2]  # track 0: 0..2.875 s ([2,4): 8 faces)
    assert [k[1] for k in keys if k[0] == 1] == [0, 1, 2, 3]  # track 1: 1..3.875 s ([0,2), [3,5): 8 faces)
    for s in segs:
        check_segment(s)
    s = next(s for s in segs if (s.track_id, s.segment) == (1, 0))
    assert s.n_face_frames == 8 and s.frame_index.min() == 8


def test_short_video_end_is_duration():
    faces = make_faces({0: np.arange(8)})  # a 1 s video at 8 fps
    (s,) = plan_segments(faces, 1.0)
    check_segment(s)
    assert (s.start_s, s.end_s, s.n_face_frames) == (0.0, 1.0, 8)
    np.testing.assert_array_equal(s.frame_index, list(range(8)) + [7] * 8)
    assert plan_segments(faces, 1.0, min_face_frames=9) == []


def test_empty_input_and_dataframe_input():
    empty = make_faces({})
    assert plan_segments(empty, 5.0) == []
    assert plan_segments(empty.to_pandas(), 5.0) == []
    faces = make_faces({3: np.arange(30), 5: np.arange(10, 40)})
    a = plan_segments(faces, 5.0)
    shuffled = faces.to_pandas().sample(frac=1.0, random_state=0)  # row order must not matter
    b = plan_segments(shuffled, 5.0)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x.track_id, x.segment, x.n_face_frames) == (y.track_id, y.segment, y.n_face_frames)
        np.testing.assert_array_equal(x.frame_index, y.frame_index)
        np.testing.assert_array_equal(x.kps5, y.kps5)


def test_frames_per_clip_and_stride():
    faces = make_faces({0: np.arange(40)})  # 0..4.875 s
    segs = plan_segments(faces, 5.0, frames_per_clip=8, min_face_frames=4)
    assert [s.segment for s in segs] == [0, 1, 2, 3, 4]
    for s in segs:
        check_segment(s, T=8)
    np.testing.assert_array_equal(segs[0].frame_index, np.arange(1, 16, 2))  # t_j = (j + 0.5) * 0.25
    assert segs[-1].end_s == 5.0 and segs[-1].n_face_frames == 4
    segs = plan_segments(faces, 5.0, segment_s=1.0, stride_s=0.5)
    assert [s.segment for s in segs] == list(range(10))
    assert segs[3].start_s == 1.5 and segs[3].end_s == 2.5


def test_sparse_sampling_repeats_frames():
    """Sampled at 4 fps, a 2 s window's 16 targets share frames (t_j = 0.0625 + j/8 -> nearest of k/4); all
    slots count."""
    faces = make_faces({0: np.arange(0, 16, 2)}, fps=FPS)  # frames 0, 2, ... 14 -> every 0.25 s
    s = plan_segments(faces, 2.0)[0]
    assert s.segment == 0 and s.n_face_frames == 16
    np.testing.assert_array_equal(s.frame_index, [0] + list(np.repeat(np.arange(2, 16, 2), 2)) + [14])


def test_two_views_are_the_first_and_last_16_frames_of_a_longer_window():
    faces = make_faces({0: np.arange(48)})  # 6 s at 8 fps
    segs = plan_segments(faces, 6.0, segment_s=3.0, stride_s=3.0, views=2)  # 24 sampled frames per window
    assert [(s.segment, s.view) for s in segs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for s in segs:
        check_segment(s)
        assert s.n_face_frames == 16 and s.start_s == 3.0 * s.segment
    np.testing.assert_array_equal(segs[0].frame_index, np.arange(16))  # first 16 frames of [0, 3)
    np.testing.assert_array_equal(segs[1].frame_index, np.arange(8, 24))  # last 16
    np.testing.assert_array_equal(segs[3].frame_index, np.arange(32, 48))
    # a window of at most 16 sampled frames has one view, the same clip as without views
    one = plan_segments(faces, 6.0, views=2)
    assert all(s.view == 0 for s in one) and len(one) == len(plan_segments(faces, 6.0))
    np.testing.assert_array_equal(one[0].frame_index, plan_segments(faces, 6.0)[0].frame_index)


def test_each_view_is_skipped_on_its_own():
    faces = make_faces({0: np.arange(0, 10)})  # the face only in the window's first 10 frames of 24
    segs = plan_segments(faces, 3.0, segment_s=3.0, stride_s=3.0, views=2, sampled=all_frames(3.0))
    assert [(s.view, s.n_face_frames) for s in segs] == [(0, 10)]  # the last 16 hold only 2 face frames
    with pytest.raises(ValueError, match="views"):
        plan_segments(faces, 3.0, views=3)
