"""Segments per face track: which sampled frames make each 16-frame S2D clip. numpy only.

Rule (``window_segments``, for one track and one window):
- Windows ``[k * stride_s, k * stride_s + segment_s)`` for k = 0, 1, ... while ``k * stride_s < duration_s``;
  a window's reported ``end_s`` is ``min(start + segment_s, duration_s)``. ``segment`` = k.
- For each track, only the windows that overlap the track's time span (first to last face time) are considered.
- Within a window, ``frames_per_clip`` (T = 16) target times spread uniformly over the whole window:
  ``t_j = start + (j + 0.5) * segment_s / T``.
- Each target picks the nearest sampled frame of the video (ties: the earlier frame). Sampled frames are the
  distinct (frame_index, time_s) pairs of the faces table (any track), plus ``sampled`` when given (all sampled
  frames of the video, including those without faces, which the faces table cannot show). A target farther than one
  sampling interval (the median gap between sampled frames) from its nearest frame - past the end of the video or
  in a hole of the sampling - has no frame.
- Slot j is present when its frame holds a face of this track; ``n_face_frames`` = number of present slots (a frame
  picked by two targets counts twice). Windows with ``n_face_frames < min_face_frames`` are skipped.
- Each missing slot is filled from the nearest present slot in time (ties: the earlier slot): its frame_index,
  time_s, kps5 and bbox are copied, so a clip always has T real face frames, in time order.
- Test-time views (``views=2``, the authors' test protocol): when the window holds more than T sampled frames
  (e.g. a 4 s window at 8 fps), it gives two clips instead, its first T sampled frames (view 0) and its last T
  (view 1), each kept or skipped by the rule above; otherwise the one clip above. Their probabilities are averaged.
Output: sorted by (track_id, segment, view). Deterministic: depends only on the values, not on the row order.

``OnlineWindows`` applies the rule while the video is decoded, one sampled frame at a time, and gives each window's segments as soon as no later frame can change them
(a frame more than one sampling interval past the window's end has arrived), with the per-row payloads (the face
actor's aligned crops) of each slot. The tests check it against the rule applied to a whole video's faces table at
once (``tests/oracles.py``: ``plan_segments``). Online, a track's span is what has been seen when its window closes: that is its whole span
whenever ``max_gap_s`` (tracks end after that long without a face) is shorter than ``segment_s``, as by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


@dataclass
class Segment:
    track_id: int
    segment: int  # window index k: start_s = k * stride_s
    start_s: float
    end_s: float  # min(start_s + segment_s, duration_s)
    frame_index: np.ndarray  # int64[T] (T = frames_per_clip), missing slots filled from their nearest present slot
    time_s: np.ndarray  # float64[T] PTS of those frames
    kps5: np.ndarray  # float32[T,10] 5 (x, y) points, source px
    bbox: np.ndarray  # float32[T,4] x1, y1, x2, y2, source px
    n_face_frames: int  # slots whose frame really holds the face (before filling)
    view: int = 0  # test-time view of the window (0, or 0 and 1 with views=2)

    @property
    def bbox_mean(self) -> np.ndarray:
        """float32[4]: mean face box over the T slots (filled slots included)."""
        return self.bbox.mean(0).astype(np.float32)


def _columns(faces) -> dict:
    """FACES_SCHEMA rows (pa.Table or pandas DataFrame) -> numpy columns."""
    if isinstance(faces, pa.Table):
        n = faces.num_rows

        def col(name):
            return faces.column(name).to_numpy()

        def fixed(name, k):  # fixed_size_list column -> [n,k]
            return faces.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, k)
    else:
        n = len(faces)

        def col(name):
            return faces[name].to_numpy()

        def fixed(name, k):  # column of per-row arrays -> [n,k]
            return np.asarray(list(faces[name]), np.float32).reshape(n, k)

    return {
        "frame_index": np.asarray(col("frame_index"), np.int64).reshape(n),
        "time_s": np.asarray(col("time_s"), np.float64).reshape(n),
        "track_id": np.asarray(col("track_id"), np.int64).reshape(n),
        "kps5": np.asarray(fixed("kps5", 10), np.float32),
        "bbox": np.asarray(fixed("bbox", 4), np.float32),
    }


def _sampled_frames(c: dict, sampled) -> tuple[np.ndarray, np.ndarray]:
    """Distinct sampled frames, sorted by time: (frame_index int64[m], time_s float64[m])."""
    fi, ts = c["frame_index"], c["time_s"]
    if sampled is not None:
        fi = np.concatenate([fi, np.asarray(sampled[0], np.int64).reshape(-1)])
        ts = np.concatenate([ts, np.asarray(sampled[1], np.float64).reshape(-1)])
    fi, first = np.unique(fi, return_index=True)
    ts = ts[first]
    order = np.lexsort((fi, ts))
    return fi[order], ts[order]


def _nearest(times: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``times`` [m] for each t [n] (ties: the earlier one)."""
    hi = np.clip(np.searchsorted(times, t), 1, len(times) - 1) if len(times) > 1 else np.zeros(len(t), np.int64)
    lo = np.maximum(hi - 1, 0)
    return np.where(np.abs(t - times[lo]) <= np.abs(times[hi] - t), lo, hi)


