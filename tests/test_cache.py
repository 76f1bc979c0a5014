"""Landmark cache: schemas, round trip, atomicity, hashing, pandas access."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cache as C


def make_columns(n: int, video_id: str = "vid", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "video_id": video_id,
        "frame_index": np.arange(n, dtype=np.int64) * 3,
        "time_s": np.arange(n) * 0.1,
        "face": np.zeros(n, np.int16),
        "track_id": (np.arange(n) % 2).astype(np.int32),
        "score": rng.random(n).astype(np.float32),
        "bbox": rng.random((n, 4)).astype(np.float32) * 500,
        "kps5": rng.random((n, 5, 2)).astype(np.float32) * 500,
        "landmarks68": rng.random((n, 68, 2)).astype(np.float32) * 500,
        "width": 640,
        "height": 360,
    }


def make_meta(status: str = "ok", **kw) -> dict:
    meta = {"source_path": "/data/vid.mp4", "duration_s": 2.4, "native_fps": 30.0, "frame_count": 72,
            "sampled_frames": 24, "rotation": 0, "width": 640, "height": 360,
            "settings": {"detector": "retinaface-mobilenet", "fps": 10.0}, "status": status, "error": None,
            "decode_seconds": 0.5, "total_seconds": 1.5}
    meta.update(kw)
    return meta


def test_schemas_exact():
    want = [("video_id", pa.string()), ("frame_index", pa.int64()), ("time_s", pa.float64()),
            ("face", pa.int16()), ("track_id", pa.int32()), ("person_id", pa.int32()), ("score", pa.float32()),
            ("bbox", pa.list_(pa.float32(), 4)), ("kps5", pa.list_(pa.float32(), 10)),
            ("landmarks68", pa.list_(pa.float32(), 136)), ("width", pa.int32()), ("height", pa.int32())]
    assert [(f.name, f.type) for f in C.FACES_SCHEMA] == want
    for name, size in [("bbox", 4), ("kps5", 10), ("landmarks68", 136)]:
        t = C.FACES_SCHEMA.field(name).type
        assert pa.types.is_fixed_size_list(t) and t.list_size == size and t.value_type == pa.float32()
    assert C.META_SCHEMA.names == [
        "video_id", "source_path", "duration_s", "native_fps", "frame_count", "sampled_frames", "rotation",
        "width", "height", "settings_hash", "settings", "versions", "status", "error", "n_faces", "n_tracks",
        "decode_seconds", "total_seconds", "n_persons", "identity_threshold"]
    assert C.TRACKS_SCHEMA.names == ["video_id", "track_id", "person_id", "first_s", "n_chips", "descriptor"]
    assert C.TRACKS_SCHEMA.field("descriptor").type == pa.list_(pa.float32(), 128)
    assert C.TRACKS_SCHEMA.field("descriptor").nullable
    assert C.META_SCHEMA.field("duration_s").nullable and C.META_SCHEMA.field("error").nullable
    assert not C.META_SCHEMA.field("status").nullable
    types = {f.name: f.type for f in C.META_SCHEMA}
    assert types["frame_count"] == pa.int64() and types["n_tracks"] == pa.int32() and types["rotation"] == pa.int32()
    assert types["total_seconds"] == pa.float64() and types["settings"] == pa.string()


def test_faces_table_and_empty():
    t = C.faces_table(make_columns(5))
    assert t.schema.equals(C.FACES_SCHEMA) and t.num_rows == 5
    assert t.column("video_id").to_pylist() == ["vid"] * 5 and t.column("width").to_pylist() == [640] * 5
    lm = np.stack(t.column("landmarks68").to_numpy(zero_copy_only=False)).reshape(5, 68, 2)
    np.testing.assert_array_equal(lm, make_columns(5)["landmarks68"])
    e = C.faces_table(make_columns(0))
    assert e.num_rows == 0 and e.schema.equals(C.FACES_SCHEMA)
    with pytest.raises(ValueError, match="missing"):
        C.faces_table({"frame_index": np.zeros(1)})


def test_round_trip(tmp_path):
    h = C.settings_hash({"a": 1})
    cols = make_columns(7)
    fp, mp = C.write_entry(tmp_path, h, "vid", cols, make_meta())
    assert fp == tmp_path / "faces" / h / "vid.faces.parquet" and mp == tmp_path / "faces" / h / "vid.meta.parquet"
    table, meta = C.read_entry(tmp_path, h, "vid")
    assert table.equals(C.faces_table(cols))
    assert meta["video_id"] == "vid" and meta["settings_hash"] == h and meta["n_faces"] == 7 and meta["n_tracks"] == 2
    assert meta["settings"] == make_meta()["settings"] and meta["error"] is None and meta["duration_s"] == 2.4
    assert set(meta["versions"]) == {"torch", "pyav", "numpy", "pyarrow", "s2d-pipeline"}
    assert meta["versions"]["pyarrow"] == pa.__version__
    assert set(meta) == set(C.META_SCHEMA.names)
    assert pq.read_schema(mp).equals(C.META_SCHEMA)
    # writing a pa.Table works too, and replaces the entry
    C.write_entry(tmp_path, h, "vid", C.faces_table(make_columns(3, seed=1)), make_meta())
    assert C.read_entry(tmp_path, h, "vid")[0].num_rows == 3


def test_empty_entry_no_faces(tmp_path):
    C.write_entry(tmp_path, "h", "nf", make_columns(0, "nf"), make_meta("no_faces"))
    table, meta = C.read_entry(tmp_path, "h", "nf")
    assert table.num_rows == 0 and table.schema.equals(C.FACES_SCHEMA)
    assert meta["status"] == "no_faces" and meta["n_faces"] == 0 and meta["n_tracks"] == 0


def test_error_entry_is_not_done(tmp_path):
    C.write_entry(tmp_path, "h", "bad", make_columns(0, "bad"),
                  make_meta("error", error="InvalidDataError: moov atom not found", native_fps=None,
                            duration_s=None, width=None, height=None, frame_count=0, sampled_frames=0))
    assert C.read_entry(tmp_path, "h", "bad") is None  # a re-run retries it
    assert C.read_meta(tmp_path, "h", "bad")["error"].startswith("InvalidDataError")
    with pytest.raises(ValueError, match="status"):
        C.write_entry(tmp_path, "h", "x", make_columns(0, "x"), make_meta("done"))
    with pytest.raises(ValueError, match="source_path"):
        C.write_entry(tmp_path, "h", "x", make_columns(0, "x"), make_meta(source_path=None))


def test_atomic_and_crash_between_files(tmp_path, monkeypatch):
    C.write_entry(tmp_path, "h", "v", make_columns(4), make_meta())
    folder = tmp_path / "faces" / "h"
    assert sorted(p.name for p in folder.iterdir()) == ["v.faces.parquet", "v.meta.parquet",
                                                        "v.tracks.parquet"]  # no temp files

    real = C.storage.write

    def crash_on_meta(path, data):
        if str(path).endswith(".meta.parquet"):
            raise KeyboardInterrupt("killed")
        return real(path, data)

    monkeypatch.setattr(C.storage, "write", crash_on_meta)
    with pytest.raises(KeyboardInterrupt):  # rewrite of an existing entry dies after the faces file
        C.write_entry(tmp_path, "h", "v", make_columns(6, seed=3), make_meta())
    assert C.read_entry(tmp_path, "h", "v") is None  # old meta was removed first: incomplete, not stale
    with pytest.raises(KeyboardInterrupt):
        C.write_entry(tmp_path, "h", "w", make_columns(2, "w"), make_meta())
    assert C.read_entry(tmp_path, "h", "w") is None
    monkeypatch.undo()

    def fail_mid_write(table, where, *a, **k):  # crash while the parquet bytes are written
        where.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(C.pq, "write_table", fail_mid_write)
    with pytest.raises(OSError):
        C.write_entry(tmp_path, "h", "z", make_columns(2, "z"), make_meta())
    monkeypatch.undo()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert not (folder / "z.faces.parquet").exists()
    # a meta whose n_faces disagrees with the faces file (e.g. faces replaced by hand) is not trusted
    C.write_entry(tmp_path, "h", "v", make_columns(4), make_meta())
    pq.write_table(C.faces_table(make_columns(1)), folder / "v.faces.parquet")
    assert C.read_entry(tmp_path, "h", "v") is None


def test_bad_video_id(tmp_path):
    for vid in ["a/b", "", ".hidden"]:
        with pytest.raises(ValueError):
            C.write_entry(tmp_path, "h", vid, make_columns(0, vid or "x"), make_meta())


def test_settings_hash():
    s = {"detector": "retinaface-mobilenet", "weights": {"name": "m.pth", "sha256": "ab" * 32}, "fps": 10.0,
         "score_threshold": 0.6, "landmarks": "mobilefacenet"}
    h = C.settings_hash(s)
    assert len(h) == 16 and all(c in "0123456789abcdef" for c in h)
    assert C.settings_hash(dict(reversed(list(s.items())))) == h  # key order does not matter
    assert C.settings_hash(json.loads(json.dumps(s))) == h
    assert h == "e850cf7f8f818fcf"  # pinned: a change here silently invalidates every existing cache
    for k, v in [("fps", 5.0), ("score_threshold", 0.61), ("landmarks", "fan")]:
        assert C.settings_hash({**s, k: v}) != h
    assert C.settings_hash({**s, "weights": {"name": "m.pth", "sha256": "cd" * 32}}) != h
    assert C.settings_hash({"fps": np.float64(10.0)}) == C.settings_hash({"fps": 10.0})


def test_file_fingerprint(tmp_path):
    p = tmp_path / "w.pth"
    p.write_bytes(b"abc")
    fp = C.file_fingerprint(p)
    assert fp == {"name": "w.pth", "size": 3,
                  "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert set(C.file_fingerprint(p, sha256=False)) == {"name", "size", "mtime"}


def test_read_faces_pandas(tmp_path):
    h = C.settings_hash({"x": 1})
    C.write_entry(tmp_path, h, "a", make_columns(3, "a"), make_meta())
    C.write_entry(tmp_path, h, "b", make_columns(2, "b"), make_meta())
    C.write_entry(tmp_path, h, "c", make_columns(0, "c"), make_meta("no_faces"))
    C.write_entry(tmp_path, h, "d", make_columns(0, "d"), make_meta("error", error="boom"))
    assert C.list_entries(tmp_path, h) == ["a", "b", "c", "d"]

    df = C.read_faces(tmp_path)  # the only settings folder
    assert isinstance(df, pd.DataFrame) and list(df.columns) == C.FACES_SCHEMA.names
    assert len(df) == 5 and sorted(df.video_id.unique()) == ["a", "b"]
    # user example: landmarks of track 0 of video "a" as an [n,68,2] array
    sel = df[(df.video_id == "a") & (df.track_id == 0)]
    lm = np.stack(sel.landmarks68.to_numpy()).reshape(-1, 68, 2)
    assert lm.shape == (2, 68, 2)
    np.testing.assert_allclose(lm, make_columns(3, "a")["landmarks68"][[0, 2]])
    # plain pandas works on a single file too
    one = pd.read_parquet(tmp_path / "faces" / h / "b.faces.parquet")
    assert len(one) == 2 and one.frame_index.dtype == np.int64
    assert len(C.read_faces(tmp_path, h, video_ids=["c"])) == 0
    C.write_entry(tmp_path, "otherhash", "a", make_columns(1, "a"), make_meta())
    with pytest.raises(ValueError, match="settings_hash"):
        C.read_faces(tmp_path)
    assert os.path.isdir(tmp_path / "faces" / "otherhash")


def test_unreadable_or_foreign_entry_is_a_miss_with_a_reason(tmp_path):
    """A corrupt entry, or another video's, is redone (and replaced), never an error that stops every run."""
    h = "h"
    assert C.check_entry(tmp_path, h, "v") == (None, None)  # a plain miss: no entry, no reason
    C.write_entry(tmp_path, h, "v", make_columns(4, "v"), make_meta())
    entry, why = C.check_entry(tmp_path, h, "v")
    assert entry is not None and why is None
    faces_path, meta_path = C.entry_paths(tmp_path, h, "v")

    faces_path.write_bytes(faces_path.read_bytes()[:100])  # truncated faces file
    entry, why = C.check_entry(tmp_path, h, "v")
    assert entry is None and C.read_entry(tmp_path, h, "v") is None
    assert why.startswith(f"cache entry {faces_path} cannot be read (") and why.endswith("): redoing the video")
    assert "\n" not in why and C.read_meta(tmp_path, h, "v")["video_id"] == "v"  # the meta itself is fine

    meta_path.write_bytes(b"not parquet at all")  # garbage meta file
    assert C.read_meta(tmp_path, h, "v") is None and C.read_entry(tmp_path, h, "v") is None
    entry, why = C.check_entry(tmp_path, h, "v")
    assert entry is None and why.startswith(f"cache entry {meta_path} cannot be read (") and "\n" not in why

    pq.write_table(pa.table({"x": [1]}), meta_path)  # Parquet, but not a meta
    assert C.read_meta(tmp_path, h, "v") is None
    assert C.check_entry(tmp_path, h, "v")[1] == \
        f"cache entry {meta_path} cannot be read (not one row of META_SCHEMA): redoing the video"

    C.write_entry(tmp_path, h, "w", make_columns(2, "w"), make_meta())  # another video's entry under v's name
    for suffix in (".faces.parquet", ".meta.parquet"):
        (meta_path.parent / f"v{suffix}").write_bytes((meta_path.parent / f"w{suffix}").read_bytes())
    assert C.read_meta(tmp_path, h, "v") is None and C.read_entry(tmp_path, h, "v") is None
    assert C.check_entry(tmp_path, h, "v") == (None, f"cache entry {meta_path} belongs to video w: redoing the video")
    assert C.read_entry(tmp_path, h, "w") is not None

    C.write_entry(tmp_path, h, "v", make_columns(3, "v"), make_meta())  # the redone video replaces it
    table, meta = C.read_entry(tmp_path, h, "v")
    assert table.num_rows == 3 and meta["video_id"] == "v"
    pq.write_table(C.faces_table(make_columns(3, "w")), faces_path)  # faces of another video, same row count
    assert C.check_entry(tmp_path, h, "v") == (None, f"cache entry {faces_path} belongs to video w: redoing the video")
    pq.write_table(pa.table({"x": [1, 2, 3]}), faces_path)  # wrong schema
    assert C.check_entry(tmp_path, h, "v")[1] == \
        f"cache entry {faces_path} cannot be read (its columns are not FACES_SCHEMA): redoing the video"
    faces_path.unlink()
    assert "no such file" in C.check_entry(tmp_path, h, "v")[1]
    assert C.list_entries(tmp_path, h) == ["v", "w"] and len(C.read_faces(tmp_path, h)) == 2  # v skipped, w read
