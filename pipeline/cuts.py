"""Hard cuts between a unit's sampled frames, so that no face track runs across one (two people framed alike in
two shots are two tracks; one person's tracks are joined again as one person by ``pipeline.persons``). Pure (numpy,
cv2).

A frame's signature is its 64x36 thumbnail, in HSV and in grey. Two sampled frames are a cut apart when the mean
absolute difference of their HSV thumbnails (hue taken round its circle; the mean of the three channels, as
PySceneDetect's content detector) or of their grey ones is over ``THRESHOLD``. Measured at 8 sampled frames per
second: the fixtures' real footage moves by at most 18 (face_noface.mov's animated title), the cuts of the
synthesised edits (``tests/edits.py``) by 29 to 148 (HSV: 29 between two grey-backed shots, grey: 46 there).
A false cut costs a track split in two (persons joins them again); a missed one, a track of two people.
"""
from __future__ import annotations

import cv2
import numpy as np

THRESHOLD = 25.0
SIZE = (64, 36)  # thumbnail width, height


def signature(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB frame [H,W,3] -> (HSV [36,64,3], grey [36,64]) float32 thumbnails."""
    small = cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA)
    return (cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.float32),
            cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32))


def difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """The larger of the two signatures' mean absolute differences (HSV, hue round its circle of 180; grey)."""
    d = np.abs(a[0] - b[0])
    d[..., 0] = np.minimum(d[..., 0], 180 - d[..., 0])
    return max(float(d.mean()), float(np.abs(a[1] - b[1]).mean()))


class CutDetector:
    """``detector(frame)`` -> True when a cut lies between the previous frame it was given and this one."""

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold, self.previous = threshold, None

    def __call__(self, frame: np.ndarray) -> bool:
        now, before = signature(frame), self.previous
        self.previous = now
        return before is not None and difference(before, now) > self.threshold
