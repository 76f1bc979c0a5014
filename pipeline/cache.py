"""Per-video landmark cache: Parquet files keyed by a hash of the face-stage settings.

Layout::

    <cache_dir>/faces/<settings_hash>/<video_id>.faces.parquet   FACES_SCHEMA, one row per face per sampled frame
    <cache_dir>/faces/<settings_hash>/<video_id>.tracks.parquet  TRACKS_SCHEMA, one row per track: its person
                                                                 and face descriptor (re-grouping needs no decode)
    <cache_dir>/faces/<settings_hash>/<video_id>.meta.parquet    META_SCHEMA, one row

Writes are atomic per file (temp file in the same folder, fsync, ``os.replace``). The meta file is removed first
and written last, so its presence marks a complete entry: a crash in between leaves no meta and the video is
redone. ``read_entry`` returns None for missing or incomplete entries and for ``status == "error"`` entries (a
re-run retries failed videos; ``read_meta`` still shows them). ``no_faces`` entries are done (0 face rows).
An entry that cannot be read (truncated, not Parquet, another schema) or that belongs to another video is a miss
too, never an error: the video is redone and its entry replaced; ``check_entry`` says why, in one line.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2d_model.files import sha256_file

from . import storage


def _f(name: str, t: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, t, nullable=nullable)


FACES_SCHEMA = pa.schema([
    _f("video_id", pa.string()),
    _f("frame_index", pa.int64()),  # 0-based index in the decoded stream
    _f("time_s", pa.float64()),  # PTS seconds
    _f("face", pa.int16()),  # index of the face within its frame
    _f("track_id", pa.int32()),
    _f("person_id", pa.int32()),  # the track's person in this video (pipeline.persons)
    _f("score", pa.float32()),
    _f("bbox", pa.list_(pa.float32(), 4)),  # x1, y1, x2, y2 source px
    _f("kps5", pa.list_(pa.float32(), 10)),  # 5 (x, y): eyes, nose, mouth corners
    _f("landmarks68", pa.list_(pa.float32(), 136)),  # 68 (x, y) source px
    _f("width", pa.int32()),  # frame size (after rotation)
    _f("height", pa.int32()),
])

META_SCHEMA = pa.schema([
    _f("video_id", pa.string()),
    _f("source_path", pa.string()),
    _f("duration_s", pa.float64(), True),  # null: unknown
    _f("native_fps", pa.float64(), True),  # null: unknown (e.g. decode error)
    _f("frame_count", pa.int64()),  # decoded frames seen
    _f("sampled_frames", pa.int64()),
    _f("rotation", pa.int32()),
    _f("width", pa.int32(), True),
    _f("height", pa.int32(), True),
    _f("settings_hash", pa.string()),
    _f("settings", pa.string()),  # JSON
    _f("versions", pa.string()),  # JSON: torch, pyav, numpy, pyarrow, s2d-pipeline
    _f("status", pa.string()),  # ok | no_faces | error
    _f("error", pa.string(), True),
    _f("n_faces", pa.int64()),
    _f("n_tracks", pa.int32()),
    _f("decode_seconds", pa.float64(), True),
    _f("total_seconds", pa.float64(), True),
    _f("n_persons", pa.int32()),
    _f("identity_threshold", pa.float64(), True),  # what grouped the persons; null: identities off
])

DESCRIPTOR_SIZE = 128
TRACKS_SCHEMA = pa.schema([
    _f("video_id", pa.string()),
    _f("track_id", pa.int32()),
    _f("person_id", pa.int32()),
    _f("first_s", pa.float64()),  # its first face's time
    _f("n_chips", pa.int32()),  # faces its descriptor averages (0: none fit; the track is a person of its own)
    _f("descriptor", pa.list_(pa.float32(), DESCRIPTOR_SIZE), True),  # face-api's recognition net; null: none
])

STATUSES = ("ok", "no_faces", "error")
_FIXED = {"bbox": 4, "kps5": 10, "landmarks68": 136}


def _jsonable(o: Any):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"settings value of type {type(o).__name__} is not JSON-serialisable: {o!r}")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable, allow_nan=False)


def settings_hash(settings: dict) -> str:
    """First 16 hex chars of sha256 of the canonical JSON (sorted keys) of the face-stage settings."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path, sha256: bool = True) -> dict:
    """A weights file for ``settings``: {name, size, sha256} (or {name, size, mtime} when sha256=False)."""
    p = Path(path)
    st = p.stat()
    fp = {"name": p.name, "size": st.st_size}
    if sha256:
        fp["sha256"] = sha256_file(p)
    else:
        fp["mtime"] = st.st_mtime
    return fp


