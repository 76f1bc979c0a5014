"""Synthetic "multi-person edits" for tests and the face re-identification benchmark: shots of real fixture faces
(cut out with a soft elliptical edge, slowly moving and zooming) on plain or landscape backgrounds, joined by hard
cuts into one H.264 video, with the ground truth of who is where in every frame.

Actors: ``jin`` (the frames of videos/single_face.mp4, played forwards and backwards in turn), ``jin_still``
(images/single_face.jpg: the same man, so both are the person "jin"), ``f1``, ``f15``, ``f13`` (posed stills of three
women) and ``group0``, ``group1``, ... (the faces of images/multi_face.jpg with eyes >= 25 px apart, left to right).
Where a face is in a source is found once per source with the project's RetinaFace detector.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

STILLS = {"jin_still": "single_face.jpg", "f1": "0-f1-su-ph.jpg", "f15": "0-f15-hao-ph.jpg",
          "f13": "15-f13-anc-ph.jpg"}
VIDEOS = {"jin": "single_face.mp4"}
PERSON = {"jin_still": "jin"}  # actor -> person where they differ
MIN_EYES_PX = 25.0  # group faces whose eyes are closer than this in the source are left out (too small to recognise)
MARGIN = 0.5  # the cut-out: the face box grown by this much of its size on every side
ELLIPSE = (0.7, 0.7)  # the soft mask's semi-axes, as parts of the face box's width and height
DRIFT_PX_S = (20.0, 8.0)  # how fast a face moves (x, y), px per second; alternate faces move the other way
ZOOM = 0.08  # a face grows (or shrinks) by this part of its height over a shot
VIDEO_STEP = 3  # a video's face is detected on every third frame (on the fixture: within 6 px of every frame's)


@dataclass
class Shot:
    """One shot: ``faces`` are (actor, cx, cy, height): the face centre as fractions of the frame at mid-shot and the
    face box height in px; ``background``: a gray level 0-255 or "mountain"."""
    seconds: float
    faces: list[tuple[str, float, float, float]] = field(default_factory=list)
    background: int | str = 100


STANDARD_EDIT = [  # 10 shots, 34 s, 6 people: jin, f1, f13, f15, group1, group3
    Shot(4, [("jin", 0.5, 0.5, 170)], 100),
    Shot(3, [("jin", 0.4, 0.5, 140)], "mountain"),  # jin again after a hard cut
    Shot(4, [("f1", 0.5, 0.5, 160)], 60),
    Shot(4, [("f13", 0.27, 0.5, 150), ("group1", 0.73, 0.5, 150)], "mountain"),  # side by side
    Shot(3, [("jin_still", 0.55, 0.5, 170)], 140),  # jin after 8 s away, as the still
    Shot(3, [("group3", 0.5, 0.5, 160)], "mountain"),
    Shot(4, [("f1", 0.3, 0.5, 140), ("jin", 0.7, 0.5, 150)], 100),  # f1 after 10 s away, beside jin (video)
    Shot(3, [("f15", 0.45, 0.5, 170)], "mountain"),
    Shot(3, [("f13", 0.6, 0.5, 160)], 70),
    Shot(3, [("group1", 0.3, 0.5, 140), ("group3", 0.7, 0.5, 150)], 120),
]

SHORT_EDIT = [  # 4 shots, 13 s, 4 people: jin, f1, f13, group1
    Shot(3, [("jin", 0.5, 0.5, 160)], 100),
    Shot(3, [("f1", 0.5, 0.5, 160)], "mountain"),
    Shot(4, [("f13", 0.28, 0.5, 150), ("group1", 0.72, 0.5, 150)], 80),  # side by side
    Shot(3, [("jin", 0.45, 0.5, 150)], "mountain"),  # jin after 7 s away
]

_DETECTIONS: dict[str, list[dict]] = {}  # source file -> the detector's result per frame
_SOURCES: dict[tuple[str, str], dict] = {}  # (fixtures dir, actor) -> cut-out (see _source)
_DETECTOR: dict[str, object] = {}  # "det" -> the one FaceDetector


def person_of(actor: str) -> str:
    """The true person an actor shows ("jin" for "jin" and "jin_still")."""
    return PERSON.get(actor, actor)


def _read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 RGB [H,W,3]."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_video(path: Path) -> np.ndarray:
    """All frames of a video as uint8 RGB [n,H,W,3]."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def detector(fixtures_dir: Path):
    """The project's RetinaFace (MobileNet, the fixture weights, CPU), made once: frames uint8 RGB [n,H,W,3] -> per
    frame {"bbox" [k,4], "score" [k], "kps5" [k,10]} in source pixels."""
    if "det" not in _DETECTOR:
        from pipeline.detector import FaceDetector
        from pipeline.settings import DETECTORS

        _DETECTOR["det"] = FaceDetector(Path(fixtures_dir) / "weights" / "mobilenet0.25_Final.pth",
                                        DETECTORS["retinaface-mobilenet"], device="cpu")
    return _DETECTOR["det"]


