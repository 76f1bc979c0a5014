"""The Python API (``from pipeline import annotate, faces, read_timelines, read_faces``) on real Ray and the
real fixture videos: the rows it returns are the rows of the files it wrote, which equal the golden copy."""
from __future__ import annotations

import pandas as pd
import pytest

from golden.check import assert_timelines_equal_golden
from pipeline import annotate, faces, read_faces, read_timelines


def same_rows(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    assert sorted(a.columns) == sorted(b.columns)  # in the order of the first file's label set (files differ)
    a, b = (d[sorted(a.columns)].sort_values(keys).reset_index(drop=True) for d in (a, b))
    assert len(a) == len(b) > 0
    for c in a.columns:
        assert a[c].map(repr).tolist() == b[c].map(repr).tolist(), c  # arrays per row compared by value


def test_annotate_and_faces_return_the_rows_they_wrote(annotated_run, tmp_path, detector_weights, landmark_weights):
    out, df = annotated_run  # annotate(<the golden videos and images/>, out=..., weights="random-tiny", ...)
    weights = {"detector_weights": str(detector_weights), "landmark_weights": str(landmark_weights)}
    manifest = df.attrs["manifest"]
    videos = [v for v in manifest["videos"] if v["kind"] == "video"]
    assert sorted(v["status"] for v in videos) == ["no_faces", "ok", "ok", "ok"]
    assert_timelines_equal_golden([v for v in videos if v["timeline"]], out=out)
    same_rows(df, read_timelines(out), ["video_id", "track_id", "segment"])
    assert set(df["video_id"]) == {v["video_id"] for v in manifest["videos"] if v["status"] == "ok"}

    one = next(v["video_path"] for v in videos if v["video_path"].endswith("single_face.mp4"))
    rows = faces(one, cache=out / "cache", progress=False, **weights)  # the cache annotate wrote
    assert [v["status"] for v in rows.attrs["videos"]] == ["ok"]
    whole = read_faces(out / "cache")
    same_rows(rows, whole[whole["video_id"] == rows["video_id"].iloc[0]], ["frame_index", "track_id"])

    with pytest.raises(TypeError, match="unknown option.*segments; known: .*segment_s"):
        annotate(one, out=tmp_path / "x", segments=2.0)
