"""`s2d overlay`: the overlay video of a run (boxes, persons, labels drawn on the source), its pure parts, and
small hand-made runs (a cache entry, a timeline and a manifest written directly) for rotation, odd sizes and audio
that MP4 cannot hold."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from media import write_video
from pipeline import cache
from pipeline.decode import PyAVDecoder
from pipeline.overlay import (HOLD_STEPS, PERSON_COLOURS, draw_faces, find_run_video, held_sample, overlay_path,
                              segment_at, write_overlay)
from pipeline.timeline import timeline_table, write_timeline

LABELS = ["Happy", "Sad", "Neutral"]


# ------------------------------------------------------------------------------------------ helpers


def probe(path) -> dict:
    """What the tests compare: codec, size, decoded frames' PTS (seconds), stream duration, audio codec or None."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        audio = c.streams.audio[0].codec_context.codec.canonical_name if c.streams.audio else None
        info = {"codec": v.codec_context.codec.canonical_name, "width": v.codec_context.width,
                "height": v.codec_context.height, "fps": float(v.average_rate or 0),
                "duration": float(v.duration * v.time_base) if v.duration else None, "audio": audio}
        info["times"] = [float(f.time) for f in c.decode(video=0)]
    return info


def frame(path, index: int) -> np.ndarray:
    """Decoded frame ``index``, upright (counted as the face stage counts them)."""
    return PyAVDecoder().read_frames(path, [index])["frames"][0].astype(np.int16)


