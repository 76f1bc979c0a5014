"""Face tracks within one video: frame-to-frame Hungarian matching of detector boxes. numpy + scipy only.

``OnlineTracker`` takes one sampled frame at a time (the face actor runs it as it decodes); ``stitch_units`` joins
the tracks of a long video's time shards.

Rule (``OnlineTracker.update``):
- Rows are processed frame by frame (ascending ``frame_index``); inside a frame, by x1, then y1, then row order,
  so the result does not depend on the row order within a frame.
- Candidate tracks for a frame at time t: tracks whose last face is at most ``max_gap_s`` earlier
  (``t - t_last <= max_gap_s``). Older tracks are closed for good; their ids are never reused.
- Each candidate track predicts its box at t: the last box shifted by the track's centre velocity
  (exponentially smoothed over its matches) times ``t - t_last``. This keeps ids on crossing faces.
- A (track, face) pair is plausible if the centre distance d (normalised by the mean diagonal of the predicted
  and the face box) is at most ``max_center_dist * sqrt(steps)``, where steps = (t - t_last) / ``step_s`` (>= 1;
  ``step_s`` is the sampling interval: the face actor passes ``sampling_step(fps, native_fps)``): a face may drift
  further over a longer gap, but it does not fly. Pairs with IoU >= ``min_iou`` are always plausible.
- Cost = (1 - IoU) + d (+ ``landmark_weight`` x mean landmark distance / diagonal, when landmarks are given).
  Implausible pairs are forbidden. ``scipy.optimize.linear_sum_assignment`` picks the global minimum, so faces
  that trade places in the row order (or pass each other) keep their ids.
- Unmatched faces start new tracks. Ids are 0, 1, 2, ... in order of first appearance, then x1 within a frame.
- A cut (``OnlineTracker.cut``; the face actor finds them with ``cuts.CutDetector``) closes every open track.
"""
from __future__ import annotations

import numpy as np

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


class OnlineTracker:
    """Track ids for one video (or one time shard), one sampled frame at a time; see the module docstring."""

    def __init__(self, step_s: float, max_gap_s: float = 1.0, min_iou: float = 0.3, max_center_dist: float = 0.5,
                 landmark_weight: float = 0.5, velocity_smoothing: float = 0.5):
        self.step_s, self.max_gap_s, self.min_iou = float(step_s), max_gap_s, min_iou
        self.max_center_dist, self.landmark_weight, self.velocity_smoothing = max_center_dist, landmark_weight, \
            velocity_smoothing
        # open tracks: id -> last box [4], last time, velocity [2] (px/s), faces seen, last landmarks [68,2] | None
        self.last_box: dict[int, np.ndarray] = {}
        self.last_t: dict[int, float] = {}
        self.vel: dict[int, np.ndarray] = {}
        self.seen: dict[int, int] = {}
        self.last_lm: dict[int, np.ndarray | None] = {}
        self.next_id = 0

    def update(self, t: float, bbox: np.ndarray, landmarks68: np.ndarray | None = None) -> np.ndarray:
        """One frame at time ``t``: its faces' boxes [k,4] (and landmarks [k,68,2]) -> their track ids int32[k]."""
        bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
        k = len(bbox)
        lms = None if landmarks68 is None else np.asarray(landmarks68, np.float64).reshape(k, 68, 2)
        order = np.lexsort((np.arange(k), bbox[:, 1], bbox[:, 0]))  # x1, then y1, then row
        ids = np.full(k, -1, np.int32)
        ids[order] = self._match(float(t), bbox[order], None if lms is None else lms[order])
        return ids

    def cut(self) -> None:
        """A cut before the next frame: every open track is closed (its id is never reused)."""
        for d in (self.last_box, self.last_t, self.vel, self.seen, self.last_lm):
            d.clear()

    def _match(self, t: float, boxes: np.ndarray, lms: np.ndarray | None) -> np.ndarray:
        for tid in [i for i, lt in self.last_t.items() if t - lt > self.max_gap_s + 1e-9]:  # close stale tracks
            for d in (self.last_box, self.last_t, self.vel, self.seen, self.last_lm):
                del d[tid]
        tids = sorted(self.last_t)
        assigned = np.full(len(boxes), -1)
        if tids and len(boxes):
            gap = np.array([t - self.last_t[i] for i in tids])  # [m]
            shift = np.stack([self.vel[i] for i in tids]) * gap[:, None]  # [m,2]
            pred = np.stack([self.last_box[i] for i in tids]) + np.tile(shift, 2)  # [m,4]
            iou = _iou(pred, boxes)  # [m,k]
            scale = (_diag(pred)[:, None] + _diag(boxes)[None, :]) / 2
            dist = np.linalg.norm(_centre(pred)[:, None] - _centre(boxes)[None], axis=-1) / np.maximum(scale, 1e-6)
            allowed = self.max_center_dist * np.sqrt(np.maximum(gap / self.step_s, 1.0))  # [m]
            cost = (1 - iou) + dist
            if lms is not None and self.landmark_weight > 0:
                for a, tid in enumerate(tids):
                    if self.last_lm[tid] is None:
                        continue
                    d = np.linalg.norm(self.last_lm[tid][None] + shift[a] - lms, axis=-1)  # [k,68]
                    fin = np.isfinite(d)  # faces without landmarks (NaN) add nothing
                    d = np.where(fin, d, 0).sum(1) / np.maximum(fin.sum(1), 1)
                    cost[a] += self.landmark_weight * d / np.maximum(scale[a], 1e-6)
            ok = (dist <= allowed[:, None]) | (iou >= self.min_iou)
            cost = np.where(ok, cost, _FORBIDDEN)
            from scipy.optimize import linear_sum_assignment  # on first use: importing this module stays light

            for a, b in zip(*linear_sum_assignment(cost)):
                if ok[a, b]:
                    assigned[b] = tids[a]
        for j, box in enumerate(boxes):
            tid = int(assigned[j])
            if tid < 0:  # new track
                tid, self.next_id = self.next_id, self.next_id + 1
                self.vel[tid], self.seen[tid] = np.zeros(2), 0
            elif t > self.last_t[tid]:
                v = (_centre(box) - _centre(self.last_box[tid])) / (t - self.last_t[tid])
                a = self.velocity_smoothing if self.seen[tid] > 1 else 0.0  # first step: take it as is
                self.vel[tid] = a * self.vel[tid] + (1 - a) * v
            self.seen[tid] += 1
            self.last_box[tid], self.last_t[tid] = box, t
            self.last_lm[tid] = None if lms is None or not np.isfinite(lms[j]).all() else lms[j]
            assigned[j] = tid
        return assigned