def library_versions() -> dict:
    """Versions recorded with each entry (from package metadata; nothing heavy is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in [("torch", "torch"), ("pyav", "av"), ("numpy", "numpy"), ("pyarrow", "pyarrow"),
                      ("s2d-pipeline", "s2d-pipeline")]:
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


def _fixed_list(a, size: int, n: int) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(np.asarray(a, np.float32).reshape(n, size)).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), size)


def faces_table(columns: dict) -> pa.Table:
    """numpy columns -> FACES_SCHEMA table. bbox [n,4], kps5 [n,10] or [n,5,2], landmarks68 [n,136] or [n,68,2];
    ``video_id``, ``width``, ``height`` may be scalars (repeated); ``person_id`` absent: the track ids (each track a
    person). n = len(frame_index), 0 allowed."""
    if "person_id" not in columns and "track_id" in columns:
        columns = {**columns, "person_id": columns["track_id"]}
    missing = [f.name for f in FACES_SCHEMA if f.name not in columns]
    if missing:
        raise ValueError(f"faces_table: missing columns {missing}")
    n = len(np.asarray(columns["frame_index"]).reshape(-1))
    arrays = []
    for f in FACES_SCHEMA:
        v = columns[f.name]
        if f.name in _FIXED:
            arrays.append(_fixed_list(v, _FIXED[f.name], n))
        elif f.name == "video_id":
            vals = [v] * n if isinstance(v, str) else [str(x) for x in v]
            arrays.append(pa.array(vals, pa.string()))
        else:
            a = np.asarray(v)
            a = np.full(n, a) if a.ndim == 0 else a.reshape(-1)
            if len(a) != n:
                raise ValueError(f"faces_table: column {f.name} has {len(a)} rows, expected {n}")
            arrays.append(pa.array(a.astype(f.type.to_pandas_dtype()), f.type))
    return pa.Table.from_arrays(arrays, schema=FACES_SCHEMA)


def tracks_table(video_id: str, tracks: dict) -> pa.Table:
    """{track_id: (person_id, first_s, n_chips, descriptor [D] or None)} -> TRACKS_SCHEMA table, tracks in order."""
    ids = sorted(tracks)
    desc = [None if tracks[t][3] is None else np.asarray(tracks[t][3], np.float32).tolist() for t in ids]
    return pa.table({"video_id": [video_id] * len(ids), "track_id": ids, "person_id": [tracks[t][0] for t in ids],
                     "first_s": [float(tracks[t][1]) for t in ids], "n_chips": [tracks[t][2] for t in ids],
                     "descriptor": desc}, schema=TRACKS_SCHEMA)


def face_tracks(table: pa.Table) -> dict:
    """A faces table's tracks, without descriptors: {track_id: (person_id, first_s, 0, None)}."""
    out = {}
    for t, p, s in zip(*(table.column(k).to_pylist() for k in ("track_id", "person_id", "time_s"))):
        out[t] = (p, min(s, out[t][1]) if t in out else s, 0, None)
    return out


def tracks_path(cache_dir: str | Path, settings_hash: str, video_id: str) -> Path | str:
    return storage.join(storage.parent(entry_paths(cache_dir, settings_hash, video_id)[0]),
                        f"{video_id}.tracks.parquet")


def read_tracks(cache_dir: str | Path, settings_hash: str, video_id: str) -> pa.Table:
    """An entry's TRACKS_SCHEMA table (check the entry first: ``check_entry``)."""
    return storage.read_table(tracks_path(cache_dir, settings_hash, video_id))


