"""Still images as inputs: reading them (Pillow: EXIF orientation, grayscale, alpha), finding them in folders, the
static image model's checkpoints, and a real annotate run over a folder of fixture images mixed with videos
(``annotated_run`` in conftest: random-tiny video and image models, the fixture detector and landmarks)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import CUT, FIXTURES, IMAGES
from pipeline.decode import DecodeError
from pipeline.images import image_info, read_image
from pipeline.sources import list_videos


def test_read_image_upright_rgb(tmp_path):
    face = FIXTURES / "images" / "single_face.jpg"
    upright = read_image(face)
    assert upright.shape == (562, 572, 3) and upright.dtype == np.uint8
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees counter-clockwise; displayed turned back
    Image.open(face).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "r.jpg", exif=exif, quality=95)
    turned = read_image(tmp_path / "r.jpg")
    assert turned.shape == upright.shape
    assert np.abs(turned.astype(int) - upright).mean() < 3  # the same picture, up to JPEG loss
    Image.open(face).convert("L").save(tmp_path / "g.png")
    gray = read_image(tmp_path / "g.png")
    assert gray.shape == upright.shape and (gray[..., 0] == gray[..., 2]).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[:2, :, 3], rgba[2:, :, 3] = 200, 255, 0  # red, its bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.webp", lossless=True)
    assert read_image(tmp_path / "a.webp")[:2, :, 0].min() == 200 and read_image(tmp_path / "a.webp")[2:].max() == 0
    Image.open(face).save(tmp_path / "f.bmp")
    assert (read_image(tmp_path / "f.bmp") == upright).all()  # BMP is lossless


def test_image_info_is_read_from_the_header(tmp_path):
    """The driver's probe of an image: its upright size, from the header (a file cut after its header passes here
    and fails where it is decoded, in the face actor; a header that cannot be read fails with read_image's
    reason)."""
    from conftest import make_images

    make_images(tmp_path)
    for name, (_, how) in IMAGES.items():
        if how in CUT:
            continue
        h, w = read_image(tmp_path / name).shape[:2]
        info = image_info(tmp_path / name)
        assert (info["width"], info["height"], info["image"], info["header_frames"]) == (w, h, True, 1), name
    with pytest.raises(DecodeError, match="cannot decode the image"):  # broken.jpg: cut inside its header
        image_info(tmp_path / "broken.jpg")
    assert (image_info(tmp_path / "half.jpg")["width"], image_info(tmp_path / "half.jpg")["height"]) == (572, 562)
    with pytest.raises(DecodeError, match="cannot decode the image"):
        read_image(tmp_path / "half.jpg")
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        image_info(tmp_path / "e.jpg")


def test_the_probe_reads_a_large_jpeg_s_header_only_and_other_images_once(tmp_path, monkeypatch):
    """A photo's probe reads its first HEADER_BYTES, not the photo (its pixels are read once, in the face actor);
    a PNG, whose EXIF may follow its pixels, is read whole, once; both sizes upright from their EXIF."""
    from pipeline import images, storage

    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    noise = Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8))
    noise.save(tmp_path / "big.jpg", quality=95, exif=exif)
    noise.save(tmp_path / "big.png", exif=exif)
    sizes = {n: (tmp_path / n).stat().st_size for n in ("big.jpg", "big.png")}
    assert min(sizes.values()) > 2 * images.HEADER_BYTES
    real, read = storage.open_input, []

    class Counted:  # the real file, the bytes each read returned counted
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

    monkeypatch.setattr(storage, "open_input", lambda p: Counted(real(p)))
    for name, expect in (("big.jpg", images.HEADER_BYTES + 1), ("big.png", sizes["big.png"])):
        read.clear()
        info = image_info(tmp_path / name)
        assert (info["width"], info["height"]) == (1500, 2000), name  # stored 2000 x 1500, turned a quarter
        assert sum(read) == expect, (name, read)
    assert read_image(tmp_path / "big.jpg").shape == (2000, 1500, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"), (b"hello, world\n", "not an image file"),
    ((FIXTURES / "images" / "single_face.jpg").read_bytes()[:2000], "cannot decode the image"),
])
def test_bad_images_say_why(tmp_path, data, reason):
    (tmp_path / "x.jpg").write_bytes(data)
    with pytest.raises(DecodeError, match=reason):
        read_image(tmp_path / "x.jpg")


def test_other_image_formats_are_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.gif")
    (tmp_path / "y.png").write_bytes((tmp_path / "x.gif").read_bytes())  # a GIF named .png
    with pytest.raises(DecodeError, match="GIF image; images must be JPEG, PNG, WebP or BMP"):
        read_image(tmp_path / "y.png")


def test_folders_yield_images_beside_videos(tmp_path):
    from conftest import make_images

    make_images(tmp_path / "in" / "images")
    (tmp_path / "in" / "notes.txt").write_text("not media")
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "scan.tiff")  # not one of the four formats: not an input
    (tmp_path / "in" / ".hidden.jpg").write_bytes(b"")
    found = [s.path.rsplit("/", 1)[1] for s in list_videos([tmp_path / "in"])]
    assert found == sorted(IMAGES)


def test_image_checkpoints_upstream_and_ours(tmp_path, monkeypatch, landmark_weights):
    import torch

    import s2d_model as S
    from pipeline.classifier import build_model, resolve_classifier
    from s2d_model.checkpoints import CheckpointError, save_checkpoint

    model = S.create_image_model("s2d_tiny", 7)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("landmark.")}
    monkeypatch.setenv("S2D_WEIGHTS_DIR", str(tmp_path))
    torch.save({"model_state_dict": sd}, tmp_path / "pretrain-AffectNet-7.pth")  # the authors' layout and name
    c = resolve_classifier("s2d-affectnet7-image", None, str(landmark_weights), kind="image")
    assert (c.kind, c.labels, c.config) == ("image", "affectnet7", "s2d_tiny")
    assert isinstance(build_model(c), S.S2DImage)
    with pytest.raises(CheckpointError, match="not an S2D video model checkpoint.*--weights"):
        resolve_classifier("s2d-affectnet7-image", None, str(landmark_weights))  # an image model as --weights
    video = S.create_model("s2d_tiny", 7)
    save_checkpoint(video, tmp_path / "video.pth", config="s2d_tiny", labels="dfew")
    with pytest.raises(CheckpointError, match="not an S2D image model checkpoint.*--image-weights"):
        resolve_classifier(str(tmp_path / "video.pth"), None, str(landmark_weights), kind="image")
    save_checkpoint(model, tmp_path / "ours.pth", config="s2d_tiny", labels="rafdb")
    assert resolve_classifier(str(tmp_path / "ours.pth"), None, str(landmark_weights), kind="image").labels == "rafdb"


def test_missing_image_weights_fail_before_any_work(tmp_path, monkeypatch):
    from pipeline import annotate
    from s2d_model.weights import WeightsNotFound

    monkeypatch.setenv("S2D_WEIGHTS_DIR", str(tmp_path / "weights"))
    (tmp_path / "in").mkdir()
    Image.open(FIXTURES / "images" / "single_face.jpg").save(tmp_path / "in" / "a.jpg")
    with pytest.raises(WeightsNotFound, match="pretrain-AffectNet-7.pth"):
        annotate(tmp_path / "in", out=tmp_path / "out", weights="random-tiny", progress=False)
    assert not (tmp_path / "out").exists()


def _iou(a, b) -> float:
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a, b
    inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def test_a_folder_of_images_and_videos(annotated_run, expectations):
    out, df = annotated_run
    manifest = json.loads((out / "manifest.json").read_text())
    records = {v["video_path"].rsplit("/", 1)[1]: v for v in manifest["videos"]}
    images = {n: v for n, v in records.items() if v["kind"] == "image"}
    assert sorted(images) == sorted(IMAGES) and len(records) == len(IMAGES) + 4
    assert {n: v["status"] for n, v in images.items()} == {
        **{n: "ok" for n in IMAGES}, "mountain.jpg": "no_faces", "broken.jpg": "error", "half.jpg": "error"}
    for name in ("broken.jpg", "half.jpg"):  # one fails the driver's probe, the other the face actor's decode
        assert f"{name}: cannot decode the image" in images[name]["error"]
    assert manifest["image_labels"] == ["Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger"]
    assert "image weights 'random-tiny'" in manifest["warning"] and manifest["image_settings_hash"]

    want = expectations["images"]
    boxes = {name: want[f"images/{source}"]["boxes"] for name, (source, how) in IMAGES.items()  # its fixture's boxes
             if how not in CUT and want[f"images/{source}"]["faces"]}
    for name, expected in boxes.items():
        v = images[name]
        table = pq.read_table(out / v["timeline"])
        meta = table.schema.metadata
        assert json.loads(meta[b"s2d.labels"]) == manifest["image_labels"] and meta[b"s2d.status"] == b"ok"
        rows = table.to_pandas()
        assert rows["track_id"].tolist() == list(range(len(expected))), name  # one row per face, left to right
        assert (rows["segment"] == 0).all() and (rows["start_s"] == 0).all() and (rows["end_s"] == 0).all()
        assert (rows["n_face_frames"] == 1).all() and (rows["model"] == "random-tiny").all()
        probs = rows[[f"p_{c.lower()}" for c in manifest["image_labels"]]].to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-4)
        for got, box in zip(rows["bbox"], expected):  # EXIF applied: the rotated copy's box is the upright one
            assert _iou(got, box) > 0.75, (name, got, box)
        assert v["n_tracks"] == v["n_segments"] == len(expected)
        assert set(df[df["video_id"] == v["video_id"]]["track_id"]) == set(range(len(expected)))

    from pipeline import read_faces

    cached = read_faces(out / "cache")
    for name in boxes:
        faces = cached[cached["video_id"] == images[name]["video_id"]]
        assert len(faces) == len(boxes[name]) and (faces["frame_index"] == 0).all() and (faces["time_s"] == 0).all()


def test_a_rerun_skips_images_and_videos_done(annotated_run, tmp_path, detector_weights, landmark_weights):
    import shutil

    from typer.testing import CliRunner

    from cli import app

    out, _ = annotated_run
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.copytree(out, tmp_path / "out")  # its timelines and cache; the shared run stays as it is
    (tmp_path / "out" / "report.html").unlink()
    res = CliRunner().invoke(app, ["annotate", str(out.parent / "inputs"), "--out", str(tmp_path / "out"),
                                   "--weights", "random-tiny", "--image-weights", "random-tiny", "--no-report",
                                   "--detector-weights", str(detector_weights),
                                   "--landmark-weights", str(landmark_weights)])
    assert res.exit_code == 0, res.output
    assert "report:" not in res.output and not (tmp_path / "out" / "report.html").exists()
    second = json.loads((tmp_path / "out" / "manifest.json").read_text())
    failed = {v["video_path"] for v in manifest["videos"] if v["status"] == "error"}  # retried, and fail again
    assert second["skipped"] == len(manifest["videos"]) - len(failed)
    assert sorted(line.split(": ")[1] for line in res.output.splitlines() if line.startswith("failed: ")) == \
        sorted(failed)
    assert {v["video_path"]: v["status"] for v in second["videos"]} == \
        {v["video_path"]: v["status"] for v in manifest["videos"]}


def test_the_face_stage_and_the_summary_take_images(annotated_run, tmp_path, detector_weights, landmark_weights):
    from typer.testing import CliRunner

    from cli import app
    from pipeline import faces

    out, _ = annotated_run
    images = out.parent / "inputs" / "images"
    rows = faces([images / "multi_face.jpg", images / "mountain.jpg"], cache=tmp_path / "cache", progress=False,
                 detector_weights=str(detector_weights), landmark_weights=str(landmark_weights))
    assert [(v["status"], v["n_faces"], v["frame_count"]) for v in rows.attrs["videos"]] == \
        [("no_faces", 0, 1), ("ok", 5, 1)]  # in path order: mountain.jpg, multi_face.jpg
    assert sorted(rows["track_id"]) == list(range(5)) and (rows["frame_index"] == 0).all()

    res = CliRunner().invoke(app, ["timeline", str(out), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    # a table per label set: the images' (the image model's AffectNet-7) and the videos' (DFEW)
    assert "label set: Neutral, Happiness, Sadness" in res.output and "label set: Happy, Sad, Neutral" in res.output
    assert "multi_face.jpg" in res.output and "single_face.mp4" in res.output
    assert (tmp_path / "p.png").stat().st_size > 0
