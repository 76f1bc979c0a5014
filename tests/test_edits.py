"""tests/edits.py: the synthetic multi-person edits are what their ground truth says (frame count, times, and the
real detector's faces inside the truth boxes), the standard edits have the scenes they promise, and label_tracks
names tracks by the truth."""
from __future__ import annotations

import av
import numpy as np
import pandas as pd
import pytest
from edits import SHORT_EDIT, STANDARD_EDIT, Shot, box_at, detector, edit_seconds, label_tracks, make_edit, person_of

FPS = 10


@pytest.fixture(scope="module")
def short_edit(tmp_path_factory, fixtures_dir):
    """SHORT_EDIT written once: (path, truth, decoded frames uint8 [n,H,W,3], their times float[n])."""
    path = tmp_path_factory.mktemp("edits") / "short.mp4"
    truth = make_edit(path, fixtures_dir, SHORT_EDIT, fps=FPS)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        frames, times = zip(*((f.to_ndarray(format="rgb24"), f.time) for f in c.decode(stream)))
        duration = c.duration / 1e6
    return path, truth, np.stack(frames), np.array(times), duration


def _away(shots: list[Shot], person: str) -> list[float]:
    """The gaps (s) between a person's shots, one per return."""
    spans = [span for shot, span in zip(shots, edit_seconds(shots)) if person in {person_of(f[0]) for f in shot.faces}]
    return [b[0] - a[1] for a, b in zip(spans, spans[1:])]


@pytest.mark.parametrize("shots, seconds, n_shots", [(STANDARD_EDIT, (30, 40), 8), (SHORT_EDIT, (12, 15), 4)])
def test_standard_edits_hold_the_promised_scenes(shots, seconds, n_shots):
    total = sum(s.seconds for s in shots)
    people = {person_of(f[0]) for s in shots for f in s.faces}
    assert seconds[0] <= total <= seconds[1] and len(shots) >= n_shots
    assert all(s.seconds >= 2 for s in shots)
    assert len(people) >= 3 and "jin" in people and people & {"f1", "f15"}
    assert any(p.startswith("group") for p in people) and ("f13" in people)
    assert any(len(s.faces) == 2 for s in shots)  # two people side by side
    assert max(_away(shots, "jin")) >= 3  # jin comes back after 3 s or more
    assert all(120 <= f[3] <= 200 for s in shots for f in s.faces)
    if shots is STANDARD_EDIT:
        actors = [[f[0] for f in s.faces] for s in shots]
        assert any(a == b for a, b in zip(actors, actors[1:]))  # the same person right after a hard cut
        assert {"jin", "jin_still"} <= {a for s in actors for a in s}  # jin as the video and as the still


def test_short_edit_has_the_shots_frames(short_edit):
    path, truth, frames, times, duration = short_edit
    n = sum(round(s.seconds * FPS) for s in SHORT_EDIT)
    assert frames.shape == (n, 360, 640, 3)
    np.testing.assert_allclose(times, np.arange(n) / FPS, atol=1e-6)
    assert duration == pytest.approx(n / FPS, abs=0.05)
    assert len(truth) == sum(len(s.faces) for s in SHORT_EDIT)
    assert [(f["start_s"], f["end_s"]) for f in truth if f["actor"] == "jin"] == [(0.0, 3.0), (10.0, 13.0)]
    for face in truth:
        assert face["boxes"].shape == (len(face["times"]), 4)
        heights = face["boxes"][:, 3] - face["boxes"][:, 1]
        assert 110 < heights.min() and heights.max() < 210


def test_detected_faces_lie_in_the_truth_boxes(short_edit, fixtures_dir):
    """The real detector on 3 frames of each shot: as many faces as the truth has, each one's centre in exactly
    one truth box, that box well matched (IoU > 0.6), each truth face found once."""
    _, truth, frames, times, _ = short_edit
    picks = [int(np.searchsorted(times, t - 1e-6)) for a, b in edit_seconds(SHORT_EDIT, FPS)
             for t in (a, (a + b) / 2, b - 1 / FPS)]
    for k, found in zip(picks, detector(fixtures_dir)(frames[picks])):
        boxes = [b for b in (box_at(f, times[k]) for f in truth) if b is not None]
        assert len(found["bbox"]) == len(boxes), f"frame {k}"
        hits = []
        for d in found["bbox"]:
            cx, cy = (d[0] + d[2]) / 2, (d[1] + d[3]) / 2
            inside = [i for i, b in enumerate(boxes) if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]]
            assert len(inside) == 1, f"frame {k}: {d} in {inside}"
            b = boxes[inside[0]]
            inter = max(0, min(d[2], b[2]) - max(d[0], b[0])) * max(0, min(d[3], b[3]) - max(d[1], b[1]))
            iou = inter / ((d[2] - d[0]) * (d[3] - d[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
            assert iou > 0.6, f"frame {k}: IoU {iou:.2f}"
            hits += inside
        assert sorted(hits) == list(range(len(boxes)))


def _rows(truth, rows_of: dict[int, list[tuple[str, int, tuple]]]):
    """Face rows for label_tracks: {track: [(actor, frame of its shot, (dx, dy) shift of the box)]}."""
    out = {"track_id": [], "time_s": [], "bbox": []}
    for track, rows in rows_of.items():
        for actor, i, (dx, dy) in rows:
            face = next(f for f in truth if f["actor"] == actor)
            out["track_id"].append(track)
            out["time_s"].append(face["times"][i])
            out["bbox"].append(face["boxes"][i] + [dx, dy, dx, dy])
    return {"track_id": np.array(out["track_id"]), "time_s": np.array(out["time_s"]), "bbox": np.stack(out["bbox"])}


def test_label_tracks_names_tracks_by_the_truth(short_edit):
    truth = short_edit[1]
    rows = _rows(truth, {
        1: [("jin", i, (0, 0)) for i in range(0, 30, 5)],
        2: [("f13", i, (10, -5)) for i in range(40)],  # shot 3, left of the pair
        3: [("group1", i, (0, 0)) for i in range(10)] + [("group1", 12, (300, 0))],  # one row off every face
        4: [("f1", i, (400, 0)) for i in range(5)],  # beside f1: nobody there
        5: [("f1", i, (0, 0)) for i in range(3)] + [("f13", i, (0, 0)) for i in range(4)],  # a track across a cut
    })
    # the last jin shot: frames of the later jin face
    later = [f for f in truth if f["actor"] == "jin"][1]
    rows["track_id"] = np.r_[rows["track_id"], [6, 6]]
    rows["time_s"] = np.r_[rows["time_s"], later["times"][[0, 29]]]
    rows["bbox"] = np.r_[rows["bbox"], later["boxes"][[0, 29]]]
    want = {1: "jin", 2: "f13", 3: "group1", 4: "none", 5: "f13", 6: "jin"}
    assert label_tracks(rows, truth) == want
    df = pd.DataFrame({"track_id": rows["track_id"], "time_s": rows["time_s"], "bbox": list(rows["bbox"])})
    assert label_tracks(df, truth) == want
    # a row at the first frame of the next shot belongs to that shot only: f1's box there is nobody's
    f1 = next(f for f in truth if f["actor"] == "f1")
    assert label_tracks({"track_id": [7], "time_s": [f1["end_s"]], "bbox": [f1["boxes"][-1]]}, truth) == {7: "none"}
