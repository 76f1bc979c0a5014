"""Segments per face track: which sampled frames make each 16-frame S2D clip. numpy only.

Rule (``plan_segments``):
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
"""
from __future__ import annotations

from dataclasses import dataclass

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


def plan_segments(faces, duration_s: float | None, segment_s: float = 2.0, stride_s: float = 1.0,
                  min_face_frames: int = 8, frames_per_clip: int = 16, sampled=None, views: int = 1) -> list[Segment]:
    """Segments (clips) of every track of ONE video; see the module docstring for the rule.

    faces: FACES_SCHEMA rows of one video (pa.Table or pandas DataFrame). duration_s: the video's duration (None:
    last sampled time + one sampling interval). sampled: optional (frame_index int64[m], time_s float64[m]) of all
    sampled frames of the video, faces or not. views: 1, or 2 for the first/last test-time views.
    """
    if segment_s <= 0 or stride_s <= 0 or frames_per_clip < 1:
        raise ValueError("segment_s, stride_s and frames_per_clip must be positive")
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, not {views}")
    c = _columns(faces)
    if len(c["frame_index"]) == 0:
        return []
    s_fi, s_ts = _sampled_frames(c, sampled)  # [m], [m]
    step = float(np.median(np.diff(s_ts))) if len(s_ts) > 1 else segment_s / frames_per_clip
    tol = step * (1 + 1e-6) + 1e-9
    if duration_s is None:
        duration_s = float(s_ts[-1]) + step
    n_windows = int(np.ceil(duration_s / stride_s - 1e-9))  # k * stride_s < duration_s
    starts = np.arange(max(n_windows, 0)) * stride_s  # [K]
    offsets = (np.arange(frames_per_clip) + 0.5) * segment_s / frames_per_clip  # [T]

    out: list[Segment] = []
    for tid in np.unique(c["track_id"]):
        rows = np.flatnonzero(c["track_id"] == tid)
        rows = rows[np.lexsort((rows, c["frame_index"][rows]))]  # by frame, then row order
        t_fi = c["frame_index"][rows]  # [r] sorted
        t0, t1 = c["time_s"][rows].min(), c["time_s"][rows].max()
        for k in np.flatnonzero((starts <= t1) & (starts + segment_s > t0)):
            start = float(starts[k])
            inside = s_ts[(s_ts >= start - 1e-9) & (s_ts < start + segment_s - 1e-9)]  # the window's sampled times
            if views == 2 and len(inside) > frames_per_clip:
                view_targets = [inside[:frames_per_clip], inside[-frames_per_clip:]]  # first and last T frames
            else:
                view_targets = [start + offsets]  # [T] spread over the window
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
                out.append(Segment(
                    track_id=int(tid), segment=int(k), start_s=start, end_s=float(min(start + segment_s, duration_s)),
                    frame_index=c["frame_index"][r].copy(), time_s=c["time_s"][r].copy(),
                    kps5=c["kps5"][r].copy(), bbox=c["bbox"][r].copy(), n_face_frames=n_face, view=v,
                ))
    return out
