"""A video's landmark-cache entry from what its units left (``write_units``), or the entry of a video that failed
before any unit ran (``error_meta``); the complete entries a run starts from (``cached_entries``)."""
from __future__ import annotations

from pathlib import Path

from . import cache
from .progress import say
from .settings import FacePlan
from .sources import Source, display
from .units import UnitFaces, empty_faces, join_units


def write_units(cache_dir: Path | str, plan: FacePlan, src: Source, units: list[UnitFaces]) -> tuple[dict, list]:
    """A decoded video's units -> its cache entry (written atomically) -> (its meta row, per unit the
    {unit track: video track} map and the frame-index offset)."""
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
    n = len(faces["frame_index"])
    status = "error" if error else "ok" if n else "no_faces"
    meta = {"video_id": src.video_id, "source_path": display(src.path), "duration_s": info.get("duration_s"),
            "native_fps": info.get("native_fps"), "rotation": info.get("rotation", 0), "width": info.get("width"),
            "height": info.get("height"), "settings": plan.record, "status": status, "error": error,
            "frame_count": counts.get("frame_count", 0), "sampled_frames": counts.get("sampled_frames", 0),
            "decode_seconds": sum(u.decode_seconds for u in units), "total_seconds": sum(u.seconds for u in units)}
    cache.write_entry(cache_dir, plan.key, src.video_id, {**faces, "video_id": src.video_id}, meta)
    offsets = counts.get("offsets", [0] * len(units))
    return cache.read_meta(cache_dir, plan.key, src.video_id), list(zip(maps, offsets))


def error_meta(src: Source, settings: dict, message: str) -> dict:
    """The meta row of a video with no faces because of ``message``."""
    return {"video_id": src.video_id, "source_path": display(src.path), "duration_s": None, "native_fps": None,
            "frame_count": 0, "sampled_frames": 0, "rotation": 0, "width": None, "height": None,
            "settings": settings, "status": "error", "error": message, "decode_seconds": None, "total_seconds": 0.0,
            "n_faces": 0, "n_tracks": 0}


def write_error(cache_dir: Path | str, plan: FacePlan, src: Source, message: str) -> dict:
    """An error entry for a video the chain never finished -> its meta row."""
    cache.write_entry(cache_dir, plan.key, src.video_id, {**empty_faces(), "video_id": src.video_id, "width": 0,
                                                          "height": 0}, error_meta(src, plan.record, message))
    return cache.read_meta(cache_dir, plan.key, src.video_id)


def cached_entries(cache_dir, key: str, videos) -> dict[str, tuple]:
    """{video id: (rows, meta)} of the ``videos`` with a complete landmark-cache entry; one that cannot be read or
    is another video's is a miss, said in one line (the video is redone and its entry replaced)."""
    found = {}
    for vid in videos:
        entry, why = cache.check_entry(cache_dir, key, vid)
        if why:
            say(why)
        if entry is not None:
            found[vid] = entry
    return found
