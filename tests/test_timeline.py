"""Timeline schema, table, atomic write, completeness, summary and plot."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.summary import format_summary, person_panels, plot_timeline, summarize
from pipeline.timeline import (is_complete, read_timeline_meta, read_timelines, superseded, timeline_files,
                               timeline_meta, timeline_path, timeline_schema, timeline_table, write_timeline)
from s2d_model.labels import LABEL_SETS

DFEW = LABEL_SETS["dfew"]
MAFW = LABEL_SETS["mafw"]
HEAD = [("video_id", pa.string()), ("video_path", pa.string()), ("track_id", pa.int32()), ("person_id", pa.int32()),
        ("segment", pa.int32()),
        ("start_s", pa.float64()), ("end_s", pa.float64()), ("n_face_frames", pa.int16()), ("label", pa.string()),
        ("confidence", pa.float32())]
TAIL = [("model", pa.string()), ("bbox", pa.list_(pa.float32(), 4))]


def rows_for(track_id, segment, start=None, seg_s=2.0):
    track_id = np.asarray(track_id)
    segment = np.asarray(segment)
    n = len(track_id)
    start = segment * 1.0 if start is None else np.asarray(start, np.float64)
    return dict(track_id=track_id, segment=segment, start_s=start, end_s=start + seg_s,
                n_face_frames=np.full(n, 16), bbox=np.tile([10.0, 20.0, 110.0, 150.0], (n, 1)))


def probs_for(winners, n_classes, conf=0.6):
    """[n,C] softmax-like rows whose argmax is winners[i] with probability conf."""
    n = len(winners)
    p = np.full((n, n_classes), (1 - conf) / (n_classes - 1), np.float32)
    p[np.arange(n), winners] = conf
    return p


@pytest.mark.parametrize("name,expected_p", [
    ("dfew", ["p_happy", "p_sad", "p_neutral", "p_angry", "p_surprise", "p_disgust", "p_fear"]),
    ("mafw", ["p_anger", "p_anxiety", "p_contempt", "p_disappointment", "p_disgust", "p_fear", "p_happiness",
              "p_helplessness", "p_neutral", "p_sadness", "p_surprise"]),
])
def test_schema_exact(name, expected_p):
    s = timeline_schema(LABEL_SETS[name])
    expected = HEAD + [(c, pa.float32()) for c in expected_p] + TAIL
    assert [(f.name, f.type) for f in s] == expected
    assert timeline_schema(["Very Happy", "Sad"]).names[10:12] == ["p_very_happy", "p_sad"]


def test_table_label_confidence_and_metadata():
    winners = [0, 6, 2, 6]
    probs = probs_for(winners, 7)
    probs[1] = [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.7]
    rows = rows_for([0, 0, 0, 1], [0, 1, 2, 0])
    t = timeline_table("abc", "/data/My Video.mp4", rows, probs, DFEW, "s2d-dfew", "h123", "ok")
    assert t.schema.remove_metadata().equals(timeline_schema(DFEW))
    df = t.to_pandas()
    assert df["label"].tolist() == ["Happy", "Fear", "Neutral", "Fear"]
    np.testing.assert_allclose(df["confidence"], probs.max(1))
    np.testing.assert_allclose(df[[f"p_{c.lower()}" for c in DFEW]].to_numpy(), probs)  # columns in label order
    assert df["model"].unique().tolist() == ["s2d-dfew"] and df["video_path"].iloc[0] == "/data/My Video.mp4"
    np.testing.assert_allclose(np.stack(df["bbox"]), rows["bbox"])
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert meta == {"s2d.settings_hash": "h123", "s2d.labels": json.dumps(list(DFEW)), "s2d.status": "ok",
                    "s2d.complete": "true", "s2d.video_id": "abc", "s2d.source": "/data/My Video.mp4",
                    "s2d.base_hash": "h123"}
    with pytest.raises(ValueError):
        timeline_table("abc", "x.mp4", rows, probs, DFEW, "m", "h", "error")
    with pytest.raises(ValueError):
        timeline_table("abc", "x.mp4", rows, probs[:, :5], DFEW, "m", "h", "ok")


def test_empty_table(tmp_path):
    t = timeline_table("v0", "none.mp4", rows_for([], []), np.zeros((0, 11)), MAFW, "s2d-mafw", "h", "no_faces")
    assert t.num_rows == 0 and t.schema.remove_metadata().equals(timeline_schema(MAFW))
    p = write_timeline(t, timeline_path(tmp_path, "v0", "none.mp4"))
    assert read_timeline_meta(p) == {"settings_hash": "h", "labels": list(MAFW), "status": "no_faces",
                                     "complete": True, "num_rows": 0, "video_id": "v0", "source": "none.mp4",
                                     "base_hash": "h"}
    assert is_complete(p, "h", "v0")


def test_timeline_path(tmp_path):
    assert timeline_path(tmp_path, "ab12", "/x/y/My clip (1).final.mov") == \
        tmp_path / "My_clip_1_final.ab12.timeline.parquet"
    assert timeline_path("out", "id", "/x/.hidden").name == "hidden.id.timeline.parquet"
    assert timeline_path("out", "id", "/x/...").name == "video.id.timeline.parquet"
    assert timeline_path("out", "id", "/x/-rf.mp4").name == "rf.id.timeline.parquet"  # never a "-" first
    with pytest.raises(ValueError):
        timeline_path("out", "a/b", "v.mp4")


def test_atomic_write_and_is_complete(tmp_path):
    t = timeline_table("v1", "a.mp4", rows_for([0], [0]), probs_for([1], 7), DFEW, "s2d-dfew", "good", "ok")
    p = write_timeline(t, timeline_path(tmp_path / "out", "v1", "a.mp4"))
    assert p.is_file() and os.listdir(p.parent) == [p.name]  # no temp file left
    assert pq.read_table(p).equals(t)
    assert is_complete(p, "good", "v1")
    assert timeline_meta(pq.read_table(p)) == read_timeline_meta(p) == \
        {"settings_hash": "good", "labels": list(DFEW), "status": "ok", "complete": True, "num_rows": 1,
         "video_id": "v1", "source": "a.mp4", "base_hash": "good"}
    assert not is_complete(p, "other", "v1")  # settings changed
    assert not is_complete(p, "good", "v2")  # another video's rows under its name
    assert not is_complete(tmp_path / "missing.timeline.parquet", "good", "v1")
    # a Parquet file without the s2d metadata (e.g. written by hand)
    bare = tmp_path / "bare.timeline.parquet"
    pq.write_table(t.replace_schema_metadata(None), bare)
    assert read_timeline_meta(bare) is None and timeline_meta(pq.read_table(bare)) is None
    assert not is_complete(bare, "good", "v1")
    incomplete = tmp_path / "inc.timeline.parquet"
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"s2d.complete": b"false"}), incomplete)
    assert not is_complete(incomplete, "good", "v1") and timeline_meta(pq.read_table(incomplete)) is None
    # a truncated (corrupt) file
    corrupt = tmp_path / "corrupt.timeline.parquet"
    corrupt.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert read_timeline_meta(corrupt) is None and not is_complete(corrupt, "good", "v1")
    corrupt.write_bytes(b"not parquet at all")
    assert not is_complete(corrupt, "good", "v1")
    # overwrite in place: still one file
    write_timeline(t, p)
    assert sorted(os.listdir(p.parent)) == [p.name]


def test_a_file_written_before_its_owner_was_stored_is_judged_by_its_rows(tmp_path):
    t = timeline_table("v1", "/v/a.mp4", rows_for([0], [0]), probs_for([1], 7), DFEW, "m", "h", "ok")
    old = {k: v for k, v in t.schema.metadata.items() if k not in (b"s2d.video_id", b"s2d.source")}
    p = write_timeline(t.replace_schema_metadata(old), timeline_path(tmp_path, "v1", "/v/a.mp4"))
    assert is_complete(p, "h", "v1") and not is_complete(p, "h", "v2")
    e = timeline_table("v1", "/v/a.mp4", rows_for([], []), np.zeros((0, 7)), DFEW, "m", "h", "no_faces")
    old = {k: v for k, v in e.schema.metadata.items() if k not in (b"s2d.video_id", b"s2d.source")}
    p = write_timeline(e.replace_schema_metadata(old), p)
    assert not is_complete(p, "h", "v1")  # no rows to tell whose: done again


def test_superseded_are_the_same_files_earlier_content_only(tmp_path):
    def write(vid, path):
        t = timeline_table(vid, path, rows_for([0], [0]), probs_for([1], 7), DFEW, "m", "h", "ok")
        return write_timeline(t, timeline_path(tmp_path, vid, path))

    old, now = write("0ld", "/v/a.mp4"), write("n0w", "/v/a.mp4")
    write("n1", "/w/a.mp4")  # another folder's a.mp4: the same stem, another source
    write("b1", "/v/b.mp4")
    files = timeline_files(tmp_path)
    assert superseded(files, "n0w", "/v/a.mp4") == [old]
    assert superseded(files, "0ld", "/v/a.mp4") == [now]
    assert superseded(files, "b1", "/v/b.mp4") == []


def test_a_name_that_is_not_utf8_is_written_as_escaped_bytes(tmp_path):
    odd = os.fsdecode(b"/v/caf\xe9.mp4")
    t = timeline_table("v1", odd, rows_for([0], [0]), probs_for([1], 7), DFEW, "m", "h", "ok")
    p = write_timeline(t, timeline_path(tmp_path, "v1", odd))
    assert p.name == "caf.v1.timeline.parquet"
    assert pq.read_table(p).column("video_path")[0].as_py() == "/v/caf\\xe9.mp4"
    assert read_timeline_meta(p)["source"] == "/v/caf\\xe9.mp4"
    assert superseded(timeline_files(tmp_path), "v2", odd) == [p]


def hand_made(tmp_path) -> pd.DataFrame:
    """Video a: track 0 with 4 segments (Happy x2, Sad x1, Neutral x1), track 3 with a Happy/Sad tie;
    video b: no faces (empty file); a stale-settings file is still read (read_timelines reads every finished file)."""
    probs = probs_for([0, 0, 1, 2], 7)
    probs[2, 1] = 0.9  # track 0: Sad is confident but rare
    tie = probs_for([0, 1], 7)
    tie[1, 1] = 0.8  # track 3: one Happy (0.6), one Sad (0.8) -> Sad by mean probability
    rows = rows_for([0, 0, 0, 0, 3, 3], [0, 1, 2, 5, 1, 2])
    t = timeline_table("a1", "/v/a.mp4", rows, np.concatenate([probs, tie]), DFEW, "s2d-dfew", "h", "ok")
    write_timeline(t, timeline_path(tmp_path, "a1", "/v/a.mp4"))
    e = timeline_table("b2", "/v/b.mp4", rows_for([], []), np.zeros((0, 7)), DFEW, "s2d-dfew", "h", "no_faces")
    write_timeline(e, timeline_path(tmp_path, "b2", "/v/b.mp4"))
    (tmp_path / "junk.timeline.parquet").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="junk.timeline.parquet: not a finished timeline"):
        return read_timelines(tmp_path)


def test_read_and_summarize(tmp_path):
    df = hand_made(tmp_path)
    assert len(df) == 6 and set(df["video_id"]) == {"a1"}
    s = summarize(df, DFEW)
    assert s[["video_path", "person_id", "tracks"]].values.tolist() == [["/v/a.mp4", 0, "0"], ["/v/a.mp4", 3, "3"]]
    r0, r3 = s.iloc[0], s.iloc[1]
    assert r0["n_segments"] == 4 and r0["dominant"] == "Happy"
    assert r0["seconds"] == pytest.approx(4.0 + 2.0)  # [0,4) and [5,7)
    assert (r0["start_s"], r0["end_s"]) == (0.0, 7.0)
    assert (r0["share_happy"], r0["share_sad"], r0["share_neutral"], r0["share_fear"]) == (0.5, 0.25, 0.25, 0.0)
    assert r3["dominant"] == "Sad" and r3["seconds"] == pytest.approx(3.0)
    assert [c for c in s.columns if c.startswith("share_")] == [f"share_{c.lower()}" for c in DFEW]
    np.testing.assert_allclose(s[[f"share_{c.lower()}" for c in DFEW]].sum(axis=1), 1.0)
    lower = summarize(df, [c[2:] for c in df.columns if c.startswith("p_")])  # names from the p_ columns
    assert lower["dominant"].tolist() == ["happy", "sad"]
    np.testing.assert_allclose(lower.filter(like="share_").to_numpy(), s.filter(like="share_").to_numpy())
    text = format_summary(s)
    assert "a.mp4" in text and "Happy" in text and "50%" in text and "Sad" in text
    assert summarize(df.iloc[:0], DFEW).empty and format_summary(summarize(df.iloc[:0], DFEW)) == "no tracks"
    assert read_timelines(tmp_path / "nothing").empty


def test_plot_timeline(tmp_path):
    from matplotlib.image import imread

    df = hand_made(tmp_path)
    png = plot_timeline(df, DFEW, tmp_path / "plots" / "all.png")
    assert png.is_file() and png.stat().st_size > 10_000
    img = imread(png)
    assert img.shape[1] == 1100 and img.shape[0] >= 500  # two rows (two tracks)
    one = plot_timeline(df, DFEW, tmp_path / "one.png", video="a.mp4")
    assert imread(one).shape == img.shape
    # a single track, MAFW (11 classes)
    t = timeline_table("m", "/v/m.mp4", rows_for([2] * 5, range(5)), probs_for([0, 3, 3, 10, 8], 11), MAFW,
                       "s2d-mafw", "h", "ok")
    single = plot_timeline(t.to_pandas(), MAFW, tmp_path / "single.png")
    h = imread(single).shape[0]
    assert single.stat().st_size > 10_000 and 250 <= h < img.shape[0]
    with pytest.raises(ValueError, match="no timeline rows"):
        plot_timeline(df.iloc[:0], DFEW, tmp_path / "empty.png")
    with pytest.raises(ValueError, match="no timeline rows"):
        plot_timeline(df, DFEW, tmp_path / "none.png", video="b.mp4")
    assert not (tmp_path / "empty.png").exists()


def test_plot_panels_span_the_whole_video_and_untrained_weights_are_flagged(tmp_path):
    from matplotlib.image import imread

    df = hand_made(tmp_path)
    panels = person_panels(df)  # one per person (here each track its own); without durations, to the last end
    assert [(p, t, xlim) for p, t, _, xlim in panels] == [("/v/a.mp4", 0, (0.0, 7.0)), ("/v/a.mp4", 3, (0.0, 7.0))]
    assert all(g["start_s"].is_monotonic_increasing for _, _, g, _ in panels)
    vid = df["video_id"].iloc[0]
    assert [xlim for *_, xlim in person_panels(df, {vid: 12.5})] == [(0.0, 12.5)] * 2  # the manifest's duration

    def red(png):  # share of strongly red pixels (the warning's colour) in the band above the first panel
        img = imread(png)[:30, :, :3]
        return float(((img[..., 0] > 0.6) & (img[..., 1] < 0.25) & (img[..., 2] < 0.25)).mean())

    plain = plot_timeline(df, DFEW, tmp_path / "plain.png", durations={vid: 12.5})
    warned = plot_timeline(df, DFEW, tmp_path / "warned.png", durations={vid: 12.5}, warning="untrained weights")
    assert red(plain) == 0 and red(warned) > 0.005
    assert imread(warned).shape[0] > imread(plain).shape[0]


def persons_run(tmp_path):
    """A run folder of one video: person 0 in tracks 0 (0-3 s: Happy, Happy) and 2 (5-8 s: Sad, Happy), person 1 in
    track 1 (0-2 s: Neutral)."""
    rows = rows_for([0, 0, 1, 2, 2], [0, 1, 0, 0, 1], start=[0, 1, 0, 5, 6])
    rows["person_id"] = np.array([0, 0, 1, 0, 0])
    t = timeline_table("a1", "/v/a.mp4", rows, probs_for([0, 0, 2, 1, 0], 7), DFEW, "s2d-dfew", "h", "ok")
    path = write_timeline(t, timeline_path(tmp_path, "a1", "/v/a.mp4"))
    (tmp_path / "manifest.json").write_text(json.dumps({"labels": list(DFEW), "videos": [
        {"video_id": "a1", "video_path": "/v/a.mp4", "status": "ok", "timeline": path.name, "duration_s": 9.0}]}))
    return t.to_pandas()


def test_summary_and_plot_are_per_person(tmp_path):
    from matplotlib.image import imread
    from typer.testing import CliRunner

    from cli import app

    df = persons_run(tmp_path)
    s = summarize(df, DFEW)
    assert s[["person_id", "tracks", "n_tracks", "n_segments", "seconds", "start_s", "end_s", "dominant"]].values.tolist() \
        == [[0, "0, 2", 2, 4, 6.0, 0.0, 8.0, "Happy"], [1, "1", 1, 1, 2.0, 0.0, 2.0, "Neutral"]]
    assert (s.loc[0, "share_happy"], s.loc[0, "share_sad"]) == (0.75, 0.25)
    panels = person_panels(df, {"a1": 9.0})
    assert [(p, pid, g.track_id.tolist(), xlim) for p, pid, g, xlim in panels] == [
        ("/v/a.mp4", 0, [0, 0, 2, 2], (0.0, 9.0)), ("/v/a.mp4", 1, [1], (0.0, 9.0))]
    res = CliRunner().invoke(app, ["timeline", str(tmp_path), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    lines = [line.split() for line in res.output.splitlines()]
    assert lines[0][:6] == ["video", "person", "tracks", "segments", "seconds", "dominant"]
    assert lines[1][:8] == ["a.mp4", "0", "0,", "2", "4", "6.0", "Happy", "75%"]
    assert lines[2][:7] == ["a.mp4", "1", "1", "1", "2.0", "Neutral", "0%"]
    assert lines[3] == ["plot:", str(tmp_path / "p.png")]
    two = imread(tmp_path / "p.png").shape[0]
    one = imread(plot_timeline(df.assign(person_id=0), DFEW, tmp_path / "one.png")).shape[0]
    three = imread(plot_timeline(df.assign(person_id=df.track_id), DFEW, tmp_path / "three.png")).shape[0]
    assert one < two < three  # a panel per person, not per track
