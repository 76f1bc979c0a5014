"""The annotate chain's driver-side parts and its resource plan, without Ray (the chain itself: test_annotate)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.classify import Classifier
from pipeline.run import TimelineAssembler, plan_pools
from pipeline.segments import Segment
from pipeline.sources import Source

SHAPES = [(c, g) for c in (1, 2, 3, 4, 6, 8, 16, 64, 256) for g in (0, 1, 2, 4, 8)]


@pytest.mark.parametrize("emotions", [False, True])
def test_every_stage_fits_on_the_cluster_at_once(emotions):
    for cpus, gpus in SHAPES:
        pools = plan_pools(cpus, gpus, emotions)
        assert set(pools) == ({"decode", "detect", "landmarks", "track"} |
                              ({"plan", "cut", "s2d"} if emotions else set()))
        assert sum(p.size * p.num_cpus for p in pools.values()) <= cpus + 1e-9, (cpus, gpus, pools)
        assert sum(p.size * p.num_gpus for p in pools.values()) <= gpus + 1e-9, (cpus, gpus, pools)
        assert all(p.size >= 1 for p in pools.values()) and pools["track"].size == 1
        if emotions and gpus >= 2:
            assert pools["s2d"].num_gpus == 1.0 and pools["s2d"].size <= gpus - 1
            assert cpus < 8 or pools["s2d"].size == gpus - 1  # one per GPU but the face actors' one, CPUs allowing
        if emotions and not gpus:
            assert pools["s2d"].num_gpus == 0.0 and pools["detect"].num_gpus == 0.0


def test_two_cpus_reserve_one_and_three_quarters():
    pools = plan_pools(2, 0, emotions=True)
    assert sum(p.size * p.num_cpus for p in pools.values()) == pytest.approx(1.75)
    assert pools["s2d"].size == 1 and pools["s2d"].num_cpus == 0.5
    assert plan_pools(16, 0, emotions=True)["s2d"].size == 4  # one S2D actor per 4 CPUs


def _segment(track: int, k: int) -> Segment:
    t = np.linspace(k, k + 2, 16)
    return Segment(track_id=track, segment=k, start_s=float(k), end_s=float(k + 2), frame_index=np.arange(16) + 8 * k,
                   time_s=t, kps5=np.zeros((16, 10), np.float32), bbox=np.tile([10, 20, 110, 140], (16, 1)).astype(
                       np.float32), n_face_frames=16)


@pytest.fixture
def assembler(tmp_path):
    classifier = Classifier("random-tiny", None, "dfew", Path("unused"))
    sources = {v: Source(f"/videos/{v}.mp4", v, 1, 0.0) for v in ("a", "b", "c")}
    return TimelineAssembler(tmp_path, "hash", classifier, "random-tiny", sources)


def test_clips_may_arrive_before_their_video_row(assembler):
    segments = [_segment(0, 0), _segment(0, 1), _segment(1, 0)]
    p = np.eye(7, dtype=np.float32)
    # the stream does not keep order between a video row and its clips: two clips first
    assert assembler.add("a", "0:1:0", p[1], "") is None and assembler.add("a", "1:0:0", p[2], "") is None
    assert assembler.plan("a", {"status": "ok", "error": None}, segments) is None  # one clip still missing
    rec = assembler.add("a", "0:0:0", p[0], "")
    assert rec["status"] == "ok" and rec["n_segments"] == 3 and rec["n_tracks"] == 2
    df = pq.read_table(rec["timeline"]).to_pandas()
    assert list(zip(df.track_id, df.segment)) == [(0, 0), (0, 1), (1, 0)]  # in plan order, whatever came first
    assert list(df.label) == ["Happy", "Sad", "Neutral"] and (df.confidence == 1.0).all()
    assert not assembler.plans and not assembler.probs  # nothing held once a video is written


def test_failed_clip_fails_its_video_and_failed_faces_write_nothing(assembler, tmp_path):
    segments = [_segment(0, 0), _segment(0, 1)]
    assert assembler.plan("a", {"status": "ok", "error": None}, segments) is None
    assembler.add("a", "0:0:0", np.full(7, np.nan, np.float32), "clips: seek failed")
    rec = assembler.add("a", "0:1:0", np.full(7, np.nan, np.float32), "clips: seek failed")
    assert rec["status"] == "error" and rec["error"] == "clips: seek failed" and rec["timeline"] is None
    rec = assembler.plan("b", {"status": "error", "error": "decode: broken"}, [])
    assert rec["status"] == "error" and rec["timeline"] is None
    rec = assembler.plan("c", {"status": "no_faces", "error": None}, [])
    table = pq.read_table(rec["timeline"])
    assert rec["status"] == "no_faces" and table.num_rows == 0 and table.schema.metadata[b"s2d.status"] == b"no_faces"
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(rec["timeline"]).name]


def test_views_of_a_window_are_averaged_into_one_row(assembler):
    views = [_segment(0, 0), _segment(0, 0), _segment(0, 1)]
    views[1].view = 1
    views[1].n_face_frames = 9
    assert assembler.plan("a", {"status": "ok", "error": None}, views) is None
    p = np.eye(7, dtype=np.float32)
    assembler.add("a", "0:0:0", p[0], "")
    assembler.add("a", "0:0:1", p[3], "")
    rec = assembler.add("a", "0:1:0", p[4], "")
    assert rec["n_segments"] == 2  # windows, not clips
    df = pq.read_table(rec["timeline"]).to_pandas()
    assert list(df.segment) == [0, 1] and df.n_face_frames.tolist() == [16, 16]  # the first view's count
    np.testing.assert_allclose(df[["p_happy", "p_angry", "p_surprise"]].to_numpy(), [[.5, .5, 0], [0, 0, 1]])


def test_a_video_that_cannot_be_re_decoded_gives_error_clips(tmp_path):
    from pipeline.run import CutClips

    gone = tmp_path / "removed_after_the_face_stage.mp4"
    rows = CutClips("pyav").block("a", str(gone), [_segment(0, 0), _segment(1, 0)])
    assert list(rows["kind"]) == ["clip", "clip"] and [p["key"] for p in rows["payload"]] == ["0:0:0", "1:0:0"]
    assert all(p["error"] == f"{gone}: file not found" for p in rows["payload"])  # the video fails, clearly
    assert all(p["clip"] is None for p in rows["payload"])


def test_bad_views_fail_at_the_settings_not_per_video():
    from pipeline.run import AnnotateSettings

    with pytest.raises(ValueError, match="views must be 1 or 2, not 3"):
        AnnotateSettings(views=3)


def test_a_cache_entry_removed_during_the_run_fails_its_video_clearly(tmp_path):
    from pipeline.run import TrackVideos, _rows

    src = Source(str(tmp_path / "v.mp4"), "v", 1, 0.0)
    track = TrackVideos(str(tmp_path / "cache"), "hash", {}, {"v": src}, max_gap_s=1.0)
    (out,) = list(track(_rows(["v"], ["cached"], [{}])))  # the driver saw a complete entry; now it is gone
    (payload,) = out["payload"]
    assert list(out["kind"]) == ["video"] and payload["faces"] is None and payload["decoded"] is False
    assert payload["meta"]["status"] == "error" and "removed during the run" in payload["meta"]["error"]
