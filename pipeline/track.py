"""Face tracks within one video: frame-to-frame Hungarian matching of detector boxes. numpy + scipy only.

Rule (``assign_tracks``):
- Rows are processed frame by frame (ascending ``frame_index``); inside a frame, by x1, then y1, then row order,
  so the result does not depend on the row order within a frame.
- Candidate tracks for a frame at time t: tracks whose last face is at most ``max_gap_s`` earlier
  (``t - t_last <= max_gap_s``). Older tracks are closed for good; their ids are never reused.
- Each candidate track predicts its box at t: the last box shifted by the track's centre velocity
  (exponentially smoothed over its matches) times ``t - t_last``. This keeps ids on crossing faces.
- A (track, face) pair is plausible if the centre distance d (normalised by the mean diagonal of the predicted
  and the face box) is at most ``max_center_dist * sqrt(steps)``, where steps = (t - t_last) / ``step_s`` (>= 1;
  ``step_s`` is the sampling interval, default: the median interval between frames with faces): a face may drift
  further over a longer gap, but it does not fly. Pairs with IoU >= ``min_iou`` are always plausible.
- Cost = (1 - IoU) + d (+ ``landmark_weight`` x mean landmark distance / diagonal, when landmarks are given).
  Implausible pairs are forbidden. ``scipy.optimize.linear_sum_assignment`` picks the global minimum, so faces
  that trade places in the row order (or pass each other) keep their ids.
- Unmatched faces start new tracks. Ids are 0, 1, 2, ... in order of first appearance, then x1 within a frame.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

_FORBIDDEN = 1e6


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [m,4], b [n,4] -> IoU [m,n]."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _centre(b: np.ndarray) -> np.ndarray:
    return (b[..., :2] + b[..., 2:4]) / 2  # [...,2]


def _diag(b: np.ndarray) -> np.ndarray:
    return np.hypot(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])


def assign_tracks(frame_index: np.ndarray, time_s: np.ndarray, bbox: np.ndarray,
                  landmarks68: np.ndarray | None = None, max_gap_s: float = 1.0, min_iou: float = 0.3,
                  max_center_dist: float = 0.5, landmark_weight: float = 0.5,
                  velocity_smoothing: float = 0.5, step_s: float | None = None) -> np.ndarray:
    """Track id (int32[n]) per face row of one video. See the module docstring for the rule.

    frame_index int64[n], time_s float64[n] (PTS of the row's frame), bbox float[n,4] x1,y1,x2,y2,
    landmarks68 float[n,68,2] or None.
    """
    frame_index = np.asarray(frame_index, np.int64).reshape(-1)
    n = len(frame_index)
    time_s = np.asarray(time_s, np.float64).reshape(n)
    bbox = np.asarray(bbox, np.float64).reshape(n, 4)
    lms = None if landmarks68 is None else np.asarray(landmarks68, np.float64).reshape(n, 68, 2)
    out = np.full(n, -1, np.int32)
    if n == 0:
        return out

    order = np.lexsort((np.arange(n), bbox[:, 1], bbox[:, 0], frame_index))  # frame, then x1, y1, row
    frames, starts = np.unique(frame_index[order], return_index=True)
    bounds = list(starts) + [n]
    ftimes = time_s[order][starts]  # [F] time of each frame
    steps_dt = np.diff(ftimes)
    steps_dt = steps_dt[steps_dt > 0]
    dt_med = float(step_s) if step_s else float(np.median(steps_dt)) if len(steps_dt) else 1.0

    # open tracks: id -> last box [4], last time, velocity [2] (px/s), faces seen, last landmarks [68,2] | None
    last_box: dict[int, np.ndarray] = {}
    last_t: dict[int, float] = {}
    vel: dict[int, np.ndarray] = {}
    seen: dict[int, int] = {}
    last_lm: dict[int, np.ndarray | None] = {}
    next_id = 0
    for f in range(len(frames)):
        rows = order[bounds[f]:bounds[f + 1]]  # this frame's rows, sorted by x1
        t = float(ftimes[f])
        for tid in [k for k, lt in last_t.items() if t - lt > max_gap_s + 1e-9]:  # close stale tracks
            for d in (last_box, last_t, vel, seen, last_lm):
                del d[tid]
        tids = sorted(last_t)
        boxes = bbox[rows]  # [k,4]
        assigned = np.full(len(rows), -1)
        if tids:
            gap = np.array([t - last_t[i] for i in tids])  # [m]
            shift = np.stack([vel[i] for i in tids]) * gap[:, None]  # [m,2]
            pred = np.stack([last_box[i] for i in tids]) + np.tile(shift, 2)  # [m,4]
            iou = _iou(pred, boxes)  # [m,k]
            scale = (_diag(pred)[:, None] + _diag(boxes)[None, :]) / 2
            dist = np.linalg.norm(_centre(pred)[:, None] - _centre(boxes)[None], axis=-1) / np.maximum(scale, 1e-6)
            allowed = max_center_dist * np.sqrt(np.maximum(gap / dt_med, 1.0))  # [m]
            cost = (1 - iou) + dist
            if lms is not None and landmark_weight > 0:
                for a, tid in enumerate(tids):
                    if last_lm[tid] is None:
                        continue
                    d = np.linalg.norm(last_lm[tid][None] + shift[a] - lms[rows], axis=-1)  # [k,68]
                    fin = np.isfinite(d)  # faces without landmarks (NaN) add nothing
                    d = np.where(fin, d, 0).sum(1) / np.maximum(fin.sum(1), 1)
                    cost[a] += landmark_weight * d / np.maximum(scale[a], 1e-6)
            ok = (dist <= allowed[:, None]) | (iou >= min_iou)
            cost = np.where(ok, cost, _FORBIDDEN)
            for a, b in zip(*linear_sum_assignment(cost)):
                if ok[a, b]:
                    assigned[b] = tids[a]
        for j, r in enumerate(rows):
            tid = int(assigned[j])
            if tid < 0:  # new track
                tid, next_id = next_id, next_id + 1
                vel[tid], seen[tid] = np.zeros(2), 0
            elif t > last_t[tid]:
                v = (_centre(bbox[r]) - _centre(last_box[tid])) / (t - last_t[tid])
                a = velocity_smoothing if seen[tid] > 1 else 0.0  # first step: take it as is
                vel[tid] = a * vel[tid] + (1 - a) * v
            seen[tid] += 1
            last_box[tid], last_t[tid] = bbox[r], t
            last_lm[tid] = None if lms is None or not np.isfinite(lms[r]).all() else lms[r]
            out[r] = tid
    return out
