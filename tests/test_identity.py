"""pipeline.identity: which faces of a track give its descriptor, and what the descriptors say about who is who."""
from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from pipeline.align import align_face
from pipeline.identity import CHIP, MARGIN, TrackChips, quality, track_descriptors

EYES = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], np.float32)  # a frontal face, eyes 40 px apart


def test_quality_prefers_large_frontal_faces_and_refuses_tiny_ones():
    turned = EYES.copy()
    turned[2, 0] = 78  # the nose under one eye
    assert quality(0.9, EYES) > quality(0.9, turned) > 0
    assert quality(0.9, EYES) > quality(0.9, EYES * 0.5) > 0
    assert quality(0.99, EYES * 0.25) == 0.0  # eyes 10 px apart: no chip


def test_a_track_gives_at_most_one_chip_per_second_and_its_best_few():
    frame = np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)  # (texture: a sharp chip)
    chips = TrackChips(per_track=3, bucket_s=1.0)
    for i in range(40):  # 10 s at 4 faces per second, scores rising within each second
        chips.offer(7, i * 0.25, 0.5 + 0.1 * (i % 4) + 0.001 * i, EYES, frame)
    chips.offer(2, 0.0, 0.9, EYES * 0.25, frame)  # too small: no chip, no descriptor
    tracks, cut = chips.chips()
    assert tracks.tolist() == [7, 7, 7] and cut.shape == (3, CHIP, CHIP, 3) and cut.dtype == np.uint8
    # held: never more than 3 chips of the track, and at the end the best 3 seconds' best (last) faces
    assert sorted(chips.kept[7]) == [7, 8, 9] and sorted(round(q, 4) for q, _ in chips.kept[7].values()) == sorted(
        round(quality(0.8 + 0.001 * (4 * s + 3), EYES), 4) for s in (7, 8, 9))
    assert 2 not in chips.kept or not chips.kept[2]
    assert TrackChips().chips()[1].shape == (0, CHIP, CHIP, 3)


def test_track_descriptors_average_per_track():
    d = track_descriptors(np.array([3, 1, 3]), np.array([[1.0, 0], [0, 1.0], [3.0, 0]], np.float32))
    assert sorted(d) == [1, 3] and d[3][0] == 2 and d[3][1].tolist() == [2.0, 0.0] and d[1][0] == 1


@pytest.fixture(scope="module")
def nets(fixtures_dir, detector_weights):
    from pipeline.detector import FaceDetector
    from pipeline.settings import DETECTORS
    from s2d_model.faceapi import load_recognition_net

    net = load_recognition_net(fixtures_dir / "weights" / "face-api" / "face_recognition_model-weights_manifest.json")
    return FaceDetector(detector_weights, DETECTORS["retinaface-mobilenet"]), net


def test_the_man_of_the_video_is_the_man_of_the_still_and_no_one_else(nets, fixtures_dir):
    """single_face.mp4's track (its chips as TrackChips picks them) against every face of the fixture stills: the
    same man's still is the nearest, by a margin (measured: 0.28 against >= 0.41)."""
    from s2d_model.faceapi import descriptors

    detector, net = nets
    chips = TrackChips()
    with av.open(str(fixtures_dir / "videos" / "single_face.mp4")) as video:
        for i, frame in enumerate(video.decode(video=0)):
            if i % 3 == 0:  # 8 frames per second
                rgb = frame.to_ndarray(format="rgb24")
                d = detector(rgb[None])[0]
                for score, kps in zip(d["score"], d["kps5"]):
                    chips.offer(0, float(frame.time), float(score), kps, rgb)
    tracks, cut = chips.chips()
    assert len(cut) == 3  # a 2.4 s track: one chip per second
    man = track_descriptors(tracks, descriptors(net, cut))[0][1]
    distance = {}
    for name in ("single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg",
                 "multi_face.jpg"):
        rgb = cv2.cvtColor(cv2.imread(str(fixtures_dir / "images" / name)), cv2.COLOR_BGR2RGB)
        d = detector(rgb[None])[0]
        found = descriptors(net, [align_face(rgb, k, CHIP, MARGIN) for k in d["kps5"]])
        for j, f in enumerate(found):
            distance[f"{name}#{j}"] = float(np.linalg.norm(f - man))
    own = distance.pop("single_face.jpg#0")
    assert len(distance) == 9 and own < 0.32 and min(distance.values()) > 0.38, (own, distance)


def test_a_blurred_face_gives_no_chip_and_a_sharp_one_does(nets, fixtures_dir):
    """The man's still, sharp and blurred (a Gaussian of sigma 4 px: out of focus, or moving fast): the same
    detector finds both, only the sharp one is described (a track of blurred faces stays a person of its own)."""
    from pipeline.identity import MIN_SHARPNESS, sharpness

    detector, _ = nets
    rgb = cv2.cvtColor(cv2.imread(str(fixtures_dir / "images" / "single_face.jpg")), cv2.COLOR_BGR2RGB)
    for image, kept in ((rgb, True), (cv2.GaussianBlur(rgb, (0, 0), 4), False)):
        d = detector(image[None])[0]
        assert len(d["score"]) == 1 and d["score"][0] > 0.9  # found either way
        chips = TrackChips()
        chips.offer(0, 0.0, float(d["score"][0]), d["kps5"][0], image)
        assert (len(chips.chips()[0]) == 1) == kept
        assert (sharpness(align_face(image, d["kps5"][0], CHIP, MARGIN)) >= MIN_SHARPNESS) == kept
