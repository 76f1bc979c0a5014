"""The face crop a model was trained on: its geometry, its size and the frame order of its clips. Pure (numpy, cv2).

A crop spec is written ``GEOMETRY[:S][@SIZE]`` (``--crop``):
- ``template:M@224``: 5-point similarity to the ArcFace template, grown by M x its side on every side
  (``align.py``); eyes level. ``template:0`` is the bare ArcFace crop (eye distance 70 px at 224).
- ``box:S@112``: the detector box squared on its long side and scaled by S about its centre; no rotation.
- ``mtcnn@224``: the authors' MAFW crop: the RetinaFace box shrunk to MTCNN's (0.7 x wide, 0.85 x high, as
  measured on the fixtures), rotated about its centre so the eyes are level, cut as it is and squashed to
  SIZE x SIZE (aspect not kept).
A frame order is ``time`` or ``lexicographic``: a clip folder ``1.jpg .. 16.jpg`` read in name order
(1, 10-16, 2-9), as the authors' reader does (``S2D_REFERENCE.md``, section 7).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from .align import MARGIN, similarity_transform, template

GEOMETRIES = ("template", "box", "mtcnn")
DEFAULT_S = {"template": 0.25, "box": 1.0, "mtcnn": 1.0}
MTCNN_SHRINK = (0.7, 0.85)  # RetinaFace box -> MTCNN box, width and height (S2D_REFERENCE.md, section 7)
FRAME_ORDERS = ("time", "lexicographic")
SYNTAX = "template[:MARGIN][@SIZE], box[:SCALE][@SIZE] or mtcnn[@SIZE] (e.g. template:0@224, box:1.15@112)"


@dataclass(frozen=True)
class Crop:
    geometry: str = "template"
    s: float = 0.25  # template: margin; box: scale; mtcnn: always 1
    size: int = 224

    def __str__(self) -> str:
        s = "" if self.geometry == "mtcnn" else f":{self.s:g}"
        return f"{self.geometry}{s}@{self.size}"

    def matrix(self, bbox, kps5) -> np.ndarray:
        """float64[2,3]: source px -> crop px, for one face (bbox [4] x1 y1 x2 y2, kps5 [10] or [5,2])."""
        kps = np.asarray(kps5, np.float64).reshape(5, 2)
        if self.geometry == "template":
            return similarity_transform(kps, template(self.size, self.s))
        x1, y1, x2, y2 = np.asarray(bbox, np.float64).reshape(4)
        c = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        if self.geometry == "box":
            a = np.eye(2) * self.size / (self.s * max(x2 - x1, y2 - y1, 1e-6))
        else:  # mtcnn: level the eyes about the box centre, then squash the shrunk box to the square
            dx, dy = kps[1] - kps[0]
            angle = np.arctan2(dy, dx)
            rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
            w, h = max(x2 - x1, 1e-6) * MTCNN_SHRINK[0], max(y2 - y1, 1e-6) * MTCNN_SHRINK[1]
            a = np.diag([self.size / w, self.size / h]) @ rot
        m = np.empty((2, 3))
        m[:, :2] = a
        m[:, 2] = self.size / 2 - a @ c
        return m

    def cut(self, frame: np.ndarray, bbox, kps5) -> np.ndarray:
        """uint8[H,W,3] frame -> uint8[size,size,3]: this crop of one face (bilinear, black outside the frame)."""
        return cv2.warpAffine(np.ascontiguousarray(frame), self.matrix(bbox, kps5), (self.size, self.size),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


OUR_CROP = Crop("template", MARGIN, 224)  # what `s2d prepare` cuts by default, random-tiny and report thumbnails get


def parse_crop(text: str | Crop) -> Crop:
    """``GEOMETRY[:S][@SIZE]`` -> Crop; ValueError in one line naming the value otherwise."""
    if isinstance(text, Crop):
        return text
    m = re.fullmatch(r"\s*([a-z]+)(?::([0-9.]+))?(?:@([0-9]+))?\s*", str(text))
    try:
        if m is None or m.group(1) not in GEOMETRIES or (m.group(1) == "mtcnn" and m.group(2)):
            raise ValueError
        geometry = m.group(1)
        s = float(m.group(2)) if m.group(2) else DEFAULT_S[geometry]
        size = int(m.group(3)) if m.group(3) else 224
        if not (np.isfinite(s) and (s >= 0 if geometry == "template" else s > 0) and 16 <= size <= 1024):
            raise ValueError
    except ValueError:
        raise ValueError(f"unknown crop '{text}': use {SYNTAX}") from None
    return Crop(geometry, s, size)


def check_order(order: str) -> str:
    if order not in FRAME_ORDERS:
        raise ValueError(f"unknown frame order '{order}': choose one of {', '.join(FRAME_ORDERS)}")
    return order


def frame_permutation(order: str, n: int = 16) -> np.ndarray:
    """int64[n]: the slots of a time-ordered clip in ``order`` (lexicographic: frames named 1..n sorted by name)."""
    check_order(order)
    if order == "time":
        return np.arange(n)
    return np.array(sorted(range(n), key=lambda i: str(i + 1)), np.int64)
