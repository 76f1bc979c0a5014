"""What a run is asked to do, checked before any work, and the cache keys: which settings change which outputs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import cache


IDENTITY_THRESHOLD = 0.34  # Euclidean distance between tracks' mean descriptors; measured in bench/persons.py


@dataclass(frozen=True)
class FaceSettings:
    fps: float = 8.0  # analysis rate: frames sampled per second of video, by presentation timestamp
    detector: str = "retinaface-mobilenet"  # or "retinaface-resnet50"
    detector_weights: str | None = None  # path or weights name; default: the detector's registry entry
    landmarks: str = "mobilefacenet"  # or "fan"
    landmark_weights: str | None = None  # path or weights name; default: the backend's usual file
    score_threshold: float = 0.6
    nms_threshold: float = 0.4
    long_side: int = 640  # frames are resized so their long side is this, for detection
    decoder: str = "pyav"  # or "decord"
    max_gap_s: float = 1.0  # a track survives this long without its face
    shard_s: float | None = None  # long videos are cut into time shards this long (None: see units.plan_units)
    batch_frames: int = 8  # frames per detector forward (fewer when frames are large)
    identities: bool = True  # tracks grouped into persons by face descriptors (off: one person per track)
    identity_weights: str | None = None  # path or weights name; default $S2D_IDENTITY_WEIGHTS or faceapi-recognition
    identity_threshold: float = IDENTITY_THRESHOLD  # persons: tracks closer than this (bench/persons.py)
    # (batch_frames, shard_s, the weights' names and identity_threshold are not part of the cache key: the entry
    # keeps each track's descriptor and is re-grouped for another threshold without a decode)

    def __post_init__(self):  # fail before any work, in one line
        _check(self, fps=(0, None), score_threshold=(0, 1), nms_threshold=(0, 1), long_side=(32, None),
               max_gap_s=(0, None), shard_s=(0, None), batch_frames=(1, None), identity_threshold=(0, 2))
        _choice("detector", self.detector, DETECTORS)
        _choice("landmarks", self.landmarks, LANDMARKS)
        _choice("decoder", self.decoder, DECODERS)


@dataclass(frozen=True)
class AnnotateSettings:
    weights: str = "s2d-dfew"  # weights name, path, or "random-tiny" (untrained, for smoke tests)
    image_weights: str = "s2d-affectnet7-image"  # still images: the static image model's weights (or "random-tiny")
    labels: str | None = None  # label set; default: what the weights were trained on
    s2d_landmark_weights: str | None = None  # S2D's landmark branch (MobileFaceNet); default: "mobilefacenet"
    segment_s: float = 2.0
    stride_s: float = 1.0
    min_face_frames: int = 8
    views: int = 1  # 2: test-time views, a window's first and last 16 sampled frames, averaged (when it has more)
    batch_size: int | None = None  # clips per S2D forward; None: 8 on a GPU, 1 on CPU (there the fastest, leanest)
    crop: str | None = None  # the video model's face crop (crops.parse_crop); None: what its weights were trained on
    image_crop: str | None = None  # the image model's
    frame_order: str | None = None  # "time" or "lexicographic"; None: its weights' training order
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "int8" (CPU); auto: bf16 where native (pipeline.precision)

    def __post_init__(self):  # fail before any work, in one line
        from .crops import check_order, parse_crop
        from .precision import check_precision

        for crop in (self.crop, self.image_crop):
            if crop is not None:
                parse_crop(crop)
        if self.frame_order is not None:
            check_order(self.frame_order)
        check_precision(self.precision)
        if self.views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, not {self.views}")
        _check(self, segment_s=(0, None), stride_s=(0, None), min_face_frames=(1, 16),
               **({"batch_size": (1, None)} if self.batch_size is not None else {}))


def _check(settings, **ranges) -> None:
    """ValueError naming the first field outside its (low, high) range; low is exclusive for floats, inclusive for
    ints (fps 0 is refused, min_face_frames 1 is fine); None: no bound."""
    types = {f.name: str(f.type) for f in fields(settings)}
    for name, (low, high) in ranges.items():
        v = getattr(settings, name)
        if v is None:  # an optional field left to its default
            continue
        is_int = "float" not in types[name]  # by the field's declared type: segment_s=0 is refused too
        bad = (low is not None and (v < low if is_int else v <= low)) or (high is not None and v > high)
        if bad or v != v:  # NaN too
            lo = "" if low is None else f"{'>=' if is_int else '>'} {low}"
            hi = "" if high is None else f"<= {high}"
            raise ValueError(f"{name} must be {' and '.join(x for x in (lo, hi) if x)}, not {v}")


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} '{value}': choose one of {', '.join(allowed)}")


DETECTORS = {"retinaface-mobilenet": "mobilenet0.25", "retinaface-resnet50": "resnet50"}
LANDMARKS = ("mobilefacenet", "fan")
DECODERS = ("pyav", "decord")
NOT_IN_FACE_KEY = ("batch_frames", "shard_s", "detector_weights", "landmark_weights",  # speed or file names only
                   "identity_weights", "identity_threshold")  # (the threshold: see FaceSettings)
NOT_IN_TIMELINE_KEY = ("batch_size", "weights", "image_weights", "labels",  # the classifier's fingerprint
                       "s2d_landmark_weights", "crop", "image_crop", "frame_order",  # and its input
                       "precision")  # (as resolved: Classifier.input)


def resolve_face_weights(s: FaceSettings) -> tuple[Path, Path | None]:
    """(detector weights, landmark weights) on disk, or a WeightsNotFound naming the file, before any work."""
    from s2d_model.weights import resolve, resolve_all

    if s.landmarks == "mobilefacenet":
        det, lm = resolve_all([s.detector_weights or s.detector, s.landmark_weights or "mobilefacenet"])
        return det, lm
    det = resolve(s.detector_weights or s.detector)
    if s.landmarks == "fan":
        from .landmarks import FANLandmarks, fan_default_path

        lm = Path(s.landmark_weights) if s.landmark_weights else fan_default_path()
        if not lm.is_file():  # FANLandmarks says the same with the upstream URL; fail before any work
            FANLandmarks(lm)
    else:
        raise ValueError(f"unknown landmark backend '{s.landmarks}': use mobilefacenet or fan")
    return det, lm


def identity_name(s: FaceSettings) -> str | None:
    """The identity weights a run needs (a registry name or path: ``identity_weights``, else the environment's
    ``S2D_IDENTITY_WEIGHTS``, else ``faceapi-recognition``), or None with identities off."""
    import os

    if not s.identities:
        return None
    return s.identity_weights or os.environ.get("S2D_IDENTITY_WEIGHTS") or "faceapi-recognition"


def resolve_identity_weights(s: FaceSettings) -> Path | None:
    """The face-recognition net's manifest on disk, read and checked (numpy only, no torch), before any work:
    ``WeightsNotFound`` naming the file, or ``WeightsFileError`` in one line for a corrupt or mismatched one."""
    from s2d_model.tfjs import check_recognition_weights
    from s2d_model.weights import resolve

    if identity_name(s) is None:
        return None
    path = resolve(identity_name(s))
    check_recognition_weights(path)
    return path


@dataclass(frozen=True)
class FacePlan:
    """The face stage, decided before any work: weights on disk, the settings record and its cache key."""

    settings: FaceSettings
    detector_path: Path
    landmark_path: Path | None
    identity_path: Path | None  # face-api's recognition net (None: identities off)
    record: dict  # everything that changes the face rows
    key: str  # the cache folder: a hash of ``record``


def plan_faces(s: FaceSettings) -> FacePlan:
    from .decode import get_decoder

    get_decoder(s.decoder)  # an optional decoder that is not installed fails now
    det, lm = resolve_face_weights(s)
    ident = resolve_identity_weights(s)
    record = {k: v for k, v in asdict(s).items() if k not in NOT_IN_FACE_KEY}
    record["detector_file"] = cache.file_fingerprint(det)
    record["landmark_file"] = cache.file_fingerprint(lm) if lm else None
    if ident is not None:
        from s2d_model.tfjs import data_files

        record["identity_files"] = [cache.file_fingerprint(p) for p in [ident, *data_files(ident)]]
    return FacePlan(s, det, lm, ident, record, cache.settings_hash(record))


def timeline_record(face_key: str, classifier_fingerprint: dict, s: AnnotateSettings, model_input: dict,
                    persons: float | None = None) -> dict:
    """Everything that changes a timeline: the timeline's settings hash is a hash of this. ``model_input``: the
    classifier's crop and frame order (``Classifier.input``); ``persons``: the identity threshold (None: identities
    off, or the record of every threshold's rows: a timeline of another threshold is re-grouped, not redone)."""
    return {"faces": face_key, "classifier": classifier_fingerprint, "input": model_input, "persons": persons,
            **{k: v for k, v in asdict(s).items() if k not in NOT_IN_TIMELINE_KEY}}
