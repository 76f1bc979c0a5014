"""Units of face work and what they leave behind; a long video's units joined back into one video. Pure functions.

A unit is a whole video, or one time shard of a long one (``plan_units``): shards of ``shard_s`` seconds own the
face rows and the windows that start inside them; each also decodes ``WARMUP_S`` before (its tracker warms up)
and one segment plus a second after (its last windows close there, and the next shard's tracks are matched to its
own in the frames both decoded). ``join_units`` turns a video's ``UnitFaces`` into its landmark-cache rows (frame
indices made absolute, tracks stitched) and its meta row.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .decode import grid_time
from .segments import Segment
from .sources import probe
from .track import stitch_units

WARMUP_S = 1.0
SHARD_S = 60.0  # the default shard length
FACE_COLUMNS = ("frame_index", "time_s", "face", "track_id", "score", "bbox", "kps5", "landmarks68")


@dataclass
class Unit:
    video_id: str
    path: str
    index: int = 0  # shard number in the video
    count: int = 1  # shards of the video
    start_s: float = 0.0  # decode from here (a sampling grid time)
    end_s: float | None = None  # ... to here (None: the end)
    own_start_s: float = 0.0  # its face rows and windows: start_s in [own_start_s, own_end_s)
    own_end_s: float = math.inf
    info: dict | None = None  # the probe (VideoInfo fields)
    error: str | None = None  # the probe failed: the unit fails with this
    cached: object = None  # pa.Table: the video's complete landmark-cache rows (then nothing is detected)


@dataclass
class Clip:
    """One window's aligned 16-frame clip, from a face actor to S2D (``pixels``) and on to the driver (``probs``)."""

    video_id: str
    unit: int
    segment: Segment  # track_id: the unit's own track id
    pixels: np.ndarray | None  # uint8 [16, 224, 224, 3]; None once classified
    probs: np.ndarray | None = None  # float32 [C]
    s2d_seconds: float = 0.0
    node: str = ""  # the Ray node id of the S2D actor that classified it


@dataclass
class UnitFaces:
    """What a unit leaves once it is decoded: its face rows (the unit's own frame indices and track ids), the
    frames it sampled, and counts. Sent after the unit's last clip."""

    video_id: str
    index: int
    count: int
    faces: dict = field(default_factory=dict)  # FACE_COLUMNS as numpy arrays, plus "own" bool[n]
    sampled: tuple = (np.zeros(0, np.int64), np.zeros(0))  # (frame_index, time_s) of every sampled frame
    n_sampled_own: int = 0
    frame_count: int = 0  # frames decoded (counted from where the unit started decoding)
    from_start: bool = True  # its frame indices are the stream's own (decoded from the first frame)
    width: int = 0
    height: int = 0
    n_clips: int = 0
    info: dict | None = None
    status: str = "ok"  # or "error"
    error: str | None = None
    decode_seconds: float = 0.0
    seconds: float = 0.0
    first_face_at: float | None = None  # time.time() when its first face was found (this node's clock)
    node: str = ""  # the Ray node id of the face actor that did it
    thumbs: dict = field(default_factory=dict)  # {unit track: (score, data: URI)}: its best own face (annotate)
    descriptors: dict = field(default_factory=dict)  # {unit track: (chips, mean descriptor [D])} (identities on)


def keep_best(best: dict, track: int, score: float, face) -> None:
    """best {track: (score, face)} <- one face of a track: kept when its score is higher than the one kept, so the
    first of equal scores stays (as ``idxmax`` over the face rows picks in ``report.thumbnails``). ``face`` may be a
    function that makes it: called only when it is kept."""
    if track not in best or score > best[track][0]:
        best[track] = (score, face() if callable(face) else face)


def video_thumbnails(units: list[UnitFaces], maps: list[dict[int, int]] | None) -> dict[int, str]:
    """A video's units (shard order) and their {unit track: video track} maps (None: the ids are the video's) ->
    {video track: data: URI}: each unit's best face (``keep_best``) kept by the same rule across the units."""
    best: dict[int, tuple[float, str]] = {}
    for i, u in enumerate(units):
        for tid, (score, uri) in u.thumbs.items():
            vt = tid if maps is None else maps[i].get(tid)
            if vt is not None:
                keep_best(best, vt, score, uri)
    return {t: uri for t, (_, uri) in best.items()}