def entry_paths(cache_dir: str | Path, settings_hash: str, video_id: str) -> tuple[Path | str, Path | str]:
    """(faces path, meta path) of one entry (local paths or URIs, as ``cache_dir``)."""
    if not video_id or "/" in video_id or "\\" in video_id or video_id.startswith(".") or "\0" in video_id:
        raise ValueError(f"video_id {video_id!r} cannot be used as a file name")
    d = storage.join(cache_dir, "faces", settings_hash)
    return storage.join(d, f"{video_id}.faces.parquet"), storage.join(d, f"{video_id}.meta.parquet")


def _meta_table(meta: dict) -> pa.Table:
    row = {}
    for f in META_SCHEMA:
        v = meta.get(f.name)
        if f.name in ("settings", "versions") and not isinstance(v, (str, type(None))):
            v = canonical_json(v)
        if v is None and not f.nullable:
            raise ValueError(f"meta: {f.name} is required")
        row[f.name] = [v]
    if row["status"][0] not in STATUSES:
        raise ValueError(f"meta: status must be one of {STATUSES}, got {row['status'][0]!r}")
    return pa.Table.from_pydict(row, schema=META_SCHEMA)


def write_entry(cache_dir: str | Path, settings_hash: str, video_id: str, faces: dict | pa.Table,
                meta: dict, tracks: dict | pa.Table | None = None) -> tuple[Path | str, Path | str]:
    """Write one video's faces, tracks and meta (meta last). ``meta`` keys follow META_SCHEMA; ``video_id`` and
    ``settings_hash`` come from the arguments, ``n_faces``/``n_tracks``/``n_persons``/``versions``/``rotation``
    default to the faces table / ``library_versions()`` / 0; ``settings``/``versions`` may be dicts (stored as
    JSON). ``tracks``: ``tracks_table``'s dict or table (default: the faces' tracks, without descriptors)."""
    table = faces if isinstance(faces, pa.Table) else faces_table(faces)
    if not table.schema.equals(FACES_SCHEMA):
        table = table.select(FACES_SCHEMA.names).cast(FACES_SCHEMA)
    for f in FACES_SCHEMA:
        if table.column(f.name).null_count:
            raise ValueError(f"faces: column {f.name} has nulls")
    meta = dict(meta)
    for key, val in (("video_id", video_id), ("settings_hash", settings_hash)):
        if meta.setdefault(key, val) != val:
            raise ValueError(f"meta {key} {meta[key]!r} != {val!r}")
    meta.setdefault("n_faces", table.num_rows)
    meta.setdefault("n_tracks", len(np.unique(table.column("track_id").to_numpy())))
    meta.setdefault("n_persons", len(np.unique(table.column("person_id").to_numpy())))
    meta.setdefault("versions", library_versions())
    meta.setdefault("rotation", 0)
    mt = _meta_table(meta)
    if mt.column("n_faces")[0].as_py() != table.num_rows:
        raise ValueError(f"meta n_faces {meta['n_faces']} != {table.num_rows} face rows")

    if not isinstance(tracks, pa.Table):
        tracks = tracks_table(video_id, face_tracks(table) if tracks is None else tracks)

    faces_path, meta_path = entry_paths(cache_dir, settings_hash, video_id)
    storage.remove(meta_path)  # the entry is incomplete from here ...
    storage.write(faces_path, lambda f: pq.write_table(table, f))
    storage.write(tracks_path(cache_dir, settings_hash, video_id), lambda f: pq.write_table(tracks, f))
    storage.write(meta_path, lambda f: pq.write_table(mt, f))  # ... until here
    return faces_path, meta_path


def read_meta(cache_dir: str | Path, settings_hash: str, video_id: str) -> dict | None:
    """The meta row as a dict (settings/versions decoded), whatever its status; None if absent, unreadable or
    another video's (``check_entry`` says why)."""
    return _meta(entry_paths(cache_dir, settings_hash, video_id)[1], video_id)[0]


def read_entry(cache_dir: str | Path, settings_hash: str, video_id: str) -> tuple[pa.Table, dict] | None:
    """(faces table, meta dict) of a complete, non-error entry; None otherwise (then the video must be run)."""
    return check_entry(cache_dir, settings_hash, video_id)[0]