def edge_diff(ov: np.ndarray, src: np.ndarray, bbox) -> float:
    """Median over the middle of the box's left and right edges of the largest channel difference."""
    x1, y1, x2, y2 = (round(float(v)) for v in bbox)
    rows = slice(y1 + (y2 - y1) * 2 // 5, y1 + (y2 - y1) * 3 // 5 + 1)
    cols = [x1, x1 + 1, x2 - 1, x2]
    return float(np.median(np.abs(ov[rows][:, cols] - src[rows][:, cols]).max(-1)))


def write_av(path: Path, frames: list[np.ndarray], fps: int, audio_codec: str | None, rate: int = 8000) -> Path:
    """A video (libx264) with a mono 440 Hz tone in ``audio_codec`` (or none), as long as the video."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream(audio_codec, rate=rate, layout="mono") if audio_codec else None
        for img in frames:
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(v.encode())
        if a is not None:
            n = rate * len(frames) // fps
            tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.int16)[None]
            af = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
            af.sample_rate, af.pts = rate, 0
            c.mux(a.encode(af))
            c.mux(a.encode())
    return path


def fake_run(tmp: Path, video: Path, faces: dict[int, list[tuple[int, list[float]]]],
             segments: list[tuple[int, float, float, list[float]]], fps: float = 8.0, persons: dict | None = None) -> Path:
    """An `annotate --out` folder written by hand: ``faces`` {frame index: [(track_id, bbox)]} as the cache entry
    (each track its own person), ``segments`` [(track_id, start_s, end_s, probabilities)] as the timeline, its
    persons ``persons`` {track: person} (default: the track ids). Returns the out folder."""
    out, cache_dir, vid, fh = tmp / "out", tmp / "cache", "v0000000000000001", "facehash00000000"
    times = {}
    for i, t, img in PyAVDecoder().iter_frames(video, fps=None):
        times[i], (h, w) = t, img.shape[:2]
    rows = [(i, f, tid, box) for i in sorted(faces) for f, (tid, box) in enumerate(faces[i])]
    cache.write_entry(cache_dir, fh, vid, {
        "video_id": vid, "frame_index": np.array([r[0] for r in rows], np.int64),
        "time_s": np.array([times[r[0]] for r in rows]), "face": np.array([r[1] for r in rows]),
        "track_id": np.array([r[2] for r in rows]), "score": np.ones(len(rows)),
        "bbox": np.array([r[3] for r in rows], np.float32).reshape(-1, 4), "kps5": np.zeros((len(rows), 10)),
        "landmarks68": np.zeros((len(rows), 136)), "width": w, "height": h},
        {"source_path": str(video), "duration_s": None, "native_fps": None, "frame_count": len(times),
         "sampled_frames": len(faces), "settings": {}, "status": "ok" if rows else "no_faces"})
    n = len(segments)
    table = timeline_table(vid, str(video), {
        "track_id": np.array([s[0] for s in segments]), "segment": np.arange(n),
        "person_id": np.array([(persons or {}).get(s[0], s[0]) for s in segments]),
        "start_s": np.array([s[1] for s in segments], np.float64), "end_s": np.array([s[2] for s in segments]),
        "n_face_frames": np.full(n, 16), "bbox": np.zeros((n, 4))},
        np.array([s[3] for s in segments], np.float32).reshape(n, len(LABELS)), LABELS, "m", "h", "ok")
    timeline = write_timeline(table, out / f"{video.stem}.{vid}.timeline.parquet")
    manifest = {"face_settings_hash": fh, "cache_dir": str(cache_dir), "labels": LABELS, "face_settings": {"fps": fps},
                "videos": [{"video_id": vid, "video_path": str(video), "status": "ok", "timeline": str(timeline),
                            "duration_s": None},
                           {"video_id": "i0000000000000002", "video_path": str(tmp / "photo.jpg"), "kind": "image",
                            "status": "ok", "timeline": None}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def gray(h: int, w: int, n: int) -> list[np.ndarray]:
    """Flat gray frames with a white square in the top-left corner (so a wrong rotation would show)."""
    img = np.full((h, w, 3), 110, np.uint8)
    img[2:10, 2:10] = 255
    return [img] * n


# ------------------------------------------------------------------------------------------ pure parts


def test_segment_at_picks_the_covering_segment_whose_centre_is_nearest():
    start, end = np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 3.5])  # 2 s segments every 1 s, the last cut short
    assert segment_at(start, end, 0.2) == 0
    assert segment_at(start, end, 1.2) == 0  # centres 1.0 and 2.0
    assert segment_at(start, end, 1.6) == 1
    assert segment_at(start, end, 1.5) == 0  # a tie: the earlier
    assert segment_at(start, end, 2.9) == 2  # centres 2.0 and 2.75
    assert segment_at(start, end, 3.5) == 2 and segment_at(start, end, 3.6) is None
    assert segment_at(np.zeros(0), np.zeros(0), 1.0) is None


def test_held_sample_holds_a_sampled_frame_for_at_most_the_hold():
    index = np.array([0, 4, 8, 20])  # 30 fps video sampled at ~8 fps; frames 12-19 had no face
    times = index / 30
    hold = HOLD_STEPS / 8  # 0.1875 s
    assert held_sample(index, times, 0, 0.0, hold) == 0
    assert held_sample(index, times, 3, 3 / 30, hold) == 0
    assert held_sample(index, times, 4, 4 / 30, hold) == 1
    assert held_sample(index, times, 13, 13 / 30, hold) == 2  # 0.167 s after frame 8
    assert held_sample(index, times, 14, 14 / 30, hold) is None  # 0.2 s after: the face is gone
    assert held_sample(index, times, 20, 20 / 30, hold) == 3
    assert held_sample(np.array([5]), np.array([5 / 30]), 2, 2 / 30, hold) is None  # before the first sample


def test_draw_faces_draws_box_label_and_bar_and_nothing_else(monkeypatch):
    from PIL import ImageDraw

    texts, text = [], ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: texts.append(t) or text(
        self, xy, t, *a, **k))
    img = np.full((120, 160, 3), 100, np.uint8)
    out = draw_faces(img, [(1, [40, 40, 100, 90], ("Happy", 0.7, np.array([0.7, 0.2, 0.1])))])
    assert texts == ["person 1 · Happy 0.70"]
    assert out.shape == img.shape and out.dtype == np.uint8 and (img == 100).all()  # input untouched
    assert tuple(out[65, 40]) == PERSON_COLOURS[1] and tuple(out[65, 100]) == PERSON_COLOURS[1]  # left, right edge
    assert (out[65, 45:95] == 100).all()  # inside the box: the face stays visible
    assert (out[30:40, 40:60] != 100).any()  # the label, above the box
    assert len({tuple(out[93, x]) for x in range(42, 99)}) >= 3  # the probability bar under it: 3 classes
    ys, xs = np.nonzero((out != 100).any(-1))
    assert xs.min() == 40 and ys.min() >= 40 - 20 and ys.max() < 100  # nothing elsewhere
    # at the frame's edges the label and the bar move inside the box; no segment: box and person only
    edge = draw_faces(img, [(0, [0, 0, 159, 119], None), (2, [10, 60, 60, 119], ("Sad", 0.5, [0.2, 0.5, 0.3]))])
    assert tuple(edge[60, 0]) == PERSON_COLOURS[0] and tuple(edge[90, 10]) == PERSON_COLOURS[2]
    assert texts[1:] == ["person 0", "person 2 · Sad 0.50"]


def test_find_run_video_by_name_path_or_id(tmp_path):
    m = {"videos": [{"video_id": "aaa", "video_path": "/in/a.mp4"}, {"video_id": "bbb", "video_path": "/in/x/b.mp4"},
                    {"video_id": "ccc", "video_path": "/in/y/b.mp4"},
                    {"video_id": "ddd", "video_path": "/in/p.jpg", "kind": "image"}]}
    assert find_run_video("OUT", "a.mp4", m)["video_id"] == "aaa"
    assert find_run_video("OUT", "/in/x/b.mp4", m)["video_id"] == "bbb"
    assert find_run_video("OUT", "ccc", m)["video_path"] == "/in/y/b.mp4"
    with pytest.raises(ValueError, match="names 2 videos of the run OUT: pass its path or video_id"):
        find_run_video("OUT", "b.mp4", m)
    with pytest.raises(ValueError, match=r"^p.jpg is not in the run OUT: its videos are a.mp4, b.mp4, b.mp4$"):
        find_run_video("OUT", "p.jpg", m)  # an image has no overlay
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        find_run_video(tmp_path, "a.mp4")
    assert overlay_path("OUT", "aaa", "/in/my clip!.mov") == Path("OUT/overlays/my_clip.aaa.overlay.mp4")
    assert overlay_path("s3://b/run", "aaa", "s3://b/v/a.mp4") == "s3://b/run/overlays/a.aaa.overlay.mp4"


# ------------------------------------------------------------------------------------------ a real annotate run


@pytest.fixture(scope="module")
def run(annotated):
    manifest = json.loads((annotated / "manifest.json").read_text())
    return annotated, {Path(v["video_path"]).name: v for v in manifest["videos"]}, manifest


@pytest.mark.parametrize("name", ["single_face.mp4", "group.mp4"])
def test_overlay_keeps_the_sources_frames_timing_size_and_audio(run, tmp_path, name):
    out, videos, _ = run
    path = write_overlay(out, name, tmp_path / "o.mp4")
    assert path == tmp_path / "o.mp4" and sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]  # no temp file
    src, ov = probe(videos[name]["video_path"]), probe(path)
    assert ov["codec"] == "h264" and (ov["width"], ov["height"]) == (src["width"], src["height"])
    assert len(ov["times"]) == len(src["times"]) and np.allclose(ov["times"], src["times"], atol=1e-4)
    assert abs(ov["duration"] - src["duration"]) <= 1 / src["fps"]
    assert ov["audio"] == src["audio"]  # single_face.mp4 has MP3 audio (copied), group.mp4 none
    assert (name == "single_face.mp4") == (src["audio"] is not None)


def test_boxes_are_drawn_where_the_cache_says(run, tmp_path):
    out, videos, manifest = run
    for name, min_tracks in (("single_face.mp4", 1), ("group.mp4", 5)):
        rec = videos[name]
        faces = cache.read_entry(out / manifest["cache_dir"], manifest["face_settings_hash"],
                                 rec["video_id"])[0].to_pandas()
        index = int(faces.frame_index.unique()[1])  # a sampled frame with faces
        here = faces[faces.frame_index == index]
        assert here.track_id.nunique() >= min_tracks
        path = out / rec["overlay"]  # written by the fixture's annotate(..., overlay=True), as `s2d annotate --overlay`
        assert path == overlay_path(out, rec["video_id"], rec["video_path"])
        ov, src = frame(path, index), frame(rec["video_path"], index)
        for box in here.bbox:
            assert edge_diff(ov, src, box) > 60, (name, box)
        x_free = int(max(b[2] for b in faces.bbox)) + 60  # right of every face box and label
        assert np.abs(ov[:, x_free:] - src[:, x_free:]).mean() < 6
        if name == "single_face.mp4":  # 30 fps sampled at 8: the next frame, not sampled, shows the same box
            assert index + 1 not in set(faces.frame_index)
            assert edge_diff(frame(path, index + 1), frame(rec["video_path"], index + 1), here.bbox.iloc[0]) > 60


def test_cli(run, tmp_path):
    out, _, _ = run
    res = CliRunner().invoke(app, ["overlay", str(out), "single_face.mp4", "-o", str(tmp_path / "x.mp4")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"overlay: {tmp_path / 'x.mp4'}" and (tmp_path / "x.mp4").stat().st_size > 1000
    res = CliRunner().invoke(app, ["overlay", str(out), "missing.mp4", "-o", str(tmp_path / "y.mp4")])
    assert res.exit_code == 1 and not (tmp_path / "y.mp4").exists()
    assert res.output.strip().splitlines() == [(f"error: missing.mp4 is not in the run {out}: its videos are "
                                                "face_noface.mov, group.mp4, no_face.mp4, single_face.mp4")]


# ------------------------------------------------------------------------------------------ hand-made runs


def test_a_face_is_held_until_the_next_sample_then_gone_and_labels_follow_the_segment(tmp_path):
    video = write_video(tmp_path / "v.mp4", gray(48, 64, 10), fps=10)  # frames at 0.0, 0.1, ..., 0.9 s
    box = [20.0, 10.0, 50.0, 40.0]
    out = fake_run(tmp_path, video, {0: [(0, box)], 5: [(0, box)]}, [(0, 0.0, 0.3, [0.1, 0.8, 0.1])], fps=8.0)
    path = write_overlay(out, "v.mp4")
    assert path == out / "overlays" / "v.v0000000000000001.overlay.mp4"
    src = frame(video, 0)
    drawn = [edge_diff(frame(path, i), src, box) > 60 for i in range(10)]
    # sampled at 0.0 and 0.5 s (8 fps: held 0.1875 s): frames 0, 1 and 5, 6 have the box
    assert drawn == [True, True, False, False, False, True, True, False, False, False]
    bar = np.s_[42:46, 22:48]  # the probability bar under the box
    assert np.abs(frame(path, 0)[bar] - src[bar]).max() > 60  # frame 0 at 0.0 s: the segment's bar
    assert np.abs(frame(path, 5)[bar] - src[bar]).max() < 20  # 0.5 s: no segment covers it: box and person only


def test_rotated_and_odd_sized_sources_and_audio_mp4_cannot_hold(tmp_path):
    # stored 64x48, displayed rotated by 90 degrees: 48x64 upright, the cache's coordinates are upright ones
    video = write_video(tmp_path / "r.mp4", gray(48, 64, 4), fps=8, rotation=90)
    box = [8.0, 20.0, 40.0, 50.0]
    out = fake_run(tmp_path / "r", video, {i: [(3, box)] for i in range(4)}, [(3, 0.0, 0.5, [0.2, 0.3, 0.5])])
    path = write_overlay(out, "r.mp4", tmp_path / "r.overlay.mp4")
    ov, src = frame(path, 2), frame(video, 2)
    assert ov.shape == src.shape == (64, 48, 3) and edge_diff(ov, src, box) > 60
    assert src[56:62, 2:10].mean() > 200  # the stored top-left corner is at the bottom left when upright ...
    assert np.abs(ov[56:, :16] - src[56:, :16]).mean() < 6  # ... and in the overlay too
    # odd size (PNG frames in a MOV) with mu-law audio: padded to even, the audio re-encoded to AAC
    odd = tmp_path / "odd.mov"
    with av.open(str(odd), "w") as c:
        v = c.add_stream("png", rate=8)
        v.width, v.height, v.pix_fmt = 63, 47, "rgb24"
        a = c.add_stream("pcm_mulaw", rate=8000, layout="mono")
        for img in gray(47, 63, 8):
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(v.encode())
        af = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        af.sample_rate, af.pts = 8000, 0
        c.mux(a.encode(af))
        c.mux(a.encode())
    out = fake_run(tmp_path / "o", odd, {0: [(0, [5.0, 5.0, 30.0, 30.0])]}, [])
    info = probe(write_overlay(out, "odd.mov", tmp_path / "odd.mp4"))
    assert (info["width"], info["height"], info["audio"], len(info["times"])) == (64, 48, "aac", 8)
    padded = frame(tmp_path / "odd.mp4", 3)
    assert padded[:47, 62].mean() > 80 and padded[:47, 63].mean() < 30 and padded[47, :62].mean() < 30


def test_copied_aac_audio_and_failures(tmp_path, monkeypatch):
    video = write_av(tmp_path / "a.mp4", gray(48, 64, 8), fps=8, audio_codec="aac")
    out = fake_run(tmp_path, video, {0: [(0, [20.0, 10.0, 50.0, 40.0])]}, [])
    dest = tmp_path / "keep" / "a.mp4"
    info = probe(write_overlay(out, "a.mp4", dest))
    assert info["audio"] == "aac" and len(info["times"]) == 8
    before = dest.read_bytes()
    # a failure while writing leaves the old file as it was and no temp file
    from pipeline import overlay

    def boom(*a, **k):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(overlay, "draw_faces", boom)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_overlay(out, "a.mp4", dest)
    assert dest.read_bytes() == before and [p.name for p in dest.parent.iterdir()] == ["a.mp4"]
    monkeypatch.undo()
    # no landmark-cache entry, or a video that failed: one clear message each
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "cache_dir": str(tmp_path / "empty")}))
    with pytest.raises(FileNotFoundError, match=r"no complete landmark-cache entry for a.mp4 .*run s2d annotate again"):
        write_overlay(out, "a.mp4", tmp_path / "x.mp4")
    manifest["videos"][0].update(status="error", error="a.mp4: truncated", timeline=None)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"a.mp4 has no finished timeline .* \(status error: a.mp4: truncated\)"):
        write_overlay(out, "a.mp4", tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_a_face_is_labelled_with_its_person_as_the_timeline_has_it(tmp_path):
    """Track 3 of the cache is person 1 in the timeline (its cache rows say 3: re-grouped since): the overlay draws
    what draw_faces draws for person 1, its colour and "person 1 · Sad 0.80"."""
    video = write_video(tmp_path / "v.mp4", gray(96, 128, 4), fps=8)
    box, probs = [30.0, 30.0, 80.0, 80.0], [0.1, 0.8, 0.1]
    out = fake_run(tmp_path, video, {i: [(3, box)] for i in range(4)}, [(3, 0.0, 1.0, probs)], persons={3: 1})
    ov, src = frame(write_overlay(out, "v.mp4"), 2), frame(video, 2).astype(np.uint8)
    want = [draw_faces(src, [(p, box, ("Sad", 0.8, np.array(probs)))]).astype(np.int16) for p in (1, 3)]
    person1, person3 = (float(np.abs(ov - w).mean()) for w in want)  # H.264 leaves ~3 (measured: 3.0 against 11.6)
    assert person1 < 5 and 2 * person1 < person3
