"""Persons within one video: its tracks grouped by their face descriptors (face-api's recognition net,
``s2d_model.faceapi``), so that one person who leaves the frame, or comes back after a cut, keeps one id. Pure
(numpy).

Rule (``group``): average-linkage agglomerative clustering of the tracks' mean descriptors by Euclidean distance;
the two closest groups merge while their distance (the mean over their tracks' pairs) is below ``threshold``, and
never when any of their tracks are seen in one frame (two faces at once are two people: ``apart``). A track without
a descriptor (its faces too small or too blurred) is a person of its own. Persons are numbered 0, 1, ... by first
appearance (their earliest track's first time, then its id).
"""
from __future__ import annotations

import numpy as np


def apart(frame_index, track_id) -> set[tuple[int, int]]:
    """The pairs of tracks (a < b) seen in one frame, from face rows (``frame_index`` [n], ``track_id`` [n])."""
    by_frame: dict[int, list[int]] = {}
    for f, t in zip(np.asarray(frame_index).tolist(), np.asarray(track_id).tolist()):
        by_frame.setdefault(f, []).append(t)
    pairs = set()
    for tracks in by_frame.values():
        tracks = sorted(set(tracks))
        pairs.update((a, b) for i, a in enumerate(tracks) for b in tracks[i + 1:])
    return pairs


def group(first_s: dict[int, float], descriptors: dict[int, np.ndarray], apart: set[tuple[int, int]],
          threshold: float) -> dict[int, int]:
    """{track: person} for the tracks of ``first_s`` ({track: its first time}); ``descriptors``: {track: [D]} of
    those that have one. See the module docstring."""
    tracks = sorted(descriptors)
    n = len(tracks)
    members = [[t] for t in tracks]
    if n > 1:
        x = np.stack([np.asarray(descriptors[t], np.float64) for t in tracks])  # [n,D]
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))  # [n,n] distance between groups
        index = {t: i for i, t in enumerate(tracks)}
        banned = np.eye(n, dtype=bool)  # [n,n]: never merged
        for a, b in apart:
            if a in index and b in index:
                banned[index[a], index[b]] = banned[index[b], index[a]] = True
        alive = np.ones(n, bool)
        while True:
            masked = np.where(banned | ~alive[:, None] | ~alive[None], np.inf, d)
            i, j = np.unravel_index(np.argmin(masked), masked.shape)
            if not masked[i, j] < threshold:
                break
            ni, nj = len(members[i]), len(members[j])
            d[i] = d[:, i] = (ni * d[i] + nj * d[j]) / (ni + nj)  # average linkage (Lance-Williams)
            banned[i] = banned[:, i] = banned[i] | banned[j]
            banned[i, i] = True
            members[i] += members[j]
            members[j], alive[j] = [], False
    groups = [m for m in members if m] + [[t] for t in first_s if t not in descriptors]
    groups.sort(key=lambda m: min((first_s[t], t) for t in m))
    return {t: p for p, m in enumerate(groups) for t in m}


def video_persons(frame_index, track_id, time_s, descriptors: dict[int, np.ndarray],
                  threshold: float | None) -> dict[int, int]:
    """A video's face rows (``frame_index``, ``track_id``, ``time_s`` [n]) and its tracks' descriptors -> {track:
    person}. ``threshold`` None (identities off): each track is a person of its own, numbered by first appearance."""
    first: dict[int, float] = {}
    for t, s in zip(np.asarray(track_id).tolist(), np.asarray(time_s).tolist()):
        first[t] = min(s, first.get(t, s))
    if threshold is None:
        return group(first, {}, set(), 0.0)
    return group(first, {t: d for t, d in descriptors.items() if t in first}, apart(frame_index, track_id), threshold)