def _detect_source(fixtures_dir: Path, path: Path, frames: np.ndarray) -> list[dict]:
    """``detector`` on ``frames`` of the source file ``path`` (always the same frames of it), cached by path."""
    if str(path) not in _DETECTIONS:
        _DETECTIONS[str(path)] = detector(fixtures_dir)(frames)
    return _DETECTIONS[str(path)]


def group_faces(fixtures_dir: Path) -> list[np.ndarray]:
    """The boxes [4] (x1, y1, x2, y2) of images/multi_face.jpg's faces with eyes >= MIN_EYES_PX apart, left to
    right: the boxes of actors group0, group1, ..."""
    path = Path(fixtures_dir) / "images" / "multi_face.jpg"
    d = _detect_source(fixtures_dir, path, _read_rgb(path)[None])[0]
    eyes = np.hypot(d["kps5"][:, 2] - d["kps5"][:, 0], d["kps5"][:, 3] - d["kps5"][:, 1])
    boxes = d["bbox"][eyes >= MIN_EYES_PX]
    return [b for b in boxes[np.argsort(boxes[:, 0])]]


def _one_face(fixtures_dir: Path, path: Path, frames: np.ndarray) -> np.ndarray:
    """The single face box per frame [n,4] of a one-face source; an error where a frame has no face or several."""
    dets = _detect_source(fixtures_dir, path, frames)
    counts = [len(d["bbox"]) for d in dets]
    if set(counts) != {1}:
        raise ValueError(f"{path.name}: expected one face per frame, found {sorted(set(counts))}")
    return np.stack([d["bbox"][0] for d in dets])


def _source(fixtures_dir: Path, actor: str) -> dict:
    """An actor's cut-out, cached: {"frames": uint8 [n,h,w,3] crops, "boxes": [n,4] face boxes in crop pixels,
    "ref": [4] their mean box, "mask": float32 [h,w] soft ellipse (1 inside) around the mean box}."""
    key = (str(fixtures_dir), actor)
    if key in _SOURCES:
        return _SOURCES[key]
    fixtures_dir = Path(fixtures_dir)
    if actor in VIDEOS:
        path = fixtures_dir / "videos" / VIDEOS[actor]
        frames = _read_video(path)
        # every VIDEO_STEP-th frame and the last, boxes in between interpolated: the detector's own jitter is as large
        at = np.unique(np.r_[np.arange(0, len(frames), VIDEO_STEP), len(frames) - 1])
        found = _one_face(fixtures_dir, path, frames[at])
        boxes = np.stack([np.interp(np.arange(len(frames)), at, found[:, c]) for c in range(4)], 1)
    elif actor in STILLS:
        path = fixtures_dir / "images" / STILLS[actor]
        frames = _read_rgb(path)[None]
        boxes = _one_face(fixtures_dir, path, frames)
    elif actor.startswith("group") and actor[5:].isdigit():
        found = group_faces(fixtures_dir)
        if int(actor[5:]) >= len(found):
            raise ValueError(f"{actor}: multi_face.jpg has {len(found)} recognisable faces")
        frames = _read_rgb(fixtures_dir / "images" / "multi_face.jpg")[None]
        boxes = found[int(actor[5:])][None]
    else:
        raise ValueError(f"unknown actor {actor!r}")
    ref = boxes.mean(0)
    w, h = ref[2] - ref[0], ref[3] - ref[1]
    H, W = frames.shape[1:3]
    x1, y1 = max(0, int(ref[0] - MARGIN * w)), max(0, int(ref[1] - MARGIN * h))
    x2, y2 = min(W, int(np.ceil(ref[2] + MARGIN * w))), min(H, int(np.ceil(ref[3] + MARGIN * h)))
    offset = np.array([x1, y1, x1, y1], np.float32)
    mask = np.zeros((y2 - y1, x2 - x1), np.float32)
    centre = (round((ref[0] + ref[2]) / 2 - x1), round((ref[1] + ref[3]) / 2 - y1))
    cv2.ellipse(mask, centre, (round(ELLIPSE[0] * w), round(ELLIPSE[1] * h)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.06 * h)
    src = {"frames": np.ascontiguousarray(frames[:, y1:y2, x1:x2]), "boxes": boxes - offset, "ref": ref - offset,
           "mask": mask}
    _SOURCES[key] = src
    return src


def _background(fixtures_dir: Path, background: int | str, size: tuple[int, int]) -> np.ndarray:
    """A shot's background as uint8 RGB [H,W,3]: a gray level or the mountain picture (resized and cut to fill)."""
    w, h = size
    if background == "mountain":
        img = _read_rgb(Path(fixtures_dir) / "images" / "free-mountain-vector-01.jpg")
        scale = max(w / img.shape[1], h / img.shape[0])
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        return np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w])
    return np.full((h, w, 3), int(background), np.uint8)