def plan_units(video_id: str, path: str, fps: float, shard_s: float | None, segment_s: float, cached=None,
               face_actors: int = 0) -> list[Unit]:
    """A video -> its units: one, or time shards when it is longer than ``shard_s`` plus the overlap. ``shard_s``
    None: ``SHARD_S``, but no more shards than ``face_actors`` (when given) can share, since each shard also decodes
    and detects its overlap.
    A file that cannot be probed gives one unit carrying the error. A still image is one unit (its ``info`` says
    ``image``; probed from its header: one cut after its header fails in the face actor, which decodes it)."""
    from .images import image_info, is_image

    try:
        info = image_info(path) if is_image(path) else asdict(probe(path))
    except Exception as exc:
        from .decode import DecodeError

        message = str(exc) if isinstance(exc, DecodeError) else f"probe: {type(exc).__name__}: {exc}"
        return [Unit(video_id, path, error=message, cached=cached)]
    duration, after = info["duration_s"], segment_s + 1.0
    if shard_s is None:
        shard_s = max(SHARD_S, (duration or 0.0) / face_actors) if face_actors > 0 else SHARD_S
    if not duration or shard_s <= 0 or duration <= shard_s + after + WARMUP_S:
        return [Unit(video_id, path, info=info, cached=cached)]
    n = math.ceil(duration / shard_s)
    bounds = [grid_time(i * shard_s, fps) for i in range(n)] + [math.inf]
    return [Unit(video_id, path, i, n, start_s=grid_time(max(0.0, bounds[i] - WARMUP_S), fps),
                 end_s=None if i == n - 1 else bounds[i + 1] + after, own_start_s=bounds[i],
                 own_end_s=bounds[i + 1], info=info, cached=cached) for i in range(n)]


def frame_offsets(units: list[UnitFaces]) -> list[int]:
    """What to add to each unit's frame indices to make them the stream's: found where neighbours sampled the
    same frames (the same time). ValueError when two neighbours share no sampled frame."""
    offsets = [0]
    for prev, u in zip(units, units[1:]):
        if u.from_start:
            offsets.append(0)
            continue
        where = dict(zip(prev.sampled[1].tolist(), (prev.sampled[0] + offsets[-1]).tolist()))
        common = [(where[t], i) for i, t in zip(u.sampled[0].tolist(), u.sampled[1].tolist()) if t in where]
        if not common:
            raise ValueError(f"shards {prev.index} and {u.index} sampled no frame in common")
        offsets.append(common[0][0] - common[0][1])
    return offsets


def join_units(units: list[UnitFaces]) -> tuple[dict, list[dict[int, int]], dict]:
    """A video's units (in shard order) -> (face columns of FACES_SCHEMA, one {unit track: video track} per unit,
    counts: frame_count, sampled_frames, width, height, and "offsets", what each unit adds to its frame indices).
    Raises ValueError when the shards cannot be lined up."""
    offsets = frame_offsets(units)
    video_ids = stitch_units([u.faces for u in units])
    maps = [dict(zip(np.asarray(u.faces["track_id"]).tolist(), ids.tolist())) if len(ids) else {}
            for u, ids in zip(units, video_ids)]
    cols = {k: [] for k in FACE_COLUMNS}
    for u, off, ids in zip(units, offsets, video_ids):
        own = np.asarray(u.faces["own"], bool)
        for k in FACE_COLUMNS:
            v = np.asarray(ids if k == "track_id" else u.faces[k])[own]
            cols[k].append(v + off if k == "frame_index" else v)
    faces = {k: np.concatenate(v) for k, v in cols.items()}
    size = next(((u.width, u.height) for u in units if u.width), (0, 0))
    meta = {"frame_count": units[-1].frame_count + offsets[-1], "sampled_frames": sum(u.n_sampled_own for u in units),
            "width": size[0], "height": size[1], "offsets": offsets}
    return {**faces, "width": size[0], "height": size[1]}, maps, meta


def empty_faces() -> dict:
    """FACE_COLUMNS with no rows, plus ``own``."""
    return {"frame_index": np.zeros(0, np.int64), "time_s": np.zeros(0), "face": np.zeros(0, np.int16),
            "track_id": np.zeros(0, np.int32), "score": np.zeros(0, np.float32), "bbox": np.zeros((0, 4), np.float32),
            "kps5": np.zeros((0, 10), np.float32), "landmarks68": np.zeros((0, 136), np.float32),
            "own": np.zeros(0, bool)}


def items(*objects) -> dict:
    """A Ray Data batch of one ``item`` column holding these objects (kept pickled: they are not Arrow types)."""
    column = np.empty(len(objects), dtype=object)
    for i, o in enumerate(objects):
        column[i] = o
    return {"video_id": np.array([o.video_id for o in objects]), "item": column}
