"""pipeline.cuts: hard cuts between sampled frames (a track never runs across one), on real footage and a real
edit; the tracker closes its tracks at a cut."""
from __future__ import annotations

import av
import numpy as np

from edits import SHORT_EDIT, edit_seconds, make_edit
from pipeline.cuts import CutDetector
from pipeline.track import OnlineTracker


def cuts_at(path, every: int) -> tuple[list[float], int]:
    """The times of the cuts CutDetector finds in every ``every``-th frame of a video, and the frames it saw."""
    detector, found, seen = CutDetector(), [], 0
    with av.open(str(path)) as f:
        for i, frame in enumerate(f.decode(video=0)):
            if i % every == 0:
                seen += 1
                if detector(frame.to_ndarray(format="rgb24")):
                    found.append(round(float(frame.time), 3))
    return found, seen


def test_the_cuts_of_an_edit_are_found_and_nothing_else(fixtures_dir, tmp_path):
    make_edit(tmp_path / "edit.mp4", fixtures_dir, SHORT_EDIT)
    starts = [round(a, 3) for a, _ in edit_seconds(SHORT_EDIT, 10)][1:]
    assert cuts_at(tmp_path / "edit.mp4", 1)[0] == starts  # at 10 fps: each shot's first frame


def test_real_footage_has_no_cut_but_the_splice(fixtures_dir):
    videos = fixtures_dir / "videos"
    assert cuts_at(videos / "single_face.mp4", 4)[0] == []  # a man talking, at ~8 sampled frames a second
    found, seen = cuts_at(videos / "face_noface.mov", 4)
    assert seen > 30 and all(2.39 <= t <= 2.6 for t in found) and found  # the man, then black, then a title card


def test_a_cut_closes_every_open_track():
    box = np.array([[100, 100, 200, 220]], np.float32)
    tracker = OnlineTracker(0.125)
    assert tracker.update(0.0, box).tolist() == [0] and tracker.update(0.125, box).tolist() == [0]
    tracker.cut()
    assert tracker.update(0.25, box).tolist() == [1]  # the same place after a cut: a new track
    assert tracker.update(0.375, box).tolist() == [1]