def stitch_units(units: list[dict]) -> list[np.ndarray]:
    """Shard-local track ids -> one video's track ids, numbered as one pass over the whole video numbers them.

    units: the shards in time order, each {"time_s" float64[n], "face" int16[n], "track_id" int32[n] (local),
    "own" bool[n] (the rows the shard owns), "bbox" float[n,4]}. Neighbouring shards decode the same frames where
    they overlap; a shard's local track takes the id of the earlier shard's track whose faces it shares there (the
    same frame and face number; most shared rows win), else a new one. Ids are then renumbered by first
    appearance (time, then x1, y1), as ``OnlineTracker`` numbers them. Returns the video ids of each unit's rows.
    """
    video: list[np.ndarray] = []
    next_id = 0
    for i, u in enumerate(units):
        local = np.asarray(u["track_id"], np.int64)
        mapping: dict[int, int] = {}
        if i:
            prev, prev_ids = units[i - 1], video[i - 1]
            where = {(t, f): vid for t, f, vid in zip(prev["time_s"].tolist(), prev["face"].tolist(),
                                                       prev_ids.tolist())}
            votes: dict[tuple[int, int], int] = {}
            for t, f, tid in zip(u["time_s"].tolist(), u["face"].tolist(), local.tolist()):
                if (t, f) in where:
                    votes[(tid, where[(t, f)])] = votes.get((tid, where[(t, f)]), 0) + 1
            taken: set[int] = set()
            for (tid, vid), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
                if tid not in mapping and vid not in taken:
                    mapping[tid] = vid
                    taken.add(vid)
        for tid in np.unique(local).tolist():  # ascending local id = order of first appearance in the shard
            if tid not in mapping:
                mapping[tid], next_id = next_id, next_id + 1
        video.append(np.array([mapping[t] for t in local.tolist()], np.int64))
    # renumber by first appearance among the owned rows
    first: dict[int, tuple] = {}
    for u, ids in zip(units, video):
        bbox = np.asarray(u["bbox"], np.float64).reshape(-1, 4)
        for j in np.flatnonzero(u["own"]):
            key = (float(u["time_s"][j]), float(bbox[j, 0]), float(bbox[j, 1]))
            vid = int(ids[j])
            if vid not in first or key < first[vid]:
                first[vid] = key
    renumber = {vid: n for n, vid in enumerate(sorted(first, key=lambda v: first[v]))}
    return [np.array([renumber.get(int(v), -1) for v in ids], np.int32) for ids in video]
