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
is (the nose between the eyes); faces whose eyes are under ``MIN_EYE_PX`` apart give no chip, nor do blurred ones
(``sharpness``, the variance of the chip's Laplacian, under ``MIN_SHARPNESS``: measured on the fixtures' chips,
sharp stills 230-690 and compressed video 54-450; blurred by a Gaussian of sigma 2 px, a 48 px-eyed face falls to
9-15, and by sigma 4 px any face to 4-15). A track with no chip has no descriptor and stays a person of its own.
"""
from __future__ import annotations

import cv2
import numpy as np

from .align import align_face

CHIP = 150  # the recognition net's input side
MARGIN = 0.0  # the bare ArcFace template (see the module docstring)
PER_TRACK = 8
BUCKET_S = 1.0
MIN_EYE_PX = 12.0
MIN_SHARPNESS = 25.0


def sharpness(chip: np.ndarray) -> float:
    """The variance of an RGB chip's grey Laplacian: low when the face is blurred."""
    return float(cv2.Laplacian(cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


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
    """Collects the chips of a unit's tracks as its frames go by (``offer``); ``chips()`` gives them at the end.
    At most ``per_track`` chips per track are held at any time (the best buckets so far), each aligned only when
    it is kept."""

    def __init__(self, per_track: int = PER_TRACK, bucket_s: float = BUCKET_S):
        self.per_track, self.bucket_s = per_track, bucket_s
        self.kept: dict[int, dict[int, tuple[float, np.ndarray]]] = {}  # track -> {bucket: (quality, chip)}

    def offer(self, track: int, t: float, score: float, kps5, frame: np.ndarray) -> None:
        """One face of ``track`` at time ``t`` (its frame still held): kept if it is its bucket's best so far, among
        the track's ``per_track`` best buckets, and sharp enough."""
        q = quality(score, kps5)
        kept = self.kept.setdefault(int(track), {})
        bucket = int(t // self.bucket_s)
        if q <= 0 or (bucket in kept and q <= kept[bucket][0]):
            return
        worst = None
        if bucket not in kept and len(kept) >= self.per_track:
            worst = min(kept, key=lambda b: (kept[b][0], -b))
            if q <= kept[worst][0]:
                return
        chip = align_face(frame, kps5, CHIP, MARGIN)
        if sharpness(chip) < MIN_SHARPNESS:  # too blurred to tell who it is
            return
        if worst is not None:
            del kept[worst]
        kept[bucket] = (q, chip)

    def chips(self) -> tuple[np.ndarray, np.ndarray]:
        """(track [n], uint8 chips [n, 150, 150, 3]): each track's kept chips, best first, tracks in id order."""
        tracks, chips = [], []
        for track in sorted(self.kept):
            for _, chip in sorted(self.kept[track].values(), key=lambda k: -k[0]):
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


def join_descriptors(parts: list[dict], maps: list[dict[int, int]] | None) -> dict[int, tuple[int, np.ndarray]]:
    """A video's units' ``track_descriptors`` (shard order) and their {unit track: video track} maps (None: the ids
    are the video's) -> {video track: (chips, mean descriptor)}: a track's shards averaged, weighted by their chips."""
    sums: dict[int, tuple[int, np.ndarray]] = {}
    for i, part in enumerate(parts):
        for track, (n, mean) in part.items():
            vt = track if maps is None else maps[i].get(track)
            if vt is None:
                continue
            m, total = sums.get(vt, (0, 0.0))
            sums[vt] = (m + n, total + n * np.asarray(mean, np.float64))
    return {t: (n, (total / n).astype(np.float32)) for t, (n, total) in sums.items()}
