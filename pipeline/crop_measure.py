"""Measure the face crop geometry of a data set's pre-cut face frames (``s2d crops measure``), so our chain can
cut the same crop from raw video.

Our RetinaFace is run on a sample of the crops (each padded with black, as a face that fills the whole image is
detected less well and its box would be clipped to the image); its 5 key points and box, in units of the crop side,
tell the geometry (``crops.py``): aligned crops (``template``, ``mtcnn``) have the eyes level, ``template`` crops
also have them at nearly the same place and size in every crop, ``mtcnn`` crops are squashed vertically (the
eye-mouth distance is small against the eye distance), ``box`` crops have neither. Non-square files are measured
as the model sees them: resized to a square without keeping the aspect (x over the width, y over the height).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .align import ARCFACE_112, similarity_transform
from .crops import Crop
from .images import IMAGE_EXTENSIONS, read_image

PAD = 0.25  # black border on every side, x the file's long side, before detecting
# Thresholds, set on the fixture faces re-detected in crops of known geometry (tests/test_crop_measure.py). The
# detector's key points on a crop differ from those it found on the source frame by a few degrees of roll, so
# even template and mtcnn crops measure a roll spread (p90 - p10) of 6-10 deg; box crops keep the faces' own roll.
LEVEL_DEG = 12.0  # levelled: roll p90 - p10 under this, its median within a third of it of 0
FIXED = 0.05  # template crops: face_centre_x and _y p90 - p10 under this (fixtures: <= 0.035; box, mtcnn >= 0.06)
CENTRED = 0.04  # template crops: face_centre_x and _y medians within this of 0.5 (box crops: y ~0.59)
SQUASHED = 0.85  # eye-mouth / eye distance median under this: squashed vertically (fixtures: mtcnn 0.76,
#                  unsquashed 0.90-0.94; a neutral face ~1.1-1.2, a smile ~0.8-0.95; ArcFace template 1.15)
BOX_OVER_ARCFACE = 0.94  # RetinaFace box long side / bare ArcFace crop side of the same face, on raw frames at
#                         long side 640 (the 29 fixture faces of the tests: median 0.94, p10-p90 0.88-1.01)
LARGE = 1.05  # mtcnn: the detector box reaches past the crop (MTCNN's box is ~0.85x RetinaFace's high: ~1.2)
QUANTITIES = ("eye_distance", "eye_mid_x", "eye_mid_y", "mouth_mid_y", "roll_deg", "aspect", "box_w", "box_h",
              "eye_mouth_over_eye_distance", "template_margin", "face_centre_x", "face_centre_y")
TEMPLATE_UNIT = ARCFACE_112 / 112.0  # the bare ArcFace template in a 1 x 1 crop


@dataclass
class CropMeasurement:
    n_files: int  # files read
    n_faces: int  # files where a face was found (of several, the one nearest the crop centre)
    stats: dict  # quantity -> {"median", "p10", "p90"}; crop sides unless the name says (deg, ratios)
    crop: Crop  # the spec that reproduces these crops best (size: the crops' median long side)
    reason: str  # one line: why this geometry

    def table(self) -> str:
        """Plain text: the stats, one quantity a line, and the suggested ``--crop``."""
        lines = [f"{self.n_faces} faces in {self.n_files} files",
                 f"{'quantity':<30}{'p10':>9}{'median':>9}{'p90':>9}"]
        for name, s in self.stats.items():
            lines.append(f"{name:<30}{s['p10']:>9.3f}{s['median']:>9.3f}{s['p90']:>9.3f}")
        lines += [f"--crop {self.crop}", f"why: {self.reason}"]
        return "\n".join(lines)


def list_images(paths) -> list[Path]:
    """Image files named or found (recursively) in folders, sorted, each once; ValueError for a missing path."""
    found = set()
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"{p}: no such file or folder")
        if p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.add(p)
    return sorted(found)


def spread_sample(files: list, sample: int, seed: int = 0) -> list:
    """At most ``sample`` files spread over the list: one at a seeded random place in each of ``sample`` equal
    stretches (a data set's files are sorted by clip: a plain head would measure a few clips only)."""
    if len(files) <= sample:
        return list(files)
    edges = np.linspace(0, len(files), sample + 1).astype(int)
    rng = np.random.default_rng(seed)
    return [files[int(rng.integers(lo, hi))] for lo, hi in itertools.pairwise(edges)]


def face_quantities(bbox, kps5, width: int, height: int) -> dict:
    """One face's quantities in units of the crop (x / width, y / height: the file resized to a square)."""
    unit = np.array([width, height], np.float64)
    k = np.asarray(kps5, np.float64).reshape(5, 2) / unit  # [5,2]
    b = np.asarray(bbox, np.float64).reshape(2, 2) / unit  # [[x1,y1],[x2,y2]]
    eye = k[1] - k[0]
    d = float(np.hypot(*eye))
    eye_mid, mouth_mid = (k[0] + k[1]) / 2, (k[3] + k[4]) / 2
    to_mouth = mouth_mid - eye_mid
    down = (eye[0] * to_mouth[1] - eye[1] * to_mouth[0]) / d  # eye-mid to mouth-mid across the eye line (not roll)
    # The template margin whose 5-point crop this is: the similarity taking these points onto the bare template
    # scales by 1 + 2 * margin (align.template); all 5 points, as the crop was cut from them.
    m = similarity_transform(k, TEMPLATE_UNIT)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    centre = m[:, :2] @ [0.5, 0.5] + m[:, 2]  # the crop centre in the face's bare-template frame: 0.5 in template crops
    return {"eye_distance": d, "eye_mid_x": eye_mid[0], "eye_mid_y": eye_mid[1], "mouth_mid_y": mouth_mid[1],
            "roll_deg": float(np.degrees(np.arctan2(eye[1], eye[0]))), "aspect": width / height,
            "box_w": b[1, 0] - b[0, 0], "box_h": b[1, 1] - b[0, 1], "eye_mouth_over_eye_distance": down / d,
            "template_margin": (scale - 1) / 2, "face_centre_x": centre[0], "face_centre_y": centre[1]}


def detect_faces(files: list[Path], detector) -> tuple[int, list[dict], list[tuple[int, int]]]:
    """(files read, each found face's quantities, each read file's (width, height)). Each file is padded with
    black by PAD x its long side, detected, and its central face mapped back to the file's pixels."""
    from .decode import DecodeError

    faces, sizes = [], []
    for f in files:
        try:
            img = read_image(f)
        except DecodeError:
            continue  # an unreadable file is not counted as read
        h, w = img.shape[:2]
        sizes.append((w, h))
        p = round(PAD * max(h, w))
        padded = np.zeros((h + 2 * p, w + 2 * p, 3), np.uint8)
        padded[p:p + h, p:p + w] = img
        det = detector(padded[None])[0]
        if len(det["score"]):
            # the face the crop was cut around: the one nearest its centre (in a wide crop the most confident
            # face can be a neighbour's)
            centres = (det["bbox"][:, :2] + det["bbox"][:, 2:]) / 2 - p
            i = int(np.argmin(np.hypot(*((centres - [w / 2, h / 2]) / [w, h]).T)))
            faces.append(face_quantities(det["bbox"][i] - p, det["kps5"][i] - p, w, h))
    return len(sizes), faces, sizes


def summarise(faces: list[dict]) -> dict:
    return {q: {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90))}
            for q in QUANTITIES for v in [np.array([f[q] for f in faces])]}