def window_segments(c: dict, s_fi: np.ndarray, s_ts: np.ndarray, tol: float, rows: np.ndarray, k: int,
                    start: float, duration_s: float, segment_s: float, min_face_frames: int, frames_per_clip: int,
                    views: int) -> list[tuple[Segment, np.ndarray]]:
    """One track's segments (and, per slot, the face row of ``c`` it uses) in window k; see the module docstring.
    c: numpy columns (``_columns``); s_fi/s_ts: the sampled frames by time; rows: the track's rows of c."""
    rows = rows[np.lexsort((rows, c["frame_index"][rows]))]  # by frame, then row order
    t_fi = c["frame_index"][rows]  # [r] sorted
    inside = s_ts[(s_ts >= start - 1e-9) & (s_ts < start + segment_s - 1e-9)]  # the window's sampled times
    if views == 2 and len(inside) > frames_per_clip:
        view_targets = [inside[:frames_per_clip], inside[-frames_per_clip:]]  # first and last T frames
    else:
        view_targets = [start + (np.arange(frames_per_clip) + 0.5) * segment_s / frames_per_clip]  # [T] spread
    out = []
    for v, targets in enumerate(view_targets):
        near = _nearest(s_ts, targets)  # [T] into the sampled frames
        fi = s_fi[near]
        pos = np.clip(np.searchsorted(t_fi, fi), 0, len(t_fi) - 1)
        present = (np.abs(s_ts[near] - targets) <= tol) & (t_fi[pos] == fi)  # [T]
        n_face = int(present.sum())
        if n_face < min_face_frames or n_face == 0:
            continue
        have = np.flatnonzero(present)  # ascending
        src = have[np.abs(np.arange(frames_per_clip)[:, None] - have[None, :]).argmin(1)]  # [T] slot to copy
        r = rows[pos[src]]  # [T] face rows
        out.append((Segment(
            track_id=int(c["track_id"][r[0]]), segment=int(k), start_s=start,
            end_s=float(min(start + segment_s, duration_s)), frame_index=c["frame_index"][r].copy(),
            time_s=c["time_s"][r].copy(), kps5=c["kps5"][r].copy(), bbox=c["bbox"][r].copy(), n_face_frames=n_face,
            view=v), r))
    return out


def _tolerance(step: float) -> float:
    return step * (1 + 1e-6) + 1e-9


def n_windows(duration_s: float, stride_s: float) -> int:
    """Windows k with k * stride_s < duration_s."""
    return max(int(np.ceil(duration_s / stride_s - 1e-9)), 0)


def _check(segment_s: float, stride_s: float, frames_per_clip: int, views: int) -> None:
    if segment_s <= 0 or stride_s <= 0 or frames_per_clip < 1:
        raise ValueError("segment_s, stride_s and frames_per_clip must be positive")
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, not {views}")


