"""Per-segment emotion timelines: schema, atomic Parquet write, completeness check and reading (the summary and
plot of ``s2d timeline`` are ``pipeline.summary``).

One file per video: ``<out>/<stem>.<video_id>.timeline.parquet``, one row per (track, segment), TIMELINE columns
(``timeline_schema``): video_id, video_path, track_id, person_id (the track's person in the video:
``pipeline.persons``), segment, start_s, end_s, n_face_frames, label, confidence,
``p_<class>`` per class of the label set (lower case, spaces -> "_", in the label set's order), model, bbox (mean
face box of the segment, x1 y1 x2 y2 source px). The schema's key/value metadata makes a file reusable:
``s2d.settings_hash``, ``s2d.labels`` (JSON list), ``s2d.status`` (ok | no_faces), ``s2d.complete`` = "true",
whose rows they are, ``s2d.video_id`` and ``s2d.source`` (the video's path); ``s2d.base_hash``, the settings
hash of every identity threshold's rows (a re-run with another threshold re-groups the persons, nothing else);
and ``s2d.thumbnails``, JSON
{track_id: data: URI of a 96 px JPEG of the track's highest-score aligned face}, which the report shows (a file
written before annotate stored them: the report decodes the faces again). A file is written atomically (temp
file in the same folder, fsync, ``os.replace``), so a present file with that metadata is a finished video;
``is_complete(path, settings_hash, video_id)`` is the skip test of a re-run.

A run folder shows each input once: ``manifest.json`` lists the current timeline of each input (paths relative to
the folder), readers take those (``current_timelines``), and a re-run removes the timelines of a file's earlier
content (``superseded``).

Reading with pandas::

    import pandas as pd
    df = pd.read_parquet("out/clip.0123abcd.timeline.parquet")     # or pipeline.timeline.read_timelines("out")
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .sources import display

STATUSES = ("ok", "no_faces")
META_KEYS = ("settings_hash", "labels", "status", "complete")
OWNER_KEYS = ("video_id", "source", "base_hash")  # whose rows (files written before they were stored lack them)


def class_column(name: str) -> str:
    """'Happy' -> 'happy'; 'Some Class' -> 'some_class' (the part after p_ / share_)."""
    return re.sub(r"\s+", "_", name.strip().lower())


def prob_columns(labels: Sequence[str]) -> list[str]:
    return [f"p_{class_column(c)}" for c in labels]


def timeline_schema(labels: Sequence[str]) -> pa.Schema:
    """The timeline columns for a label set (no metadata; ``timeline_table`` adds it)."""
    f = lambda name, t: pa.field(name, t, nullable=False)  # noqa: E731
    return pa.schema(
        [f("video_id", pa.string()), f("video_path", pa.string()), f("track_id", pa.int32()),
         f("person_id", pa.int32()), f("segment", pa.int32()), f("start_s", pa.float64()), f("end_s", pa.float64()),
         f("n_face_frames", pa.int16()), f("label", pa.string()), f("confidence", pa.float32())]
        + [f(c, pa.float32()) for c in prob_columns(labels)]
        + [f("model", pa.string()), f("bbox", pa.list_(pa.float32(), 4))]
    )


def timeline_table(video_id: str, video_path: str, rows: dict, probs, labels: Sequence[str], model: str,
                   settings_hash: str, status: str, thumbnails: dict[int, str] | None = None,
                   model_input: dict | None = None, base_hash: str | None = None) -> pa.Table:
    """rows: numpy columns track_id, person_id (absent: the track ids), segment, start_s, end_s, n_face_frames [n]
    and bbox [n,4]; probs float[n,C]
    (softmax, C = len(labels)). label = the argmax class (label set's spelling), confidence = its probability.
    ``thumbnails`` {track_id: data: URI}: those of the rows' tracks are kept in the metadata. ``model_input``: the
    model's crop and frame order, kept as ``s2d.crop`` and ``s2d.frame_order``."""
    labels = list(labels)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    n = len(np.asarray(rows["track_id"]).reshape(-1))
    probs = np.asarray(probs, np.float32).reshape(n, len(labels))  # [n,C]
    schema = timeline_schema(labels)
    top = probs.argmax(1) if n else np.zeros(0, np.int64)  # [n]
    cols = {
        "video_id": pa.array([video_id] * n, pa.string()),
        "video_path": pa.array([display(str(video_path))] * n, pa.string()),
        "label": pa.array([labels[i] for i in top], pa.string()),
        "confidence": pa.array(probs[np.arange(n), top], pa.float32()),
        "model": pa.array([model] * n, pa.string()),
        "bbox": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(rows["bbox"], np.float32).reshape(n * 4), pa.float32()), 4),
    }
    for name in ("track_id", "person_id", "segment", "start_s", "end_s", "n_face_frames"):
        a = np.asarray(rows.get(name, rows["track_id"]) if name == "person_id" else rows[name]).reshape(-1)
        if len(a) != n:
            raise ValueError(f"timeline_table: column {name} has {len(a)} rows, expected {n}")
        t = schema.field(name).type
        cols[name] = pa.array(a.astype(t.to_pandas_dtype()), t)
    for j, name in enumerate(prob_columns(labels)):
        cols[name] = pa.array(probs[:, j], pa.float32())
    meta = {"s2d.settings_hash": settings_hash, "s2d.labels": json.dumps(labels), "s2d.status": status,
            "s2d.complete": "true", "s2d.video_id": video_id, "s2d.source": display(str(video_path)),
            "s2d.base_hash": base_hash or settings_hash}
    for k, v in (model_input or {}).items():
        if v is not None:
            meta[f"s2d.{k}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    if thumbnails is not None:
        tracks = set(np.asarray(rows["track_id"]).reshape(-1).tolist())
        meta["s2d.thumbnails"] = json.dumps({str(t): uri for t, uri in sorted(thumbnails.items()) if t in tracks})
    return pa.Table.from_arrays([cols[name] for name in schema.names], schema=schema.with_metadata(meta))


def windows_table(video_id: str, video_path: str, clips: list, labels: Sequence[str], model: str,
                  settings_hash: str, status: str = "ok", thumbnails: dict[int, str] | None = None,
                  model_input: dict | None = None, persons: dict[int, int] | None = None,
                  base_hash: str | None = None) -> pa.Table:
    """A video's classified clips [(Segment with the video's track id, probs [C])] -> its timeline table: one row
    per (track, window) in that order; a window's test-time views are averaged, its times, face count and box are
    its first view's. ``persons``: {track: person} (None: each track its own person, its id)."""
    windows: dict[tuple[int, int], list] = {}
    for seg, probs in sorted(clips, key=lambda c: (c[0].track_id, c[0].segment, c[0].view)):
        windows.setdefault((seg.track_id, seg.segment), []).append((seg, probs))
    first = [views[0][0] for views in windows.values()]
    rows = {"track_id": np.array([s.track_id for s in first], np.int32),
            "person_id": np.array([(persons or {}).get(s.track_id, s.track_id) for s in first], np.int32),
            "segment": np.array([s.segment for s in first], np.int32),
            "start_s": np.array([s.start_s for s in first], np.float64),
            "end_s": np.array([s.end_s for s in first], np.float64),
            "n_face_frames": np.array([s.n_face_frames for s in first], np.int16),
            "bbox": np.array([s.bbox_mean for s in first], np.float32).reshape(-1, 4)}
    p = np.stack([np.mean([pr for _, pr in views], axis=0) for views in windows.values()]) if windows else \
        np.zeros((0, len(labels)), np.float32)
    return timeline_table(video_id, video_path, rows, p.astype(np.float32), labels, model, settings_hash, status,
                          thumbnails, model_input, base_hash)


def with_persons(table: pa.Table, persons: dict[int, int], settings_hash: str) -> pa.Table:
    """A timeline table with its rows' person ids re-grouped (``persons`` {track: person}) and the settings hash
    they now answer to; everything else as it was."""
    person = pa.array([persons[t] for t in table.column("track_id").to_pylist()], pa.int32())
    meta = {**table.schema.metadata, b"s2d.settings_hash": settings_hash.encode()}
    i = table.schema.get_field_index("person_id")
    return table.set_column(i, table.schema.field(i), person).replace_schema_metadata(meta)


def _stem(video_path) -> str:
    """The file name's stem in letters, digits, "_" and "-", never starting with "-" (a trap in a shell)."""
    stem = re.sub(r"[^A-Za-z0-9_\-]+", "_", Path(str(video_path)).stem).lstrip("_-").rstrip("_")
    return stem[:80] or "video"


def timeline_path(out_dir, video_id: str, video_path) -> Path | str:
    """<out_dir>/<sanitised stem>.<video_id>.timeline.parquet (a local path or URI, as ``out_dir``)"""
    if not video_id or re.search(r"[/\\\0]", video_id) or video_id.startswith("."):
        raise ValueError(f"video_id {video_id!r} cannot be used in a file name")
    return storage.join(out_dir, f"{_stem(storage.name(video_path))}.{video_id}.timeline.parquet")


def write_timeline(table: pa.Table, path) -> Path | str:
    """Atomic write (``storage.write``: locally a temp file renamed over it; an object uploaded whole)."""
    return storage.write(path, lambda f: pq.write_table(table, f))


def read_timeline_meta(path) -> dict | None:
    """{"settings_hash", "labels" (list), "status", "complete": True, "num_rows", "video_id", "source"} of a finished
    timeline file (its footer only; the last two None in a file written before they were stored); None when the
    file is missing, unreadable, or lacks the s2d.* metadata."""
    try:
        with storage.open_input(path) as f:
            pf = pq.ParquetFile(f)
            return _timeline_meta(pf.schema_arrow.metadata, pf.metadata.num_rows)
    except Exception:  # missing, truncated, not Parquet
        return None


def timeline_meta(table: pa.Table) -> dict | None:
    """``read_timeline_meta`` of a timeline table already read (one read of the file, not two)."""
    return _timeline_meta(table.schema.metadata, table.num_rows)


def _timeline_meta(raw, num_rows: int) -> dict | None:
    try:
        meta = {k: (raw or {})[f"s2d.{k}".encode()].decode() for k in META_KEYS}
        labels = json.loads(meta["labels"])
    except Exception:  # no/partial metadata, bad JSON
        return None
    if meta["complete"] != "true" or meta["status"] not in STATUSES or not isinstance(labels, list):
        return None
    owner = {k: (raw[f"s2d.{k}".encode()].decode() if f"s2d.{k}".encode() in raw else None) for k in OWNER_KEYS}
    return {**meta, "labels": labels, "complete": True, "num_rows": num_rows, **owner}


def timeline_thumbnails(table: pa.Table) -> dict[int, str] | None:
    """{track_id: data: URI} a timeline table stores, or None when it has none (written before they were)."""
    raw = (table.schema.metadata or {}).get(b"s2d.thumbnails")
    return None if raw is None else {int(t): uri for t, uri in json.loads(raw).items()}


def is_complete(path, settings_hash: str, video_id: str) -> dict | None:
    """``read_timeline_meta(path)`` when ``path`` is a finished timeline of video ``video_id`` written with these
    settings (a re-run may skip the video); None otherwise: another video's rows under this name are not done. A file
    written before the video id was stored is this video's when it has rows and all are this video's."""
    meta = read_timeline_meta(path)
    if meta is None or meta["settings_hash"] != settings_hash:
        return None
    if meta["video_id"] is None and meta["num_rows"]:
        ids = set(storage.read_table(path, columns=["video_id"]).column("video_id").to_pylist())
        return meta if ids == {video_id} else None
    return meta if meta["video_id"] == video_id else None


def superseded(paths, video_id: str, video_path) -> list[Path | str]:
    """Of the timeline files ``paths`` (a run folder's ``timeline_files``), those of an earlier content of the file
    at ``video_path`` (their source is this path, their video id another: the file was replaced or re-encoded
    since), which a re-run removes."""
    stem, source = _stem(storage.name(video_path)), display(str(video_path))
    found = []
    for p in paths:
        name = storage.name(p)
        if not name.startswith(f"{stem}.") or name == f"{stem}.{video_id}.timeline.parquet":
            continue
        meta = read_timeline_meta(p)
        if meta is None:
            continue
        if meta["source"] is None and meta["num_rows"]:  # written before the source was stored: its rows say
            meta["source"] = storage.read_table(p, columns=["video_path"]).column("video_path")[0].as_py()
        if meta["source"] == source and meta["video_id"] != video_id:
            found.append(p)
    return found


def read_manifest(out_dir) -> dict:
    """An ``s2d annotate --out`` folder's ``manifest.json``; FileNotFoundError / ValueError in one line."""
    path = storage.join(out_dir, "manifest.json")
    if not storage.is_file(path):
        raise FileNotFoundError(f"{path} not found: pass an `s2d annotate --out` folder")
    try:
        m = json.loads(storage.read_text(path))
    except ValueError as e:
        raise ValueError(f"{path} is not a manifest: {e}") from None
    if not isinstance(m, dict) or not isinstance(m.get("videos", []), list) or \
            not all(isinstance(r, dict) and "video_id" in r and "video_path" in r for r in m.get("videos", [])):
        raise ValueError(f"{path} is not a manifest: not an object with a list of videos; run s2d annotate again")
    return m


def in_run(out_dir, path) -> Path | str | None:
    """A path the manifest holds (relative to the run folder; an older manifest's absolute path or a URI as it is)."""
    return None if path in (None, "", "None") else storage.beside(storage.join(out_dir, "manifest.json"), path)


def run_cache(out_dir, manifest: dict) -> Path | str:
    """The landmark cache a run used: the manifest's ``cache_dir``, else (an older manifest) ``<out>/cache``."""
    return in_run(out_dir, manifest.get("cache_dir")) or storage.join(out_dir, "cache")


def current_timelines(out_dir, manifest: dict | None = None) -> list[Path | str]:
    """The timeline file of each input of the run folder, as its manifest lists them; without a manifest (timeline
    files copied out of their run), every ``*.timeline.parquet`` in the folder."""
    if manifest is None and not storage.is_file(storage.join(out_dir, "manifest.json")):
        return timeline_files(out_dir)
    manifest = read_manifest(out_dir) if manifest is None else manifest
    return [in_run(out_dir, r["timeline"]) for r in manifest.get("videos", [])
            if r.get("status") in STATUSES and r.get("timeline")]


def timeline_files(out_dir) -> list[Path | str]:
    """The ``*.timeline.parquet`` files directly under ``out_dir`` (local paths or URIs), sorted."""
    return [storage.location(f.path) for f in storage.files(out_dir, recursive=False)
            if f.base_name.endswith(".timeline.parquet")]


def finished_timelines(out_dir) -> list[Path | str]:
    """``current_timelines`` that are finished timeline files; each other one is a warning (missing, unreadable or
    cut short), and left out."""
    import warnings

    found = []
    for p in current_timelines(out_dir):
        if read_timeline_meta(p) is not None:
            found.append(p)
        else:
            warnings.warn(f"{p}: not a finished timeline (missing, unreadable or cut short): left out; run s2d "
                          "annotate again", stacklevel=2)
    return found


def read_timelines(out_dir) -> pd.DataFrame:
    """The current timeline of each input of a run folder (``finished_timelines``), concatenated (bbox: a numpy
    array per row). Files of different label sets give the union of their p_ columns (NaN where a file has no such
    class)."""
    return read_timeline_files(finished_timelines(out_dir))


def read_timeline_files(paths) -> pd.DataFrame:
    """These timeline files (local paths or URIs), concatenated as ``read_timelines`` does."""
    frames = [storage.read_table(p).to_pandas() for p in paths]
    frames = [f for f in frames if len(f)]
    if not frames:
        return timeline_schema([]).empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)


def by_label_set(paths, df: pd.DataFrame) -> list[tuple[list[str], pd.DataFrame]]:
    """``df``'s rows split by their file's label set (a run's videos and still images may be labelled by models of
    different label sets), in the order the sets first appear in the timeline files ``paths``: [(labels, rows)]."""
    groups: dict[tuple, set] = {}
    for p in paths:
        meta = read_timeline_meta(p)
        if meta is not None:  # <stem>.<video_id>.timeline.parquet: the stem has no dots
            groups.setdefault(tuple(meta["labels"]), set()).add(meta["video_id"] or storage.name(p).split(".")[1])
    found = [(list(labels), df[df["video_id"].isin(ids)]) for labels, ids in groups.items()]
    return [(labels, rows) for labels, rows in found if len(rows)]