def decide(stats: dict, size: int) -> tuple[Crop, str]:
    """The geometry and its parameter from the stats: (Crop, one-line reason). Template: faces levelled and at
    the template's place and size in every crop; mtcnn: levelled, squashed vertically, the box past the crop; box:
    the rest."""
    def spread(q):
        return stats[q]["p90"] - stats[q]["p10"]

    def med(q):
        return stats[q]["median"]

    roll, ratio = spread("roll_deg"), med("eye_mouth_over_eye_distance")
    moves = max(spread("face_centre_x"), spread("face_centre_y"))
    off = max(abs(med("face_centre_x") - 0.5), abs(med("face_centre_y") - 0.5))
    box = max(med("box_w"), med("box_h"))
    levelled = roll < LEVEL_DEG and abs(med("roll_deg")) < LEVEL_DEG / 3
    facts = (f"roll p10-p90 spread {roll:.1f} deg, face centre spread {moves:.3f} and offset {off:.3f}, "
             f"eye-mouth/eye distance {ratio:.2f}, box long side {box:.2f}")
    if levelled and moves < FIXED and off < CENTRED:
        margin = med("template_margin")
        crop = Crop("template", max(0.0, round(margin, 2)), size)
        why = (f"template: faces levelled at the template's place and size in every crop ({facts}); margin "
               f"{margin:.3f} from the 5-point fit (eye distance {med('eye_distance'):.3f} of the crop)")
        if margin < -0.03:
            why += "; the crops are tighter than the bare ArcFace crop, which is as tight as a template crop goes"
    elif levelled and ratio < SQUASHED and box > LARGE:
        crop = Crop("mtcnn", 1.0, size)
        why = (f"mtcnn: eyes levelled, faces squashed vertically and larger than the crop ({facts}): a detector "
               f"box cut as it is, levelled and squashed to a square")
    else:
        if box < 1.0:
            crop = Crop("box", round(1.0 / box, 2), size)
            why = f"box: faces not at one place or not levelled ({facts}); scale 1 / box long side"
        else:  # the crop cuts the face: the detector, seeing less of it, finds a smaller box (box:0.7 -> 0.79)
            scale = (1 + 2 * med("template_margin")) / BOX_OVER_ARCFACE
            crop = Crop("box", round(scale, 2), size)
            why = (f"box: faces not at one place or not levelled ({facts}); the crop cuts the face, so the scale "
                   f"is from the 5-point face size (the box is {BOX_OVER_ARCFACE} x the bare ArcFace crop)")
        if levelled and moves < FIXED:
            why += "; the faces are aligned, but centred off our template: the box is the nearest crop we cut"
    aspect = med("aspect")
    if abs(aspect - 1) > 0.02 or spread("aspect") > 0.02:
        why += (f"; the files are not square (width/height {aspect:.2f}, p10-p90 {stats['aspect']['p10']:.2f}-"
                f"{stats['aspect']['p90']:.2f}): the model gets them resized to its square without keeping the "
                f"aspect (like MAFW), as measured here")
    return crop, why


def measure_crops(paths: list[str], detector_weights: str | Path, sample: int = 50, long_side: int = 320,
                  seed: int = 0) -> CropMeasurement:
    """Measure a sample of pre-cut face crops (image files and/or folders) and suggest the ``--crop`` that cuts
    the same crop from raw video. ValueError where no file is found or no face is found in any."""
    from .detector import FaceDetector

    files = spread_sample(list_images(paths), sample, seed)
    if not files:
        names = ", ".join(map(os.fspath, paths))
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {names}")
    detector = FaceDetector(detector_weights, device="cpu", long_side=long_side)
    n_files, faces, sizes = detect_faces(files, detector)
    if not n_files:
        raise ValueError(f"none of the {len(files)} sampled image files could be read")
    if not faces:
        raise ValueError(f"no face found in any of the {n_files} image files read (of {len(files)} sampled): "
                         f"are these face crops?")
    stats = summarise(faces)
    size = round(float(np.median([max(s) for s in sizes])))
    crop, reason = decide(stats, size)
    return CropMeasurement(n_files, len(faces), stats, crop, reason)
