"""Test oracles: whole-video forms of the pipeline's online rules, which only the tests run, to check the online
code against (and to state a rule on a hand-made table).

``assign_tracks``: ``pipeline.track.OnlineTracker`` over one video's face rows, frame by frame.
``plan_segments``: ``pipeline.segments``' window rule over one video's whole faces table.
``align_clip``: a segment's 16 faces aligned from decoded frames (``pipeline.align.align_face`` per slot).
"""
from __future__ import annotations

import numpy as np

from pipeline.align import MARGIN, align_face
from pipeline.segments import Segment, _check, _columns, _sampled_frames, _tolerance, n_windows, window_segments
from pipeline.track import OnlineTracker


def assign_tracks(frame_index: np.ndarray, time_s: np.ndarray, bbox: np.ndarray,
                  landmarks68: np.ndarray | None = None, max_gap_s: float = 1.0, step_s: float | None = None,
                  **options) -> np.ndarray:
    """Track id (int32[n]) per face row of one video: ``OnlineTracker`` over its frames in order.

    frame_index int64[n], time_s float64[n] (PTS of the row's frame), bbox float[n,4] x1,y1,x2,y2,
    landmarks68 float[n,68,2] or None. step_s: default the median interval between frames with faces.
    """
    frame_index = np.asarray(frame_index, np.int64).reshape(-1)
    n = len(frame_index)
    time_s = np.asarray(time_s, np.float64).reshape(n)
    bbox = np.asarray(bbox, np.float64).reshape(n, 4)
    lms = None if landmarks68 is None else np.asarray(landmarks68, np.float64).reshape(n, 68, 2)
    out = np.full(n, -1, np.int32)
    if n == 0:
        return out
    order = np.lexsort((np.arange(n), frame_index))  # frame, then row
    frames, starts = np.unique(frame_index[order], return_index=True)
    bounds = list(starts) + [n]
    ftimes = time_s[order][starts]  # [F] time of each frame
    steps_dt = np.diff(ftimes)
    steps_dt = steps_dt[steps_dt > 0]
    dt_med = float(step_s) if step_s else float(np.median(steps_dt)) if len(steps_dt) else 1.0
    tracker = OnlineTracker(dt_med, max_gap_s, **options)
    for f in range(len(frames)):
        rows = order[bounds[f]:bounds[f + 1]]
        out[rows] = tracker.update(ftimes[f], bbox[rows], None if lms is None else lms[rows])
    return out


def plan_segments(faces, duration_s: float | None, segment_s: float = 2.0, stride_s: float = 1.0,
                  min_face_frames: int = 8, frames_per_clip: int = 16, sampled=None, views: int = 1,
                  step_s: float | None = None) -> list[Segment]:
    """Segments (clips) of every track of ONE video; see the module docstring for the rule.

    faces: FACES_SCHEMA rows of one video (pa.Table or pandas DataFrame). duration_s: the video's duration (None:
    last sampled time + one sampling interval). sampled: optional (frame_index int64[m], time_s float64[m]) of all
    sampled frames of the video, faces or not. views: 1, or 2 for the first/last test-time views. step_s: the
    sampling interval (default: the median gap between sampled frames).
    """
    _check(segment_s, stride_s, frames_per_clip, views)
    c = _columns(faces)
    if len(c["frame_index"]) == 0:
        return []
    s_fi, s_ts = _sampled_frames(c, sampled)  # [m], [m]
    step = step_s or (float(np.median(np.diff(s_ts))) if len(s_ts) > 1 else segment_s / frames_per_clip)
    if duration_s is None:
        duration_s = float(s_ts[-1]) + step
    starts = np.arange(n_windows(duration_s, stride_s)) * stride_s  # [K]
    out: list[Segment] = []
    for tid in np.unique(c["track_id"]):
        rows = np.flatnonzero(c["track_id"] == tid)
        t0, t1 = c["time_s"][rows].min(), c["time_s"][rows].max()
        for k in np.flatnonzero((starts <= t1) & (starts + segment_s > t0)):
            out += [s for s, _ in window_segments(c, s_fi, s_ts, _tolerance(step), rows, int(k), float(starts[k]),
                                                  duration_s, segment_s, min_face_frames, frames_per_clip, views)]
    return out


def align_clip(frames: dict, frame_index, kps5, size: int = 224, margin: float = MARGIN) -> np.ndarray:
    """frames {frame_index: uint8[H,W,3]}, frame_index int64[T], kps5 [T,10] -> uint8[T,size,size,3].
    Repeated (frame, key points) slots - filled gaps of a segment - are warped once."""
    frame_index = np.asarray(frame_index, np.int64).reshape(-1)
    kps5 = np.asarray(kps5, np.float64).reshape(len(frame_index), 10)
    out = np.empty((len(frame_index), size, size, 3), np.uint8)
    done: dict = {}  # (frame_index, key point bytes) -> slot already computed
    for j, (fi, k) in enumerate(zip(frame_index.tolist(), kps5)):
        key = (fi, k.tobytes())
        if key in done:
            out[j] = out[done[key]]
            continue
        if fi not in frames:
            raise KeyError(f"align_clip: frame {fi} is not among the decoded frames")
        out[j] = align_face(frames[fi], k, size, margin)
        done[key] = j
    return out
