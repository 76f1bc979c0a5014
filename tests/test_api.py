"""The Python API (``from pipeline import annotate, faces, read_timelines, read_faces``) on real Ray and the
real fixture videos: the rows it returns are the rows of the files it wrote, which equal the golden copy."""
from __future__ import annotations

import pandas as pd
import pytest

from golden.check import assert_timelines_equal_golden
from golden.make_golden import inputs
from pipeline import annotate, faces, read_faces, read_timelines


def same_rows(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    a, b = (d.sort_values(keys).reset_index(drop=True) for d in (a, b))
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for c in a.columns:
        assert a[c].map(repr).tolist() == b[c].map(repr).tolist(), c  # arrays per row compared by value


def test_annotate_and_faces_return_the_rows_they_wrote(ray_local, tmp_path, detector_weights, landmark_weights):
    videos = inputs(tmp_path / "videos")
    weights = {"detector_weights": str(detector_weights), "landmark_weights": str(landmark_weights)}
    df = annotate(tmp_path / "videos", out=tmp_path / "out", weights="random-tiny", progress=False, **weights)
    manifest = df.attrs["manifest"]
    assert sorted(v["status"] for v in manifest["videos"]) == ["no_faces", "ok", "ok", "ok"]
    assert_timelines_equal_golden([v for v in manifest["videos"] if v["timeline"]])
    same_rows(df, read_timelines(tmp_path / "out"), ["video_id", "track_id", "segment"])
    assert set(df["video_id"]) == {v["video_id"] for v in manifest["videos"] if v["status"] == "ok"}

    one = str(next(v for v in videos if v.name == "single_face.mp4"))
    rows = faces(one, cache=tmp_path / "out" / "cache", progress=False, **weights)  # the cache annotate wrote
    assert [v["status"] for v in rows.attrs["videos"]] == ["ok"]
    whole = read_faces(tmp_path / "out" / "cache")
    same_rows(rows, whole[whole["video_id"] == rows["video_id"].iloc[0]], ["frame_index", "track_id"])

    with pytest.raises(TypeError, match="unknown option.*segments; known: .*segment_s"):
        annotate(one, out=tmp_path / "x", segments=2.0)