def _frame_at(src: dict, t: float, fps: float = 30.0) -> int:
    """The source frame shown at time ``t``: a video plays at ``fps``, forwards then backwards (no jump at the
    turn); a still is frame 0."""
    n = len(src["frames"])
    if n == 1:
        return 0
    k = int(round(t * fps)) % (2 * n - 2)
    return k if k < n else 2 * n - 2 - k


def _pose(src: dict, j: int, face: tuple, t: float, seconds: float, size: tuple[int, int]) -> tuple[float, tuple]:
    """(scale, (ox, oy)) of face ``j`` of a shot at time ``t`` of it: a crop point p (pixel edges at integers) lands
    at scale * (p - centre of the mean face box) + (ox, oy). At mid-shot the face is at (cx, cy) and ``height`` px
    high; it drifts at DRIFT_PX_S (every other face the other way) and zooms by ZOOM over the shot."""
    _, cx, cy, height = face
    sign = 1.0 if j % 2 == 0 else -1.0
    u = t / seconds - 0.5  # -0.5 .. 0.5 over the shot
    ref = src["ref"]
    scale = height * (1 + sign * ZOOM * u) / (ref[3] - ref[1])
    return scale, (cx * size[0] + sign * DRIFT_PX_S[0] * u * seconds, cy * size[1] + sign * DRIFT_PX_S[1] * u * seconds)


