"""jobs/datasets.py readers on tiny datasets built from the real fixture faces, in each dataset's own layout.

The builders here (``faces``, ``make_dfew``, ``make_rafdb``, ...) are shared with test_jobs_train.py.
Labels are synthetic (plumbing), except where a test says otherwise.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.datasets import (DatasetError, list_frames, load_split, oversample_weights, read_clip, stratified_split)

# Face boxes (x1, y1, x2, y2) in the fixture images (fixtures README); the posed stills are centred portraits.
FACE_BOXES = {
    "single_face.jpg": [(192, 145, 369, 404)],
    "multi_face.jpg": [(215, 66, 307, 180), (317, 236, 410, 360), (439, 216, 521, 319), (534, 314, 632, 435),
                       (686, 287, 787, 415)],
    "0-f1-su-ph.jpg": [(96, 64, 416, 448)], "0-f15-hao-ph.jpg": [(96, 64, 416, 448)],
    "15-f13-anc-ph.jpg": [(96, 64, 416, 448)], "45-m7-di-ph.jpg": [(96, 64, 416, 448)],
}


def faces(fixtures_dir: Path, size: int = 240) -> list[np.ndarray]:
    """10 real face crops (square, 1.2x the box, ``size`` px), uint8 [size, size, 3]."""
    out = []
    for name, boxes in FACE_BOXES.items():
        img = Image.open(fixtures_dir / "images" / name).convert("RGB")
        for x1, y1, x2, y2 in boxes:
            cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, 1.2 * max(x2 - x1, y2 - y1)
            box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
            out.append(np.asarray(img.crop(box).resize((size, size), Image.BILINEAR)))
    return out


def clip_frames(face: np.ndarray, n: int = 16, seed: int = 0, size: int = 224) -> list[np.ndarray]:
    """n frames of a face 'moving' by small shifts: 224 crops of the 240 px face at drifting offsets."""
    rng = np.random.default_rng(seed)
    pad = face.shape[0] - size
    x, y, frames = pad // 2, pad // 2, []
    for _ in range(n):
        x = int(np.clip(x + rng.integers(-2, 3), 0, pad))
        y = int(np.clip(y + rng.integers(-2, 3), 0, pad))
        frames.append(face[y:y + size, x:x + size])
    return frames


def write_frames(folder: Path, frames, ext: str = "jpg", pattern: str = "{:05d}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, start=1):
        Image.fromarray(f).save(folder / f"{pattern.format(i)}.{ext}", quality=90)
    return folder


def assign(n: int, num_classes: int, classes=None) -> list[int]:
    """n synthetic labels cycling over ``classes`` (default all)."""
    classes = list(range(num_classes)) if classes is None else list(classes)
    return [classes[i % len(classes)] for i in range(n)]


def make_dfew(root: Path, face_list, labels_train, labels_test, fold: int = 1, own_format: bool = True,
              face_of=None, frames: int = 16) -> Path:
    """DFEW layout: clip_224x224_16f/<id>/ + EmoLabel_DataSplit/{train,test}(single-labeled)/set_K.csv.

    ``own_format``: DFEW's files (1-based labels, set_K.csv), else the S2D authors' (0-based, train_set_K.csv).
    ``face_of(i, label)`` picks the face of clip i (default: cycles over the faces)."""
    clips = root / "clip_224x224_16f"
    face_of = face_of or (lambda i, label: face_list[i % len(face_list)])
    n = 0
    for split, labels in (("train", labels_train), ("test", labels_test)):
        folder = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
        folder.mkdir(parents=True, exist_ok=True)
        rows = ["video_name,label"]
        for label in labels:
            n += 1
            name = f"{n:05d}"
            write_frames(clips / name, clip_frames(face_of(n, label), frames, seed=n))
            rows.append(f"{name},{label + 1 if own_format else label}")
        fname = f"set_{fold}.csv" if own_format else f"{split}_set_{fold}.csv"
        (folder / fname).write_text("\n".join(rows) + "\n")
    return root


def make_rafdb(root: Path, face_list, labels_train, labels_test, face_of=None, seed: int = 0) -> Path:
    """RAF-DB layout: Image/aligned/<split>_NNNNN_aligned.jpg + EmoLabel/list_patition_label.txt (1-based)."""
    rng = np.random.default_rng(seed)
    face_of = face_of or (lambda i, label: face_list[i % len(face_list)])
    (root / "Image" / "aligned").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    lines = []
    for split, labels in (("train", labels_train), ("test", labels_test)):
        for i, label in enumerate(labels, start=1):
            face = face_of(i, label)
            x, y = rng.integers(0, face.shape[0] - 224 + 1, size=2)
            img = face[y:y + 224, x:x + 224]
            name = f"{split}_{i:05d}"
            Image.fromarray(img).save(root / "Image" / "aligned" / f"{name}_aligned.jpg", quality=90)
            lines.append(f"{name}.jpg {label + 1}")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


# ============================================================================ readers
@pytest.fixture(scope="module")
def face_list(fixtures_dir):
    return faces(fixtures_dir)


def test_faces_are_real_crops(face_list):
    assert len(face_list) == 10
    assert all(f.shape == (240, 240, 3) and f.std() > 20 for f in face_list)


@pytest.mark.parametrize("own_format", [True, False])
def test_dfew_reader_label_bases(tmp_path, face_list, own_format):
    root = make_dfew(tmp_path / "DFEW", face_list, [0, 6, 3], [2, 5], own_format=own_format, frames=3)
    train = load_split(root, "dfew", "train", fold=1)
    test = load_split(root, "dfew", "test", fold=1)
    assert [s["label"] for s in train.samples] == [0, 6, 3]  # 0-based DFEW order either way
    assert [s["label"] for s in test.samples] == [2, 5]
    assert train.label_names[0] == "Happy" and train.label_set == "dfew" and train.num_classes == 7
    assert all(s["kind"] == "frames" and Path(s["path"]).is_dir() for s in train.samples)
    assert len(list_frames(train.samples[0]["path"])) == 3


def test_dfew_authors_csv_format_matches_upstream(tmp_path, face_list):
    # The first rows of MSA-LMC/S2D data/DFEW/EmoLabel_DataSplit/train(single-labeled)/train_set_1.csv
    root = tmp_path / "DFEW"
    for name in ("02522", "02536", "03271"):
        write_frames(root / "Clip" / "clip_224x224_16f" / name, clip_frames(face_list[0], 2))
    folder = root / "EmoLabel_DataSplit" / "train(single-labeled)"
    folder.mkdir(parents=True)
    (folder / "train_set_1.csv").write_text("video_name,label\n02522,5\n02536,5\n03271,0\n")
    split = load_split(root, "dfew", "train", fold=1)
    assert [s["label"] for s in split.samples] == [5, 5, 0]
    assert split.samples[0]["path"].endswith("02522")


def test_dfew_errors_name_file_and_row(tmp_path, face_list):
    root = make_dfew(tmp_path / "DFEW", face_list, [0, 1], [1], frames=2)
    anno = root / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"
    anno.write_text("video_name,label\n00001,1\n00002,8\n")  # 8 is outside DFEW's 1..7
    with pytest.raises(DatasetError, match=r"set_1\.csv:3: label 8 out of range \(expected 1\.\.7\)"):
        load_split(root, "dfew", "train", fold=1)
    anno.write_text("video_name,label\n00001,1\n09999,2\n")
    with pytest.raises(DatasetError, match=r"set_1\.csv:3: clip folder not found: .*09999"):
        load_split(root, "dfew", "train", fold=1)
    anno.write_text("video_name,label\n")
    with pytest.raises(DatasetError, match=r"set_1\.csv: no samples for split 'train'"):
        load_split(root, "dfew", "train", fold=1)
    with pytest.raises(DatasetError, match="fold"):
        load_split(root, "dfew", "train")
    with pytest.raises(DatasetError, match="set_4.csv"):
        load_split(root, "dfew", "train", fold=4)


def test_ferv39k_reader(tmp_path, face_list):
    root = tmp_path / "FERV39K"
    for rel in ("Crime/Angry/0063", "Argue/Surprise/0196"):
        write_frames(root / "2_ClipsforFaceCrop" / rel, clip_frames(face_list[1], 3))
    (root / "Annotation").mkdir()
    (root / "Annotation" / "train.csv").write_text("path,id\nCrime/Angry/0063,0\nArgue/Surprise/0196,6\n")
    split = load_split(root, "ferv39k", "train")
    assert [s["label"] for s in split.samples] == [0, 6] and split.label_names[6] == "Surprise"
    (root / "Annotation" / "train.csv").write_text("path,id\nCrime/Angry/0063,3\n")
    with pytest.raises(DatasetError, match=r"train\.csv:2: label 3 \(Happy\) contradicts"):
        load_split(root, "ferv39k", "train")


def test_mafw_reader_csv_and_txt(tmp_path, face_list):
    root = tmp_path / "MAFW"
    frames = root / "data" / "frames" / "frames_crop_align_224"
    for name in ("03747", "05015"):
        write_frames(frames / name, clip_frames(face_list[2], 3), ext="png")
    anno = root / "anno" / "single" / "no_caption" / "set_1"
    anno.mkdir(parents=True)
    (anno / "train.csv").write_text("video_name,labels\n03747,0\n05015,4\n")
    split = load_split(root, "mafw", "train", fold=1)
    assert [s["label"] for s in split.samples] == [0, 4] and split.num_classes == 11
    (anno / "train.csv").unlink()
    (anno / "train.txt").write_text("03747.mp4 anger\n05015.mp4 disgust\n")
    assert [s["label"] for s in load_split(root, "mafw", "train", fold=1).samples] == [0, 4]
    (anno / "train.txt").write_text("03747.mp4 anger\n05015.mp4 boredom\n")
    with pytest.raises(DatasetError, match=r"train\.txt:2: unknown label 'boredom'"):
        load_split(root, "mafw", "train", fold=1)


def test_rafdb_reader(tmp_path, face_list):
    root = make_rafdb(tmp_path / "RAF", face_list, [0, 3, 6], [5])
    train, test = load_split(root, "rafdb", "train"), load_split(root, "rafdb", "test")
    assert [s["label"] for s in train.samples] == [0, 3, 6] and [s["label"] for s in test.samples] == [5]
    assert train.samples[0]["kind"] == "image" and train.samples[0]["path"].endswith("train_00001_aligned.jpg")
    (root / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(DatasetError, match=r"list_patition_label\.txt:2: image not found"):
        load_split(root, "rafdb", "train")


def test_affectnet_reader_skips_non_emotion_codes(tmp_path, face_list, capsys):
    root = tmp_path / "AffectNet"
    images = root / "Manually_Annotated_Images" / "1"
    images.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(face_list[i][:224, :224]).save(images / f"{i}.jpg")
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir()
    (lists / "training.csv").write_text(
        "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
        "1/0.jpg,0,0,10,10,x,1,0.5,0.5\n1/1.jpg,0,0,10,10,x,7,0,0\n1/2.jpg,0,0,10,10,x,9,0,0\n"
        "1/3.jpg,0,0,10,10,x,6,0,0\n")
    seven = load_split(root, "affectnet7", "train")
    eight = load_split(root, "affectnet8", "train")
    assert [s["label"] for s in seven.samples] == [1, 6] and seven.label_set == "affectnet7"
    assert [s["label"] for s in eight.samples] == [1, 7, 6] and eight.label_names[7] == "Contempt"
    assert "skipped" in capsys.readouterr().out


def test_csv_reader_frames_video_image(tmp_path, face_list, fixtures_dir):
    root = tmp_path / "mine"
    write_frames(root / "clips" / "a", clip_frames(face_list[0], 20))
    shutil.copy(fixtures_dir / "videos" / "single_face.mp4", root / "b.mp4")
    Image.fromarray(face_list[3][:224, :224]).save(root / "c.jpg")
    (root / "train.csv").write_text("path,label\nclips/a,happy\nb.mp4,Neutral\nc.jpg,sad\n")
    split = load_split(root, "csv", "train", labels="dfew")
    assert [(s["kind"], s["label"]) for s in split.samples] == [("frames", 0), ("video", 2), ("image", 1)]
    assert split.label_set == "dfew"
    custom = load_split(root, "csv", "train", labels="sad,happy,neutral")
    assert [s["label"] for s in custom.samples] == [1, 2, 0] and custom.label_set is None
    with pytest.raises(DatasetError, match=r"train\.csv:2: label 'happy' is a class name"):
        load_split(root, "csv", "train")
    (root / "train.csv").write_text("path,label\nclips/a,0\nb.mp4,1\n")
    (root / "test.csv").write_text("path,label\nc.jpg,2\n")
    ints = load_split(root, "csv", "train")
    assert ints.label_names == ("0", "1", "2")  # classes 0..max over the folder's CSV files
    (root / "train.csv").write_text("path,label\nclips/a,0\nmissing.mp4,1\n")
    with pytest.raises(DatasetError, match=r"train\.csv:3: file or frame folder not found"):
        load_split(root, "csv", "train")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_split(root, "kinetics", "train")


def test_read_clip_pads_and_decodes_video(tmp_path, face_list, fixtures_dir):
    folder = write_frames(tmp_path / "clip", clip_frames(face_list[0], 5))
    clip = read_clip(str(folder), "frames", lambda n: np.minimum(np.arange(16), n - 1))
    assert clip.shape == (16, 224, 224, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[4], clip[15])  # padded with the last frame
    video = read_clip(str(fixtures_dir / "videos" / "single_face.mp4"), "video", lambda n: [0, n - 1], size=112)
    assert video.shape == (2, 112, 112, 3)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(DatasetError, match="broken.mp4"):
        read_clip(str(tmp_path / "broken.mp4"), "video", lambda n: [0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        read_clip(str(tmp_path / "empty"), "frames", lambda n: [0])


def test_decode_functions_without_ray(tmp_path, face_list):
    from jobs.datasets import decode_eval, decode_train

    long = write_frames(tmp_path / "long", clip_frames(face_list[0], 20))
    short = write_frames(tmp_path / "short", clip_frames(face_list[1], 5))
    image = tmp_path / "still.jpg"
    Image.fromarray(face_list[2]).save(image)
    batch = {"path": np.array([str(long), str(short), str(image)]), "kind": np.array(["frames", "frames", "image"]),
             "label": np.array([3, 1, 0]), "weight": np.array([1.0, 1.0, 0.0]), "index": np.array([0, 1, -1])}
    train = decode_train(batch, num_frames=16, size=224, image_mode=False, augment=True)
    assert train["clip"].shape == (3, 16, 224, 224, 3) and train["clip"].dtype == np.uint8
    assert train["label"].tolist() == [3, 1, 0]
    assert all(np.array_equal(train["clip"][2][0], f) for f in train["clip"][2][1:])  # an image repeated
    images = decode_train(batch, num_frames=16, size=224, image_mode=True, augment=True)
    assert images["clip"].shape == (3, 1, 224, 224, 3)
    ev = decode_eval(batch, num_frames=16, size=224, image_mode=False)
    assert ev["clip"].shape == (3, 2, 16, 224, 224, 3) and ev["views"].tolist() == [2, 1, 1]
    assert not np.array_equal(ev["clip"][0, 0], ev["clip"][0, 1])  # first 16 vs last 16 of 20 frames
    np.testing.assert_array_equal(ev["clip"][1, 0, 4], ev["clip"][1, 0, 15])  # 5 frames padded with the last
    assert ev["weight"].tolist() == [1.0, 1.0, 0.0] and ev["index"].tolist() == [0, 1, -1]
    one = decode_eval(batch, num_frames=16, size=224, image_mode=True)
    assert one["clip"].shape == (3, 1, 1, 224, 224, 3)


# ============================================================================ frame order
AUTHORS_ORDER = [1, 10, 11, 12, 13, 14, 15, 16, 2, 3, 4, 5, 6, 7, 8, 9]  # sorted(glob('*.jpg')) of 1.jpg..16.jpg


def numbered_clip(folder: Path, n: int = 16) -> Path:
    """DFEW-style frames ``1.jpg .. n.jpg``, frame i a flat grey of level 12 * i (tells the frames apart)."""
    return write_frames(folder, [np.full((224, 224, 3), 12 * i, np.uint8) for i in range(1, n + 1)], pattern="{}")


def frame_numbers(clip: np.ndarray) -> list[int]:
    """uint8 [T, S, S, 3] of ``numbered_clip`` frames -> their numbers."""
    return [int(round(float(f.mean()) / 12)) for f in clip]


def test_lexicographic_listing_is_the_authors_order(tmp_path):
    folder = numbered_clip(tmp_path / "00001")
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_frames(folder, "lexicographic")] == [f"{i}.jpg" for i in AUTHORS_ORDER]
    assert [p.name for p in list_frames(folder, "time")] == [f"{i}.jpg" for i in range(1, 17)]
    assert list_frames(folder) == list_frames(folder, "time")
    with pytest.raises(ValueError, match="unknown frame order 'sideways'"):
        list_frames(folder, "sideways")


def test_decode_steps_feed_frames_in_the_asked_order(tmp_path):
    from jobs.datasets import decode_eval, decode_train

    folder = numbered_clip(tmp_path / "clip")
    batch = {"path": np.array([str(folder)]), "kind": np.array(["frames"]), "label": np.array([0]),
             "weight": np.array([1.0]), "index": np.array([0])}
    for order, expected in (("time", list(range(1, 17))), ("lexicographic", AUTHORS_ORDER)):
        ev = decode_eval(batch, num_frames=16, size=224, image_mode=False, frame_order=order)
        assert frame_numbers(ev["clip"][0, 0]) == expected, order
        train = decode_train(batch, num_frames=16, size=224, image_mode=False, augment=False, frame_order=order)
        assert frame_numbers(train["clip"][0]) == expected, order
    assert frame_numbers(decode_eval(batch, num_frames=16, size=224, image_mode=False)["clip"][0, 0]) == \
        list(range(1, 17))  # time order unless asked


def test_csv_dataset_json_names_the_crop(tmp_path, face_list):
    write_frames(tmp_path / "clip", clip_frames(face_list[0], 3))
    (tmp_path / "train.csv").write_text("path,label\nclip,0\n")
    assert load_split(tmp_path, "csv", "train").crop is None  # no dataset.json: not known
    (tmp_path / "dataset.json").write_text('{"crop": "box:1.0@224"}')
    assert load_split(tmp_path, "csv", "train").crop == "box:1@224"
    (tmp_path / "dataset.json").write_text('{"crop": "blob"}')
    with pytest.raises(DatasetError, match="dataset.json: no valid crop .*'blob'"):
        load_split(tmp_path, "csv", "train")


# ============================================================================ splits and oversampling
def test_stratified_split_is_seeded_and_stratified():
    samples = [{"path": str(i), "label": i % 3, "kind": "image"} for i in range(60)] + \
              [{"path": "lonely", "label": 3, "kind": "image"}]
    train, val = stratified_split(samples, 0.1, seed=1)
    assert len(train) + len(val) == 61 and not {s["path"] for s in train} & {s["path"] for s in val}
    assert sorted(s["label"] for s in val) == [0, 0, 1, 1, 2, 2]  # 10 % of each class; a singleton stays in train
    assert val == stratified_split(samples, 0.1, seed=1)[1]
    assert val != stratified_split(samples, 0.1, seed=2)[1]
    assert stratified_split(samples, 0.0)[1] == []


def test_oversampling_draws_classes_near_uniformly():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)  # 90 : 9 : 1
    probs = oversample_weights(labels)
    assert probs.sum() == pytest.approx(1.0)
    per_class = [probs[labels == c].sum() for c in range(3)]
    assert per_class == pytest.approx([1 / 3] * 3)
    from jobs.datasets import draw_oversampled

    counts = np.zeros(3)
    for _ in range(20):  # 20 epochs of len(dataset) draws each
        drawn = draw_oversampled({"id": np.arange(len(labels))}, paths=np.arange(len(labels)).astype(str),
                                 labels=labels, kinds=np.array(["image"] * len(labels)), probs=probs)
        assert len(drawn["label"]) == len(labels)
        counts += np.bincount(drawn["label"], minlength=3)
    assert np.abs(counts / counts.sum() - 1 / 3).max() < 0.02
