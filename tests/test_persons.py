"""pipeline.persons: a video's tracks grouped into persons by their face descriptors."""
from __future__ import annotations

import json

import numpy as np

from pipeline.persons import apart, group


def unit(*v) -> np.ndarray:
    x = np.zeros(4)
    x[: len(v)] = v
    return x


def test_tracks_seen_in_one_frame_are_apart():
    frames = [0, 0, 1, 1, 1, 2]
    tracks = [0, 1, 0, 2, 2, 3]
    assert apart(frames, tracks) == {(0, 1), (0, 2)}


def test_close_tracks_merge_and_persons_are_numbered_by_first_appearance():
    first = {0: 5.0, 1: 0.0, 2: 9.0, 3: 2.0}
    d = {0: unit(1), 1: unit(0, 1), 2: unit(1.05), 3: unit(0, 1.1)}
    assert group(first, d, set(), 0.3) == {1: 0, 3: 0, 0: 1, 2: 1}
    assert group(first, d, set(), 0.01) == {1: 0, 3: 1, 0: 2, 2: 3}  # nothing is close enough


def test_two_faces_in_one_frame_are_two_persons_however_alike():
    first = {0: 0.0, 1: 0.0, 2: 3.0}
    d = {0: unit(1), 1: unit(1), 2: unit(1.01)}
    persons = group(first, d, {(0, 1)}, 0.3)
    assert persons[0] != persons[1] and persons[2] in (persons[0], persons[1])


def test_a_group_keeps_what_its_tracks_may_not_join():
    """2 is close to 0 but was seen beside 1, and 0 and 1 are one person: 2 stays apart from both."""
    first = {0: 0.0, 1: 4.0, 2: 8.0}
    d = {0: unit(1), 1: unit(1.02), 2: unit(1.05)}
    persons = group(first, d, {(1, 2)}, 0.3)
    assert persons[0] == persons[1] != persons[2]


def test_a_track_without_a_descriptor_is_a_person_of_its_own():
    first = {0: 0.0, 1: 1.0, 2: 2.0}
    assert group(first, {0: unit(1), 2: unit(1)}, set(), 0.3) == {0: 0, 1: 1, 2: 0}
    assert group({7: 0.0}, {}, set(), 0.3) == {7: 0}
    assert group({}, {}, set(), 0.3) == {}


def test_face_apis_own_descriptors_group_the_same_man_and_no_one_else(fixtures_dir):
    """reference.json: face-api's descriptors of 8 crops; single_face.png and single_face_t1.5.png are the same man
    (a still and a video frame), the other six are six other people."""
    ref = json.loads((fixtures_dir / "weights" / "face-api" / "reference.json").read_text())
    names = [c["name"] for c in ref["crops"]]
    d = {i: np.array(c["descriptor"]) for i, c in enumerate(ref["crops"])}
    persons = group({i: float(i) for i in d}, d, set(), 0.48)
    same = {names.index("single_face.png"), names.index("single_face_t1.5.png")}
    assert len({persons[i] for i in same}) == 1
    assert len(set(persons.values())) == len(names) - 1


def test_video_persons_from_face_rows():
    from pipeline.persons import video_persons

    frame = np.array([0, 0, 1, 5, 6, 9])
    track = np.array([4, 2, 4, 7, 7, 9])
    times = frame * 0.5
    d = {4: np.zeros(128), 2: np.full(128, 0.001), 7: np.full(128, 0.0005), 9: np.ones(128)}
    # 4 and 2 alike but seen together: apart; 7 joins 4 (the first of the two: 2 is seen at the same time, lower
    # id... numbered by first appearance then id), 9 is far: its own
    got = video_persons(frame, track, times, d, 0.5)
    assert got[2] != got[4] and got[9] not in (got[2], got[4], got[7]) and got[7] in (got[2], got[4])
    assert sorted(set(got.values())) == [0, 1, 2] and got[2] == 0 and got[4] == 1  # (2 before 4 at t=0: by id)
    off = video_persons(frame, track, times, d, None)  # identities off: each track its own, by first appearance
    assert off == {2: 0, 4: 1, 7: 2, 9: 3}
    assert video_persons(frame, track, times, {}, 0.5) == off  # no descriptor: each its own, never merged
