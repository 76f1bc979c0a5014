"""Face alignment for S2D clips: a similarity transform from the 5 detector key points to a fixed template.

The transform has rotation, uniform scale and translation only (no shear, no reflection); it is the least-squares
fit (Umeyama 1991) of the 5 points (left eye, right eye, nose, left and right mouth corner; image-left first)
to the template, and ``cv2.warpAffine`` (bilinear, black border) cuts the ``size`` x ``size`` crop.

Template: the standard ArcFace / InsightFace 112x112 five-point reference, scaled to ``size`` and shrunk about the
crop centre by ``1 / (1 + 2 * margin)`` - i.e. the ArcFace crop grown by ``margin`` x its side on every side. Its
eyes are (nearly) level, so the crop has the eyes levelled, like the MAFW training frames (MTCNN: largest face,
eyes levelled, 224x224) and the DFEW 224x224 face clips.

MARGIN = 0.25: the template spans 1 / 1.5 = 2/3 of the crop (eye distance 47 px at 224). Why: the bare ArcFace crop
(margin 0) is tight - it cuts the chin and the top of the forehead - while S2D was trained on MTCNN-style face crops
(DFEW clips, MAFW frames) that show the whole face, filling most of the crop, with a little context. With 0.25 the
whole face (detector box and 68 landmarks) lies inside the crop with some context on every side, and the face is
about as large as in the datasets' crops (tests/test_align.py pins this on the fixture stills).
"""
from __future__ import annotations

import cv2
import numpy as np

# ArcFace / InsightFace reference points in a 112x112 crop (x, y): left eye, right eye, nose, mouth corners.
ARCFACE_112 = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], np.float64)

MARGIN = 0.25  # the ArcFace crop grown by 25 % of its side on each side: template = 2/3 of the crop


def template(size: int = 224, margin: float = MARGIN) -> np.ndarray:
    """float32[5,2]: where the 5 key points go in a size x size crop."""
    c = size / 2.0
    pts = ARCFACE_112 * (size / 112.0)  # [5,2] in a size x size ArcFace crop
    return (c + (pts - c) / (1.0 + 2.0 * margin)).astype(np.float32)


def similarity_transform(src, dst) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src [n,2] onto dst [n,2] (Umeyama,
    reflections excluded) -> float64[2,3] matrix M with dst ~ M[:, :2] @ p + M[:, 2]."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"similarity_transform: need matching [n>=2,2] points, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("similarity_transform: points must be finite")
    mu_s, mu_d = src.mean(0), dst.mean(0)  # [2]
    s, d = src - mu_s, dst - mu_d  # [n,2]
    var_s = (s ** 2).sum(1).mean()
    if var_s <= 1e-12:
        raise ValueError("similarity_transform: source points coincide")
    cov = d.T @ s / len(src)  # [2,2]
    u, sig, vt = np.linalg.svd(cov)
    e = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # flip the last axis: no reflection
    r = u @ np.diag(e) @ vt  # [2,2] rotation
    scale = (sig * e).sum() / var_s
    m = np.empty((2, 3), np.float64)
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def align_face(frame: np.ndarray, kps5, size: int = 224, margin: float = MARGIN) -> np.ndarray:
    """uint8[H,W,3] frame, key points [10] or [5,2] (source px) -> aligned uint8[size,size,3] crop."""
    m = similarity_transform(np.asarray(kps5, np.float64).reshape(5, 2), template(size, margin))
    return cv2.warpAffine(np.ascontiguousarray(frame), m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
