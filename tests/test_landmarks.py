"""Landmark backends: real MobileFaceNet weights on real images; FAN loading path with random weights."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.landmarks import FANLandmarks, MobileFaceNetLandmarks, fan_upstream, get_landmarker

SINGLE_BOX = np.array([[193, 143, 374, 394]], np.float32)  # README: RetinaFace at long side 640
MULTI_BOXES = np.array([(218, 64, 309, 175), (313, 232, 413, 364), (437, 218, 518, 316),
                        (531, 308, 632, 435), (688, 292, 789, 417)], np.float32)


def _rgb(path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


@pytest.fixture(scope="module")
def mfn(landmark_weights):
    return MobileFaceNetLandmarks(landmark_weights)


@pytest.fixture(scope="module")
def single(fixtures_dir):
    return _rgb(fixtures_dir / "images" / "single_face.jpg")


def _check_face(p: np.ndarray, box: np.ndarray):
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    assert p.shape == (68, 2) and np.isfinite(p).all()
    assert (p[:, 0] >= x1 - 0.1 * w).all() and (p[:, 0] <= x2 + 0.1 * w).all()  # inside the box, enlarged 10%
    assert (p[:, 1] >= y1 - 0.1 * h).all() and (p[:, 1] <= y2 + 0.1 * h).all()
    assert p[36:48, 1].mean() < p[48:68, 1].mean()  # eyes above the mouth
    assert p[0, 0] < p[8, 0] < p[16, 0]  # jaw runs left to right through the chin
    assert p[36:42, 0].mean() < p[42:48, 0].mean()  # "left" eye (36-41) left in the image
    iod = np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
    assert 0.25 < iod / w < 0.6


def test_mobilefacenet_single_face(mfn, single):
    out = mfn(single[None], [SINGLE_BOX])
    assert len(out) == 1 and out[0].shape == (1, 68, 2) and out[0].dtype == np.float32
    _check_face(out[0][0], SINGLE_BOX[0])


def test_mobilefacenet_multi_face_and_batching(landmark_weights, fixtures_dir, single):
    multi = _rgb(fixtures_dir / "images" / "multi_face.jpg")
    small_batches = MobileFaceNetLandmarks(landmark_weights, batch_size=2)
    out = small_batches([multi], [MULTI_BOXES])  # a list of frames of any size works too
    assert out[0].shape == (5, 68, 2)
    for p, b in zip(out[0], MULTI_BOXES):
        _check_face(p, b)
    # frames with 0, 1 faces mixed; results do not depend on the batch split
    frames = np.stack([single, single, single])
    res = small_batches(frames, [SINGLE_BOX, np.zeros((0, 4), np.float32), SINGLE_BOX])
    assert [r.shape for r in res] == [(1, 68, 2), (0, 68, 2), (1, 68, 2)]
    np.testing.assert_allclose(res[0], res[2], atol=1e-3)


def test_mobilefacenet_box_outside_frame(mfn, single):
    # shift the image so the face is cut by the left/top edges: the crop is zero-padded
    x0, y0 = 250, 200
    cut = np.ascontiguousarray(single[y0:, x0:])
    box = SINGLE_BOX - np.array([x0, y0, x0, y0], np.float32)  # (-57,-57)-(124,194)
    p = mfn(cut[None], [box])[0]
    assert p.shape == (1, 68, 2) and np.isfinite(p).all()
    full = mfn(single[None], [SINGLE_BOX])[0][0] - np.array([x0, y0], np.float32)
    # points still visible stay close to the unpadded result (mouth, lower right)
    assert np.median(np.linalg.norm(p[0, 48:68] - full[48:68], axis=1)) < 0.15 * (box[0, 2] - box[0, 0])


def test_mobilefacenet_empty(mfn, single):
    assert mfn(single[None], [np.zeros((0, 4), np.float32)])[0].shape == (0, 68, 2)
    assert mfn(np.zeros((0, 8, 8, 3), np.uint8), []) == []


def test_mobilefacenet_bad_files(tmp_path):
    bad = tmp_path / "garbage.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth.tar"):
        MobileFaceNetLandmarks(bad)
    wrong = tmp_path / "wrong.pth.tar"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, wrong)
    with pytest.raises(ValueError, match="wrong.pth.tar.*does not match"):
        MobileFaceNetLandmarks(wrong)
    nokey = tmp_path / "nokey.pth.tar"
    torch.save({"model": {}}, nokey)
    with pytest.raises(ValueError, match="state_dict"):
        MobileFaceNetLandmarks(nokey)
    with pytest.raises(FileNotFoundError):
        MobileFaceNetLandmarks(tmp_path / "missing.pth.tar")


def test_get_landmarker(landmark_weights, tmp_path):
    assert isinstance(get_landmarker("mobilefacenet", landmark_weights), MobileFaceNetLandmarks)
    with pytest.raises(ValueError, match="unknown landmark backend"):
        get_landmarker("dlib", None)
    with pytest.raises(FileNotFoundError):
        get_landmarker("fan", tmp_path / "nope.pth.tar")


# ---- FAN: the real 2DFAN4 weights cannot be fetched here; use a random FAN(4) in the upstream format ----

@pytest.fixture
def no_download(monkeypatch):
    import face_alignment.utils as fu
    import torch.hub

    def boom(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(fu, "download_url_to_file", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)


@pytest.fixture(scope="module")
def fan_home(tmp_path_factory):
    """A TORCH_HOME whose hub/checkpoints holds a random-weight FAN(4) state_dict under the upstream file name."""
    from face_alignment.models import FAN

    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), home / "hub" / "checkpoints" / fan_upstream()[0])
    return home


def test_fan_upstream_name():
    name, url = fan_upstream()
    assert name == "2DFAN4-11f355bf06.pth.tar" and url.endswith("/" + name)


def test_fan_missing_file_no_download(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as e:
        FANLandmarks(None)
    msg = str(e.value)
    assert "2DFAN4-11f355bf06.pth.tar" in msg and "https://" in msg
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in msg
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        FANLandmarks(bad)


@pytest.mark.slow  # face-alignment compiles its heatmap decoding with numba: ~10 s
def test_fan_random_weights_matches_face_alignment(fan_home, single, no_download, monkeypatch):
    import face_alignment

    path = fan_home / "hub" / "checkpoints" / fan_upstream()[0]
    fan = FANLandmarks(path, reference_scale=195)  # 195: face-alignment's 'folder' detector scale
    out = fan([single, single], [SINGLE_BOX, np.zeros((0, 4), np.float32)])
    assert [o.shape for o in out] == [(1, 68, 2), (0, 68, 2)] and out[0].dtype == np.float32
    # weights=None finds the file where face-alignment caches it
    monkeypatch.setenv("TORCH_HOME", str(fan_home))
    assert FANLandmarks(None).weights == path
    # same numbers as face-alignment's own API with the same file (found through the hub dir, offline)
    fa = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device="cpu", face_detector="folder",
                                      flip_input=False, compile=False)
    ref = fa.get_landmarks_from_image(single, detected_faces=[SINGLE_BOX[0].astype(np.float64)])
    np.testing.assert_allclose(out[0][0], ref[0], atol=1e-4)
