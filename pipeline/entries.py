"""A video's landmark-cache entry from what its units left (``write_units``: faces joined, tracks grouped into
persons), or the entry of a video that failed before any unit ran (``error_meta``); the complete entries a run
starts from (``cached_entries``), re-grouped into persons when the run's identity threshold is another
(``regroup``: from the entry's descriptors, no decode)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from . import cache
from .identity import join_descriptors
from .persons import video_persons
from .progress import say
from .settings import FacePlan, FaceSettings
from .sources import Source, display
from .units import UnitFaces, empty_faces, join_units


def threshold(s: FaceSettings) -> float | None:
    """The identity threshold persons are grouped by; None: identities off."""
    return s.identity_threshold if s.identities else None


def write_units(cache_dir: Path | str, plan: FacePlan, src: Source, units: list[UnitFaces]
                ) -> tuple[dict, list, dict[int, int]]:
    """A decoded video's units -> its cache entry (written atomically) -> (its meta row, per unit the
    {unit track: video track} map and the frame-index offset, {video track: person})."""
    info = next((u.info for u in units if u.info), None) or {}
    error = next((u.error for u in units if u.status == "error"), None)
    faces, maps, counts = empty_faces(), [{} for _ in units], {}
    if error is None:
        try:
            faces, maps, counts = join_units(units)
        except ValueError as exc:
            error = f"shards: {exc}"
    if error is not None:
        faces, maps = {**empty_faces(), "width": 0, "height": 0}, [{} for _ in units]
    faces.pop("own", None)
    found = join_descriptors([u.descriptors for u in units], maps)
    persons = video_persons(faces["frame_index"], faces["track_id"], faces["time_s"],
                            {t: d for t, (_, d) in found.items()}, threshold(plan.settings))
    faces["person_id"] = np.array([persons[t] for t in faces["track_id"].tolist()], np.int32)
    n = len(faces["frame_index"])
    status = "error" if error else "ok" if n else "no_faces"
    meta = {"video_id": src.video_id, "source_path": display(src.path), "duration_s": info.get("duration_s"),
            "native_fps": info.get("native_fps"), "rotation": info.get("rotation", 0), "width": info.get("width"),
            "height": info.get("height"), "settings": plan.record, "status": status, "error": error,
            "frame_count": counts.get("frame_count", 0), "sampled_frames": counts.get("sampled_frames", 0),
            "decode_seconds": sum(u.decode_seconds for u in units), "total_seconds": sum(u.seconds for u in units),
            "identity_threshold": threshold(plan.settings)}
    table = cache.faces_table({**faces, "video_id": src.video_id})
    tracks = {t: (p, first, *found.get(t, (0, None))) for t, (p, first, _, _) in cache.face_tracks(table).items()}
    cache.write_entry(cache_dir, plan.key, src.video_id, table, meta, tracks)
    offsets = counts.get("offsets", [0] * len(units))
    return cache.read_meta(cache_dir, plan.key, src.video_id), list(zip(maps, offsets)), persons


def error_meta(src: Source, settings: dict, message: str) -> dict:
    """The meta row of a video with no faces because of ``message``."""
    return {"video_id": src.video_id, "source_path": display(src.path), "duration_s": None, "native_fps": None,
            "frame_count": 0, "sampled_frames": 0, "rotation": 0, "width": None, "height": None,
            "settings": settings, "status": "error", "error": message, "decode_seconds": None, "total_seconds": 0.0,
            "n_faces": 0, "n_tracks": 0, "n_persons": 0, "identity_threshold": None}


def write_error(cache_dir: Path | str, plan: FacePlan, src: Source, message: str) -> dict:
    """An error entry for a video the chain never finished -> its meta row."""
    cache.write_entry(cache_dir, plan.key, src.video_id, {**empty_faces(), "person_id": np.zeros(0, np.int32),
                                                          "video_id": src.video_id, "width": 0, "height": 0},
                      error_meta(src, plan.record, message))
    return cache.read_meta(cache_dir, plan.key, src.video_id)


def cached_entries(cache_dir, plan: FacePlan, videos) -> dict[str, tuple]:
    """{video id: (rows, meta)} of the ``videos`` with a complete landmark-cache entry, its persons grouped by the
    plan's identity threshold (``regroup``); one that cannot be read or is another video's is a miss, said in one
    line (the video is redone and its entry replaced)."""
    found, regrouped = {}, 0
    for vid in videos:
        entry, why = cache.check_entry(cache_dir, plan.key, vid)
        if why:
            say(why)
        if entry is not None and entry[1]["status"] == "ok" and \
                entry[1]["identity_threshold"] != threshold(plan.settings):
            entry = regroup(cache_dir, plan, vid, entry)
            regrouped += 1
        if entry is not None:
            found[vid] = entry
    if regrouped:
        say(f"{regrouped} cache entries re-grouped into persons (identity threshold {threshold(plan.settings)}), "
            "without a decode")
    return found


def regroup(cache_dir, plan: FacePlan, vid: str, entry: tuple[pa.Table, dict]) -> tuple[pa.Table, dict]:
    """A complete entry grouped into persons anew, by the plan's threshold, from its tracks' descriptors (no decode):
    its face rows' and tracks' person ids and its meta rewritten (atomically, meta last) -> (rows, meta)."""
    table, meta = entry
    tracks = cache.read_tracks(cache_dir, plan.key, vid).to_pylist()
    descriptors = {r["track_id"]: np.asarray(r["descriptor"], np.float32) for r in tracks if r["descriptor"]}
    persons = video_persons(table.column("frame_index").to_numpy(), table.column("track_id").to_numpy(),
                            table.column("time_s").to_numpy(), descriptors, threshold(plan.settings))
    person = pa.array([persons[t] for t in table.column("track_id").to_pylist()], pa.int32())
    table = table.set_column(table.schema.get_field_index("person_id"), cache.FACES_SCHEMA.field("person_id"), person)
    new = {r["track_id"]: (persons[r["track_id"]], r["first_s"], r["n_chips"], r["descriptor"]) for r in tracks}
    meta = {**meta, "identity_threshold": threshold(plan.settings), "n_persons": len(set(persons.values()))}
    cache.write_entry(cache_dir, plan.key, vid, table, meta, new)
    return table, cache.read_meta(cache_dir, plan.key, vid)
