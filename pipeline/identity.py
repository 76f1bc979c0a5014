"""Face descriptors of a unit's tracks, for grouping tracks into persons (``pipeline.persons``): a few of each
track's best faces, aligned (5-point similarity to the bare ArcFace template, 150 px), through face-api's
recognition net (``s2d_model.faceapi``), averaged per track. Pure (numpy, cv2) but for the net it is given.

Why the bare template: on the fixtures (``single_face.mp4``'s frames averaged, against the stills), the same man's
video and still lay 0.278 apart and the nearest other person 0.417 (other people pairwise >= 0.413); with the
template grown by 25 % (our S2D crop) another person came closer than his own still (0.272 against 0.329), and
detector-box crops spread everyone (0.46 own, 0.46 between others).

Which faces (``TrackChips``): at most one per track per ``bucket_s`` of its time (its best there), and of those the
``per_track`` best, so the cost is bounded per track and per second of track. A face's quality is its detector
score times its eye distance (px, capped at 60: larger is not better once the chip is sharp) times how frontal it
is (the nose between the eyes); faces whose eyes are under ``min_eye_px`` apart give no chip: a track with none has
no descriptor and stays a person of its own.
"""
from __future__ import annotations

import numpy as np

from .align import align_face

CHIP = 150  # the recognition net's input side
MARGIN = 0.0  # the bare ArcFace template (see the module docstring)
PER_TRACK = 8
BUCKET_S = 1.0
MIN_EYE_PX = 12.0


def quality(score: float, kps5) -> float:
    """A face's worth as a chip: score x eye distance (capped) x frontalness; 0 when the eyes are too close."""
    k = np.asarray(kps5, np.float64).reshape(5, 2)
    eyes = np.linalg.norm(k[1] - k[0])
    if eyes < MIN_EYE_PX:
        return 0.0
    mid = (k[0] + k[1]) / 2
    frontal = max(0.0, 1.0 - abs(k[2, 0] - mid[0]) / eyes)  # the nose's sideways offset, in eye distances
    return float(score * min(eyes, 60.0) * frontal)


class TrackChips:
    """Collects the chips of a unit's tracks as its frames go by (``offer``); ``chips()`` gives them at the end."""

    def __init__(self, per_track: int = PER_TRACK, bucket_s: float = BUCKET_S):
        self.per_track, self.bucket_s = per_track, bucket_s
        self.best: dict[tuple[int, int], tuple[float, np.ndarray]] = {}  # (track, bucket) -> (quality, chip)

    def offer(self, track: int, t: float, score: float, kps5, frame: np.ndarray) -> None:
        """One face of ``track`` at time ``t`` (its frame still held): kept if it is its bucket's best so far."""
        q = quality(score, kps5)
        key = (int(track), int(t // self.bucket_s))
        if q > 0 and (key not in self.best or q > self.best[key][0]):
            self.best[key] = (q, align_face(frame, kps5, CHIP, MARGIN))

    def chips(self) -> tuple[np.ndarray, np.ndarray]:
        """(track [n], uint8 chips [n, 150, 150, 3]): each track's ``per_track`` best buckets' faces."""
        by_track: dict[int, list[tuple[float, np.ndarray]]] = {}
        for (track, _), kept in sorted(self.best.items()):
            by_track.setdefault(track, []).append(kept)
        tracks, chips = [], []
        for track, kept in by_track.items():
            for _, chip in sorted(kept, key=lambda k: -k[0])[: self.per_track]:
                tracks.append(track)
                chips.append(chip)
        if not chips:
            return np.zeros(0, np.int32), np.zeros((0, CHIP, CHIP, 3), np.uint8)
        return np.array(tracks, np.int32), np.stack(chips)


def track_descriptors(tracks: np.ndarray, descriptors: np.ndarray) -> dict[int, tuple[int, np.ndarray]]:
    """Per-chip descriptors [n, D] of ``tracks`` [n] -> {track: (chips, mean descriptor [D])}."""
    out = {}
    for t in np.unique(tracks).tolist():
        d = descriptors[tracks == t]
        out[int(t)] = (len(d), d.mean(0).astype(np.float32))
    return out
