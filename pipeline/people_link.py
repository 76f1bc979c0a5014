"""People across a run: each video's persons (``pipeline.persons``) linked across all the videos and images of an
``s2d annotate --out`` folder into global ids, ``OUT/people.parquet`` (``s2d people``; the API's ``people``: the
module is not named so, or importing it would hide that function). No decode, no model: the descriptors come from
the landmark cache's tracks tables, the persons and thumbnails from the timelines.

A video's persons are those of its timeline rows. A person's descriptor is the mean of its tracks' descriptors,
weighted by their chips (``n_chips``); the persons of all videos are grouped as ``persons.group`` groups a video's
tracks (average linkage, Euclidean, below ``threshold``), the persons of one video never together, and a person
without a descriptor is a global person of its own. Global ids are numbered by first appearance: the manifest's
video order, then person_id. A person's thumbnail is its timeline's thumbnail of its track with the most chips
(ties: the earliest).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import cache, storage
from .persons import group
from .settings import IDENTITY_THRESHOLD
from .timeline import in_run, read_manifest, run_cache, timeline_thumbnails

PEOPLE_SCHEMA = pa.schema([pa.field("video_id", pa.string(), False), pa.field("person_id", pa.int32(), False),
                           pa.field("global_person_id", pa.int32(), False), pa.field("thumbnail", pa.string(), False),
                           pa.field("n_tracks", pa.int32(), False), pa.field("first_s", pa.float64(), False),
                           pa.field("video_path", pa.string(), False)])


def best_track(first: dict[int, float], chips: dict[int, int]) -> int:
    """Of a person's tracks ({track: its first time}), the one whose thumbnail shows it: the most chips (``chips``
    {track: n}, absent: 0), ties -> the earliest (then the lower id)."""
    return min(first, key=lambda t: (-chips.get(t, 0), first[t], t))


def _video_persons(out_dir, cache_dir, key: str, record: dict) -> list[dict]:
    """A video's persons: [{video_id, person_id, thumbnail, n_tracks, first_s, video_path, descriptor or None}]."""
    name, vid = storage.name(record["video_path"]), record["video_id"]
    path = cache.tracks_path(cache_dir, key, vid)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{path} not found: the landmark-cache entry of {name} is missing; run s2d annotate "
                                "again")
    tracks = {r["track_id"]: r for r in storage.read_table(path).to_pylist()}
    timeline = in_run(out_dir, record.get("timeline"))
    if timeline is None or not storage.is_file(timeline):
        raise FileNotFoundError(f"the timeline of {name} ({timeline}) is missing; run s2d annotate again")
    table = storage.read_table(timeline)
    thumbs = timeline_thumbnails(table) or {}
    by_person: dict[int, dict[int, float]] = {}  # person -> {track: its first time}
    for t, p, s in zip(*(table.column(c).to_pylist() for c in ("track_id", "person_id", "start_s"))):
        first = by_person.setdefault(p, {})
        first[t] = tracks[t]["first_s"] if t in tracks else min(s, first.get(t, s))
    out = []
    for p, first in sorted(by_person.items()):
        chips = {t: (tracks[t]["n_chips"] if t in tracks and tracks[t]["descriptor"] is not None else 0) for t in first}
        best = best_track(first, chips)
        n = sum(chips.values())
        desc = None if n == 0 else sum(chips[t] * np.asarray(tracks[t]["descriptor"], np.float64)
                                       for t in first if chips[t]) / n
        out.append({"video_id": vid, "person_id": p, "thumbnail": thumbs.get(best, ""), "n_tracks": len(first),
                    "first_s": float(min(first.values())), "video_path": record["video_path"], "descriptor": desc})
    return out


def link_people(out_dir, threshold: float | None = None) -> pd.DataFrame:
    """The run folder's persons, one row each (PEOPLE_SCHEMA's columns, in order of global_person_id, then the
    manifest's video order). ``threshold`` None: the run's identity threshold. FileNotFoundError / ValueError in one
    line: not a run folder, identities off in that run, a cache entry or timeline missing."""
    m = read_manifest(out_dir)
    threshold = run_threshold(out_dir, m, threshold)
    if not m.get("face_settings_hash"):
        raise ValueError(f"{out_dir}/manifest.json names no face settings: run s2d annotate again")
    cache_dir = run_cache(out_dir, m)
    rows = [p for r in m.get("videos", []) if r.get("status") == "ok"
            for p in _video_persons(out_dir, cache_dir, m["face_settings_hash"], r)]
    videos = [r["video_id"] for r in rows]
    apart = {(a, b) for a in range(len(rows)) for b in range(a + 1, len(rows)) if videos[a] == videos[b]}
    found = group({k: float(k) for k in range(len(rows))},
                  {k: r["descriptor"] for k, r in enumerate(rows) if r["descriptor"] is not None}, apart, threshold)
    for k, r in enumerate(rows):
        r["global_person_id"] = found[k]
    df = pd.DataFrame([{c: r[c] for c in PEOPLE_SCHEMA.names} for r in rows], columns=PEOPLE_SCHEMA.names)
    df = df.sort_values("global_person_id", kind="stable", ignore_index=True)
    return pa.Table.from_pandas(df, schema=PEOPLE_SCHEMA, preserve_index=False).to_pandas()


def people_path(out_dir):
    """``OUT/people.parquet`` (a local path or URI, as ``out_dir``)."""
    return storage.join(storage.location(out_dir), "people.parquet")


def run_threshold(out_dir, manifest: dict, threshold: float | None) -> float:
    """``threshold``, else the run's identity threshold; ValueError when the run grouped no persons."""
    identities = manifest.get("identities") or {}
    if not identities.get("on"):
        raise ValueError(f"{out_dir}: its tracks were not grouped into persons (identities off, or a run before "
                         "them): run s2d annotate again without --no-identities")
    return threshold if threshold is not None else identities.get("threshold") or IDENTITY_THRESHOLD


def write_people(out_dir, threshold: float | None = None):
    """Link the run folder's people (``link_people``) and write them to ``people_path`` atomically; its path."""
    threshold = run_threshold(out_dir, read_manifest(out_dir), threshold)
    table = pa.Table.from_pandas(link_people(out_dir, threshold), schema=PEOPLE_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({"s2d.threshold": str(threshold)})
    return storage.write(people_path(out_dir), lambda f: pq.write_table(table, f))


def read_people(out_dir) -> pd.DataFrame | None:
    """``OUT/people.parquet`` as written, or None when the run folder has none."""
    path = people_path(out_dir)
    return storage.read_table(path).to_pandas() if storage.is_file(path) else None