def check_entry(cache_dir: str | Path, settings_hash: str, video_id: str
                ) -> tuple[tuple[pa.Table, dict] | None, str | None]:
    """(``read_entry``'s answer, why it is None): the reason is None for a plain miss (no entry, an incomplete or
    error entry), else one line for the log: "cache entry PATH cannot be read (WHY): redoing the video" or "cache
    entry PATH belongs to video X: redoing the video"."""
    faces_path, meta_path = entry_paths(cache_dir, settings_hash, video_id)
    meta, why = _meta(meta_path, video_id)
    if meta is None or meta["status"] == "error":
        return None, why
    if not storage.is_file(faces_path):
        return None, _unreadable(faces_path, "no such file, but its meta is there")
    try:
        table = storage.read_table(faces_path)
    except Exception as exc:  # truncated, not Parquet, ...
        return None, _unreadable(faces_path, _first_line(exc))
    if not table.schema.equals(FACES_SCHEMA):  # written by another schema version
        return None, _unreadable(faces_path, "its columns are not FACES_SCHEMA")
    if table.num_rows != meta["n_faces"]:  # not the faces this meta describes
        return None, _unreadable(faces_path, f"{table.num_rows} face rows, its meta says {meta['n_faces']}")
    others = sorted(set(table.column("video_id").unique().to_pylist()) - {video_id})
    if others:
        return None, f"cache entry {faces_path} belongs to video {others[0]}: redoing the video"
    path = tracks_path(cache_dir, settings_hash, video_id)
    try:
        tracks = storage.read_table(path)
    except Exception as exc:  # missing, truncated, not Parquet
        return None, _unreadable(path, _first_line(exc))
    if not tracks.schema.equals(TRACKS_SCHEMA) or set(tracks.column("track_id").to_pylist()) != set(
            table.column("track_id").unique().to_pylist()) or set(tracks.column("video_id").to_pylist()) - {video_id}:
        return None, _unreadable(path, "not the TRACKS_SCHEMA rows of its faces' tracks")
    return (table, meta), None


def _meta(path, video_id: str) -> tuple[dict | None, str | None]:
    """(meta, None); (None, None) if absent; (None, why) if unreadable or another video's."""
    if not storage.is_file(path):
        return None, None
    try:
        table = storage.read_table(path)
        if not table.schema.equals(META_SCHEMA) or table.num_rows != 1:
            return None, _unreadable(path, "not one row of META_SCHEMA")
        meta = table.to_pylist()[0]
        for k in ("settings", "versions"):
            meta[k] = json.loads(meta[k])
    except Exception as exc:  # truncated, not Parquet, bad JSON, ...
        return None, _unreadable(path, _first_line(exc))
    if meta["video_id"] != video_id:
        return None, f"cache entry {path} belongs to video {meta['video_id']}: redoing the video"
    return meta, None


def _unreadable(path, why: str) -> str:
    return f"cache entry {path} cannot be read ({why}): redoing the video"


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def list_entries(cache_dir: str | Path, settings_hash: str) -> list[str]:
    """video_ids with a meta file in the settings folder (any status), sorted."""
    files = storage.files(storage.join(cache_dir, "faces", settings_hash), recursive=False)
    return sorted(f.base_name[:-len(".meta.parquet")] for f in files if f.base_name.endswith(".meta.parquet"))


def read_faces(cache_dir: str | Path, settings_hash: str | None = None, video_ids: list[str] | None = None):
    """All complete entries of one settings folder as a pandas DataFrame (FACES_SCHEMA columns; bbox, kps5 and
    landmarks68 are numpy arrays per row). ``settings_hash`` may be omitted when the cache holds only one."""
    if settings_hash is None:
        root = storage.join(cache_dir, "faces")
        found = storage.folders(root)
        if len(found) != 1:
            raise ValueError(f"{root}: pass settings_hash, found {found or 'none'}")
        settings_hash = found[0]
    tables = []
    for vid in video_ids if video_ids is not None else list_entries(cache_dir, settings_hash):
        entry = read_entry(cache_dir, settings_hash, vid)
        if entry is not None:
            tables.append(entry[0])
    return pa.concat_tables(tables or [FACES_SCHEMA.empty_table()]).to_pandas()