@dataclass
class OnlineWindows:
    """``plan_segments`` while decoding: ``add`` each sampled frame's faces in time order, ``finish`` at the end.
    Each returns the segments of the windows that closed, with each slot's payload. Windows: those whose start
    lies in [own_start_s, own_end_s) (a time shard's own windows; default all). Holds only the face rows that an
    open window can still use (about segment_s + one sampling interval of them)."""

    step_s: float
    duration_s: float | None
    segment_s: float = 2.0
    stride_s: float = 1.0
    min_face_frames: int = 8
    views: int = 1
    frames_per_clip: int = 16
    own_start_s: float = 0.0
    own_end_s: float = float("inf")
    _rows: list = field(default_factory=list)  # (frame_index, time_s, track_id, kps5, bbox, payload) per face row
    _span: dict = field(default_factory=dict)  # track -> [first, last] face time
    _next_k: int = -1

    def __post_init__(self):
        _check(self.segment_s, self.stride_s, self.frames_per_clip, self.views)
        self.tol = _tolerance(self.step_s)
        self._next_k = int(np.ceil(self.own_start_s / self.stride_s - 1e-9))

    def add(self, time_s: float, frame_index: int, track_id, kps5, bbox, payloads) -> list[tuple[Segment, list]]:
        """One sampled frame (with or without faces): its faces' track ids [k], kps5 [k,10], bbox [k,4] and
        payloads [k]. Returns the (segment, slot payloads [T]) of every window this frame closes."""
        closed = self._close(lambda start: start + self.segment_s + self.tol < time_s)
        for j, tid in enumerate(np.asarray(track_id).tolist()):
            self._rows.append((frame_index, time_s, tid, kps5[j], bbox[j], payloads[j]))
            span = self._span.setdefault(tid, [time_s, time_s])
            span[1] = time_s
        return closed

    def finish(self) -> list[tuple[Segment, list]]:
        """The end of the stream: every window left."""
        if self.duration_s is None:  # unknown: the last face seen plus one sampling interval
            self.duration_s = max((r[1] for r in self._rows), default=self.own_start_s - self.step_s) + self.step_s
        return self._close(lambda start: True)

    def _window_start(self, k: int) -> float:
        return float(k * self.stride_s)

    def _close(self, ready) -> list[tuple[Segment, list]]:
        out = []
        while True:
            k, start = self._next_k, self._window_start(self._next_k)
            last_k = n_windows(self.duration_s, self.stride_s) if self.duration_s is not None else None
            if start >= self.own_end_s - 1e-9 or (last_k is not None and k >= last_k) or not ready(start):
                break
            out += self._segments(k, start)
            self._next_k += 1
        keep = self._window_start(self._next_k) - self.tol - 1e-9  # what the next window can still use
        self._rows = [r for r in self._rows if r[1] >= keep]
        return out

    def _segments(self, k: int, start: float) -> list[tuple[Segment, list]]:
        if not self._rows:
            return []
        c = {"frame_index": np.array([r[0] for r in self._rows], np.int64),
             "time_s": np.array([r[1] for r in self._rows], np.float64),
             "track_id": np.array([r[2] for r in self._rows], np.int64),
             "kps5": np.array([r[3] for r in self._rows], np.float32).reshape(-1, 10),
             "bbox": np.array([r[4] for r in self._rows], np.float32).reshape(-1, 4)}
        s_fi, s_ts = _sampled_frames(c, None)
        duration = self.duration_s if self.duration_s is not None else float("inf")
        out = []
        for tid in np.unique(c["track_id"]).tolist():
            t0, t1 = self._span[tid]
            if not (start <= t1 and start + self.segment_s > t0):
                continue
            rows = np.flatnonzero(c["track_id"] == tid)
            for seg, r in window_segments(c, s_fi, s_ts, self.tol, rows, k, start, duration, self.segment_s,
                                          self.min_face_frames, self.frames_per_clip, self.views):
                out.append((seg, [self._rows[i][5] for i in r.tolist()]))
        return out