def _paste(out: np.ndarray, small: np.ndarray, alpha: np.ndarray, m: np.ndarray) -> None:
    """Blend ``small`` (uint8 [h,w,3]) with its ``alpha`` (float32 [h,w]) into ``out`` (float32 [H,W,3]) in place,
    moved by the affine ``m`` [2,3] (OpenCV pixel-centre coordinates)."""
    dsize = (out.shape[1], out.shape[0])
    face = cv2.warpAffine(small, m, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = cv2.warpAffine(alpha, m, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ys, xs = np.nonzero(a > 0)
    if len(ys) == 0:
        return
    sl = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    a = a[sl][..., None]
    out[sl] = out[sl] * (1 - a) + face[sl].astype(np.float32) * a


def _render_face(out: np.ndarray, src: dict, k: int, scale: float, origin: tuple, nominal: float,
                 cache: dict) -> np.ndarray:
    """Draw frame ``k`` of a cut-out into ``out`` at (scale, origin) (see _pose) and give its face box [4] in output
    pixels. The crop is first shrunk or grown by ``nominal`` with INTER_AREA (cached in ``cache``), so that the
    per-frame warp only scales by about 1 and does not alias."""
    key = (id(src), k, nominal)
    if key not in cache:
        crop = src["frames"][k]
        w, h = max(1, round(crop.shape[1] * nominal)), max(1, round(crop.shape[0] * nominal))
        cache[key] = (cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA),
                      cv2.resize(src["mask"], (w, h), interpolation=cv2.INTER_AREA),
                      (w / crop.shape[1], h / crop.shape[0]))
    small, alpha, (sx, sy) = cache[key]
    ref = src["ref"]
    rx, ry = (ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2
    # edge coordinates: small p' = (sx, sy) * crop p; output q = scale * (p - r) + origin; OpenCV indexes centres
    m = np.array([[scale / sx, 0, 0.5 * scale / sx - scale * rx + origin[0] - 0.5],
                  [0, scale / sy, 0.5 * scale / sy - scale * ry + origin[1] - 0.5]], np.float64)
    _paste(out, small, alpha, m)
    box = src["boxes"][k].astype(np.float64)
    return scale * (box - [rx, ry, rx, ry]) + [origin[0], origin[1], origin[0], origin[1]]


def edit_seconds(shots: list[Shot], fps: int = 10) -> list[tuple[float, float]]:
    """(start_s, end_s) of each shot in the video make_edit writes (a shot has round(seconds * fps) frames)."""
    out, n = [], 0
    for shot in shots:
        k = round(shot.seconds * fps)
        out.append((n / fps, (n + k) / fps))
        n += k
    return out


def make_edit(path: Path, fixtures_dir: Path, shots: list[Shot], fps: int = 10,
              size: tuple[int, int] = (640, 360)) -> list[dict]:
    """Write ``shots`` back to back (hard cuts) as an H.264 (yuv420p) mp4 at ``path``, ``size`` = (width, height),
    and give the ground truth: one dict per (shot, face) with "person" (the true person), "actor", "shot" (its
    index), "start_s", "end_s" (its first frame's time and the next shot's), "times" float[n] (the shot's frame
    times, s) and "boxes" float[n,4] (the face box x1, y1, x2, y2 in output pixels at each of those times)."""
    truth = []
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index, (shot, (start, end)) in enumerate(zip(shots, edit_seconds(shots, fps))):
            n = round((end - start) * fps)
            background = _background(fixtures_dir, shot.background, size).astype(np.float32)
            sources = [_source(fixtures_dir, face[0]) for face in shot.faces]
            faces = [{"person": person_of(face[0]), "actor": face[0], "shot": index, "start_s": start, "end_s": end,
                      "times": start + np.arange(n) / fps, "boxes": np.zeros((n, 4))} for face in shot.faces]
            cache: dict = {}
            for i in range(n):
                out = background.copy()
                for j, (face, src) in enumerate(zip(shot.faces, sources)):
                    scale, origin = _pose(src, j, face, i / fps, shot.seconds, size)
                    nominal = round(face[3] / (src["ref"][3] - src["ref"][1]), 3)
                    k = _frame_at(src, start + i / fps)
                    faces[j]["boxes"][i] = _render_face(out, src, k, scale, origin, nominal, cache)
                frame = av.VideoFrame.from_ndarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    c.mux(packet)
            truth += faces
        for packet in stream.encode():
            c.mux(packet)
    return truth


def box_at(face: dict, t: float, tolerance: float = 1e-3) -> np.ndarray | None:
    """A truth face's box [4] at time ``t`` (its nearest frame), or None when ``t`` is outside its shot."""
    if not face["start_s"] - tolerance <= t < face["end_s"] - tolerance:
        return None
    return face["boxes"][int(np.argmin(np.abs(face["times"] - t)))]


def label_tracks(track_rows, truth: list[dict]) -> dict[int, str]:
    """{track_id: true person} for face rows of a detected edit (a pandas DataFrame or a dict of arrays with
    ``track_id`` [n], ``time_s`` [n] and ``bbox`` [n,4] or n boxes): a row belongs to the truth face whose box, at
    the nearest frame of the same shot, holds the row's box centre (the nearest such face's centre if several), else
    to "none"; a track is the person most of its rows belong to ("none" if that is none; ties go to a person)."""
    tracks = np.asarray(track_rows["track_id"]).reshape(-1)
    times = np.asarray(track_rows["time_s"], np.float64).reshape(-1)
    boxes = np.stack([np.asarray(b, np.float64).reshape(4) for b in track_rows["bbox"]]) if len(tracks) else \
        np.zeros((0, 4))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    votes: dict[int, Counter] = {}
    for track, t, c in zip(tracks.tolist(), times, centres):
        best, best_d = "none", np.inf
        for face in truth:
            b = box_at(face, t)
            if b is None or not (b[0] <= c[0] <= b[2] and b[1] <= c[1] <= b[3]):
                continue
            d = np.hypot(c[0] - (b[0] + b[2]) / 2, c[1] - (b[1] + b[3]) / 2)
            if d < best_d:
                best, best_d = face["person"], d
        votes.setdefault(track, Counter())[best] += 1
    return {track: min(v.items(), key=lambda kv: (-kv[1], kv[0] == "none", kv[0]))[0] for track, v in votes.items()}
