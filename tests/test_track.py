"""assign_tracks on synthetic face rows."""
from __future__ import annotations

import numpy as np

from oracles import assign_tracks

FPS = 30.0
W, H = 100.0, 140.0  # face box size (px)


def rows(frames: dict[int, list[tuple[float, float]]], fps: float = FPS):
    """{frame: [(cx, cy), ...]} -> frame_index [n], time_s [n], bbox [n,4], in the given order."""
    fi, ts, bb = [], [], []
    for f, centres in frames.items():
        for cx, cy in centres:
            fi.append(f)
            ts.append(f / fps)
            bb.append((cx - W / 2, cy - H / 2, cx + W / 2, cy + H / 2))
    return np.array(fi, np.int64), np.array(ts, np.float64), np.array(bb, np.float32).reshape(-1, 4)


def test_single_moving_face_with_jitter():
    rng = np.random.default_rng(0)
    frames = {f: [(100 + 4 * f + rng.normal(0, 2), 200 + rng.normal(0, 2))] for f in range(90)}
    ids = assign_tracks(*rows(frames))
    assert ids.dtype == np.int32 and (ids == 0).all()


def test_two_faces_crossing_keep_ids():
    # same height, 12 px/frame towards each other; they pass between frames 16 and 17 (never identical)
    frames = {f: [(100 + 12 * f, 200), (500 - 12 * f, 200)] for f in range(34)}
    fi, ts, bb = rows(frames)
    ids = assign_tracks(fi, ts, bb)
    a, b = ids[0::2], ids[1::2]  # rows of face A (left -> right) and of face B
    assert (a == 0).all() and (b == 1).all()


def test_rows_swapping_order_do_not_swap_ids():
    rng = np.random.default_rng(1)
    frames = {}
    for f in range(40):
        faces = [(150 + f, 200, "A"), (450 - f, 220, "B")]
        frames[f] = [faces[i] for i in rng.permutation(2)]  # row order within a frame changes
    fi = np.array([f for f in frames for _ in frames[f]])
    who = np.array([w for f in frames for (_, _, w) in frames[f]])
    _, ts, bb = rows({f: [(x, y) for x, y, _ in v] for f, v in frames.items()})
    ids = assign_tracks(fi, ts, bb)
    assert set(ids[who == "A"]) == {0} and set(ids[who == "B"]) == {1}


def test_gaps():
    def run(gap_s: float):
        n_gap = int(round(gap_s * FPS))
        frames = {f: [(300, 200)] for f in range(30)}
        frames.update({f: [(305, 202)] for f in range(30 + n_gap, 60 + n_gap)})
        return assign_tracks(*rows(frames))

    assert set(run(0.5)) == {0}  # short gap: same track
    ids = run(2.0)  # longer than max_gap_s = 1.0: new track
    assert (ids[:30] == 0).all() and (ids[30:] == 1).all()


def test_teleport_splits():
    frames = {f: [(100, 200)] for f in range(10)}
    frames.update({f: [(500, 200)] for f in range(10, 20)})  # jumps 400 px (~2.3 box diagonals) in one step
    ids = assign_tracks(*rows(frames))
    assert (ids[:10] == 0).all() and (ids[10:] == 1).all()


def test_ids_by_first_appearance_then_x1_and_determinism():
    rng = np.random.default_rng(2)
    frames = {f: [(400, 200), (120, 200)] + ([(260, 400)] if f >= 5 else []) for f in range(12)}
    fi, ts, bb = rows(frames)
    ids = assign_tracks(fi, ts, bb)
    x1 = bb[:, 0]
    assert set(ids[x1 < 100]) == {0} and set(ids[x1 > 300]) == {1} and set(ids[(x1 > 100) & (x1 < 300)]) == {2}
    np.testing.assert_array_equal(assign_tracks(fi, ts, bb), ids)  # same input, same ids
    p = rng.permutation(len(fi))  # any row order gives the same id per row
    np.testing.assert_array_equal(assign_tracks(fi[p], ts[p], bb[p]), ids[p])


def test_landmarks_and_variable_frame_rate():
    # 30 fps then 24 fps timestamps; landmarks (with a NaN face) do not break anything
    t = np.concatenate([np.arange(30) / 30, 1 + np.arange(1, 25) / 24])
    fi = np.arange(len(t))
    cx = 200 + 3 * fi
    bb = np.stack([cx - 50, np.full_like(cx, 130), cx + 50, np.full_like(cx, 270)], 1).astype(np.float32)
    lm = np.tile(np.linspace(0, 1, 136).reshape(68, 2), (len(t), 1, 1)) * 100 + bb[:, None, :2]
    lm[7] = np.nan
    assert (assign_tracks(fi, t, bb, lm.astype(np.float32)) == 0).all()


def test_empty():
    out = assign_tracks(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4), np.float32), None)
    assert out.shape == (0,) and out.dtype == np.int32


def test_step_s_scales_the_allowed_jump():
    # faces only every 9th frame (0.3 s); the face moves 206 px (1.2 box diagonals) between them
    frames = {9 * k: [(100 + 206 * k, 200)] for k in range(3)}
    assert list(assign_tracks(*rows(frames))) == [0, 1, 2]  # default step = 0.3 s: one step, too far
    assert list(assign_tracks(*rows(frames), step_s=1 / FPS)) == [0, 0, 0]  # 9 steps of 1/30 s: plausible
