"""``measure_crops``: crops of a known geometry, cut by ``Crop.cut`` from real faces, give that geometry back.

The faces: the four fixture stills, the five of multi_face.jpg and four frames of single_face.mp4 (0, 0.67, 1.33,
2 s), plus single_face.jpg, 0-f1-su-ph.jpg, multi_face.jpg and the 0.67 s frame turned by +-8 deg (roll): 29 faces,
detected at long side 640 as our chain does. Measured on them (median, p10-p90 spread), which the thresholds in
``crop_measure.py`` come from:
    crop               roll spread  centre spread  centre offset  eye-mouth/eye  box long side  found
    template:0@224       9.6 deg       0.030          0.005          0.90           0.93         margin 0.023
    template:0.25@224    8.8           0.034          0.007          0.93           0.63         margin 0.271
    box:1.0@224         20.7           0.084          0.092          0.93           0.96         scale 1.04
    box:1.3@112         22.6           0.070          0.088          0.94           0.76         scale 1.32
    box:0.7@224         19.5           0.080          0.092          0.93           1.27         scale 0.75 (*)
    mtcnn@224            6.6           0.090          0.113          0.76           1.27         mtcnn
(*) from the 5-point face size: the detector finds a smaller box on a face the crop cuts (1 / box would say 0.79).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.crop_measure import (
    CropMeasurement,
    list_images,
    measure_crops,
    spread_sample,
)
from pipeline.crops import parse_crop
from pipeline.images import read_image

STILLS = ["0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "single_face.jpg", "multi_face.jpg"]
FRAMES = (0, 20, 40, 60)  # of videos/single_face.mp4 (30 fps)
TURNED = ("0-f1-su-ph.jpg", "single_face.jpg", "multi_face.jpg", "frame20")  # also turned by +-8 deg
KNOWN = ["template:0@224", "template:0.25@224", "box:1.0@224", "box:1.3@112", "box:0.7@224", "mtcnn@224"]
TOLERANCE = {"template": 0.04, "box": 0.08, "mtcnn": 0.0}


def turned(img: np.ndarray, deg: float) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0), (w, h), flags=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def faces(fixtures_dir, detector_weights) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frame, bbox, kps5) of every face of the sources, detected at long side 640."""
    import av

    from pipeline.detector import FaceDetector

    sources = {name: read_image(fixtures_dir / "images" / name) for name in STILLS}
    with av.open(str(fixtures_dir / "videos" / "single_face.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in FRAMES:
                sources[f"frame{i}"] = frame.to_ndarray(format="rgb24")
            if i >= max(FRAMES):
                break
    for name in TURNED:
        for deg in (8, -8):
            sources[f"{name}{deg:+d}"] = turned(sources[name], deg)
    detector = FaceDetector(detector_weights, long_side=640)
    out = []
    for img in sources.values():
        det = detector(img[None])[0]
        out += [(img, b, k) for b, k in zip(det["bbox"], det["kps5"])]
    assert len(out) == 29
    return out


def write_crops(folder, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")


@pytest.mark.parametrize("spec", KNOWN)
def test_recovers_known_geometry(spec, faces, tmp_path, detector_weights):
    true = parse_crop(spec)
    write_crops(tmp_path / "clip", [true.cut(img, b, k) for img, b, k in faces])
    m = measure_crops([str(tmp_path)], detector_weights)
    print(f"true {true}\n{m.table()}")
    assert isinstance(m, CropMeasurement) and (m.n_files, m.n_faces) == (29, 29)
    assert m.crop.geometry == true.geometry, m.reason
    assert m.crop.size == true.size
    assert abs(m.crop.s - true.s) <= TOLERANCE[true.geometry], m.reason
    assert m.stats["aspect"]["median"] == 1.0 and "not square" not in m.reason
    assert f"--crop {m.crop}" in m.table() and m.reason in m.table() and "\n" not in m.reason


def test_non_square_files_measured_as_resized(faces, tmp_path, detector_weights):
    """MAFW's files: the levelled box cut as it is (not square), resized to the model's square later. Unsquashed
    back to the box's own aspect, the mtcnn crops are still found as mtcnn, with the aspect reported."""
    crop = parse_crop("mtcnn@224")
    images = []
    for img, b, k in faces:
        w, h = (b[2] - b[0]) * 0.7, (b[3] - b[1]) * 0.85  # crops.MTCNN_SHRINK
        images.append(cv2.resize(crop.cut(img, b, k), (round(224 * w / h), 224), interpolation=cv2.INTER_AREA))
    write_crops(tmp_path, images)
    m = measure_crops([str(tmp_path)], detector_weights)
    print(m.table())
    assert m.crop.geometry == "mtcnn", m.reason
    assert m.stats["aspect"]["median"] < 0.9 and "not square" in m.reason and "without keeping the aspect" in m.reason


def test_no_face_raises(fixtures_dir, tmp_path, detector_weights):
    mountain = read_image(fixtures_dir / "images" / "free-mountain-vector-01.jpg")
    h, w = mountain.shape[:2]
    write_crops(tmp_path, [mountain[y:y + 224, x:x + 224] for y in (0, (h - 224) // 2) for x in (0, w - 224)])
    with pytest.raises(ValueError, match="no face found in any of the 4 image files"):
        measure_crops([str(tmp_path)], detector_weights)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        measure_crops([str(tmp_path / "empty")], detector_weights)
    with pytest.raises(ValueError, match="no such file or folder"):
        measure_crops([str(tmp_path / "missing")], detector_weights)
    (tmp_path / "empty" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="none of the 1 sampled image files could be read"):
        measure_crops([str(tmp_path / "empty")], detector_weights)


def test_sample_spread_over_sorted_files(tmp_path):
    for sub in ("b", "a/x"):
        (tmp_path / sub).mkdir(parents=True)
    names = [f"a/x/{i:02d}.JPG" for i in range(30)] + [f"b/{i:02d}.png" for i in range(30)] + ["b/notes.txt"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    files = list_images([tmp_path / "b", tmp_path / "a", tmp_path / "b" / "00.png"])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == names[:-1]  # sorted, once each, images only
    picked = spread_sample(files, 6, seed=0)
    assert picked == spread_sample(files, 6, seed=0) != spread_sample(files, 6, seed=1)
    assert [files.index(f) // 10 for f in picked] == list(range(6))  # one from each tenth of the list
    assert spread_sample(files[:5], 6) == files[:5]
