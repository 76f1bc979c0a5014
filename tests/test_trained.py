"""What a face shows, read by a trained net: face-api's expression net through the real chain on the real fixtures,
each model's crop and frame order, and the mistakes (crop geometry, frame order, colour order) each test catches."""
from __future__ import annotations

from types import SimpleNamespace

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.crops import Crop, frame_permutation, parse_crop
from pipeline.images import read_image

MANIFEST = "weights/face-api/face_expression_model-weights_manifest.json"


@pytest.fixture(scope="module")
def expression(fixtures_dir):
    from pipeline.classifier import resolve_classifier

    return resolve_classifier(str(fixtures_dir / MANIFEST))


@pytest.fixture(scope="module")
def detector(detector_weights):
    from pipeline.detector import FaceDetector

    return FaceDetector(detector_weights, long_side=640)


# ----------------------------------------------------------------------------------------- crops (no model)
@pytest.mark.parametrize("text, want", [("template:0@224", Crop("template", 0.0, 224)),
                                        ("box:1.1@112", Crop("box", 1.1, 112)), ("mtcnn", Crop("mtcnn", 1.0, 224)),
                                        ("box", Crop("box", 1.0, 224)), ("template", Crop("template", 0.25, 224))])
def test_a_crop_spec_reads_and_writes_back(text, want):
    assert parse_crop(text) == want and parse_crop(str(want)) == want


@pytest.mark.parametrize("bad", ["boxes:1", "box:-1", "box:0", "mtcnn:1.2", "template@8", "box:1@x", ""])
def test_an_unknown_crop_is_refused_in_one_line_naming_it(bad):
    with pytest.raises(ValueError, match=f"unknown crop '{bad}': use template") as e:
        parse_crop(bad)
    assert "\n" not in str(e.value)


def test_each_geometry_puts_the_face_where_it_says():
    """A synthetic face (box and key points known) through each geometry: the template's points land on the
    template; the box, squared and scaled, fills the crop; mtcnn levels the eyes and squashes its box to the square."""
    from pipeline.align import template

    frame = np.zeros((400, 600, 3), np.uint8)
    kps = np.array([[250, 180], [330, 200], [290, 240], [260, 280], [320, 290]], np.float64)  # eyes tilted 14 deg
    box = np.array([220, 120, 360, 320], np.float64)  # 140 x 200
    warp = lambda c, p: (np.c_[p, np.ones(len(p))] @ c.matrix(box, kps).T)  # noqa: E731

    c = parse_crop("template:0.1@112")
    np.testing.assert_allclose(warp(c, kps), template(112, 0.1), atol=3)  # least squares: close, not exact
    c = parse_crop("box:1.25@100")  # side 1.25 x 200 = 250 px -> 100 px, centred on the box centre
    np.testing.assert_allclose(warp(c, box.reshape(2, 2)), [[50 - 28, 50 - 40], [50 + 28, 50 + 40]], atol=1e-6)
    c = parse_crop("mtcnn@224")
    eyes = warp(c, kps[:2])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6  # levelled
    centre = warp(c, np.array([[290, 220]]))[0]
    np.testing.assert_allclose(centre, [112, 112], atol=1e-6)
    d = np.hypot(*(kps[1] - kps[0]))
    assert eyes[1, 0] - eyes[0, 0] == pytest.approx(d * 224 / (140 * 0.7))  # x scaled by the shrunk box's width
    assert c.cut(frame, box, kps).shape == (224, 224, 3)


@pytest.mark.parametrize("spec", ["template:0.25@224", "box:1.1@112", "mtcnn@224"])
def test_a_crop_keeps_the_colours_and_the_sides_of_the_face(spec):
    """RGB stays RGB and the image's left stays left: a red left half, a blue right half (the face level)."""
    frame = np.zeros((400, 600, 3), np.uint8)
    frame[:, :290] = (200, 10, 0)
    frame[:, 290:] = (0, 10, 200)
    kps = np.array([[250, 200], [330, 200], [290, 240], [260, 280], [320, 280]], np.float64)
    crop = parse_crop(spec).cut(frame, np.array([220, 120, 360, 320]), kps)
    mid = crop.shape[0] // 2
    assert crop[mid, 2].tolist() == [200, 10, 0] and crop[mid, -3].tolist() == [0, 10, 200]


def test_the_lexicographic_order_is_the_authors_reader_s():
    names = [f"{i}.jpg" for i in range(1, 17)]
    assert [names[i] for i in frame_permutation("lexicographic")] == sorted(names)
    assert (frame_permutation("lexicographic") + 1).tolist() == [1, 10, 11, 12, 13, 14, 15, 16, 2, 3, 4, 5, 6, 7, 8, 9]
    assert frame_permutation("time").tolist() == list(range(16))
    with pytest.raises(ValueError, match="unknown frame order 'reverse'"):
        frame_permutation("reverse")


# ------------------------------------------------------------------------------ each model's crop and order
def test_each_checkpoint_names_its_crop_and_order_and_the_user_can_override(expression, landmark_weights):
    from pipeline.classifier import OUR_CROP, resolve_classifier
    from s2d_model.weights import KNOWN

    assert str(expression.crop) == "box:1.1@112" and expression.per_frame and expression.labels == "dfew"
    assert KNOWN["s2d-dfew"].frame_order == "lexicographic" and KNOWN["s2d-dfew"].crop == "template:0@224"
    assert KNOWN["s2d-mafw"].crop == "mtcnn@224" and KNOWN["s2d-ferv39k"].frame_order == "time"
    tiny = resolve_classifier("random-tiny", None, str(landmark_weights))
    assert (tiny.crop, tiny.frame_order) == (OUR_CROP, "time")
    mine = resolve_classifier("random-tiny", None, str(landmark_weights), crop="box:1.3@160",
                              frame_order="lexicographic")
    assert (str(mine.crop), mine.frame_order) == ("box:1.3@160", "lexicographic")
    assert mine.input == {"crop": "box:1.3@160", "frame_order": "lexicographic",
                          "precision": {"cpu": "fp32", "cuda": "bf16"}}  # (auto: a tiny model stays fp32 on a CPU)


def test_the_crop_and_order_are_in_the_settings_hash(expression, landmark_weights):
    from pipeline.annotate_run import labelling
    from pipeline.classifier import resolve_classifier
    from pipeline.settings import AnnotateSettings, FaceSettings

    s, plan = AnnotateSettings(), SimpleNamespace(key="faces", settings=FaceSettings())
    keys = {labelling(resolve_classifier("random-tiny", None, str(landmark_weights), crop=c, frame_order=o),
                      "random-tiny", plan, s).key
            for c, o in [(None, None), ("box:1.0@224", None), (None, "lexicographic")]}
    assert len(keys) == 3


def test_the_s2d_actor_feeds_the_model_its_training_frame_order(landmark_weights):
    """lexicographic: the clip's frames go to S2D as 1, 10-16, 2-9 (the same as a time-order actor fed that
    permutation by hand); time order gives other probabilities."""
    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker

    def worker(order):
        return S2DWorker(resolve_classifier("random-tiny", None, str(landmark_weights), frame_order=order), threads=1)

    clip = np.random.default_rng(1).integers(0, 256, (1, 16, 224, 224, 3), dtype=np.uint8)
    lex, time = worker("lexicographic").probabilities(clip), worker("time")
    np.testing.assert_allclose(lex, time.probabilities(clip[:, frame_permutation("lexicographic")]), atol=1e-6)
    assert np.abs(lex - time.probabilities(clip)).max() > 1e-4


def test_face_api_s_net_reads_a_clip_s_distinct_face_frames_and_averages_them(expression, fixtures_dir):
    """A clip's filled slots repeat a face frame: each distinct frame counts once; DFEW's class order."""
    from pipeline.classifier import FACEAPI_TO_DFEW
    from pipeline.s2d_actor import S2DWorker
    from s2d_model.faceapi import expression_probs, load_expression_net

    faces = [np.asarray(read_image(fixtures_dir / "weights/face-api/reference" / n)) for n in
             ("0-f15-hao-ph.png", "0-f1-su-ph.png")]
    crops = np.stack([cv2.resize(f, (112, 112)) for f in faces])
    clip = crops[[0] * 15 + [1]][None]  # a happy frame filled into 15 slots, a surprised one
    got = S2DWorker(expression, threads=1).probabilities(clip, [np.array([0, 15])])[0]
    own = expression_probs(load_expression_net(fixtures_dir / MANIFEST), crops).mean(0)[list(FACEAPI_TO_DFEW)]
    np.testing.assert_allclose(got, own, atol=1e-6)
    assert got.sum() == pytest.approx(1, abs=1e-5)


def test_the_registry_crop_agrees_with_face_api_on_its_own_faces(expression, detector, fixtures_dir):
    """face-api's own outputs for its own crops of 8 fixture faces (reference.json): the chain's crop of the same
    faces (``box:1.1@112``) gives the same top class for all 8 and probabilities within 0.035 on average. The crop
    the chain cut before per-model crops (``template:0.25@224``) agrees on 5 (mean 0.126): this test fails on it."""
    from s2d_model.faceapi import expression_probs, load_expression_net

    net = load_expression_net(fixtures_dir / MANIFEST)
    ref = json.loads((fixtures_dir / "weights/face-api/reference.json").read_text())
    diffs, agree = [], 0
    for c in ref["crops"]:
        if not c["source"].startswith("images/"):
            continue
        frame = read_image(fixtures_dir / c["source"])
        d = detector(frame[None])[0]
        x1, y1, x2, y2 = c["crop_box_xyxy_in_source"]
        i = int(np.argmin(np.abs(d["bbox"][:, [0, 2]].mean(1) - (x1 + x2) / 2)
                          + np.abs(d["bbox"][:, [1, 3]].mean(1) - (y1 + y2) / 2)))
        p = expression_probs(net, expression.crop.cut(frame, d["bbox"][i], d["kps5"][i])[None])[0]
        diffs.append(np.abs(p - np.asarray(c["expressions"])).mean())
        agree += int(p.argmax() == np.argmax(c["expressions"]))
    assert len(diffs) == 7 and agree == 7 and np.mean(diffs) < 0.035, (agree, np.mean(diffs))


# ------------------------------------------------------------------------------------- the real chain
@pytest.fixture(scope="module")
def labelled_run(ray_local, fixtures_dir, detector_weights, landmark_weights, tmp_path_factory):
    """`annotate` with face-api's net for videos and images: the smiling video (0.5 s segments, so its neutral
    start is a segment of its own), two labelled stills and the five smiling faces."""
    from pipeline.annotate_run import run_annotate
    from pipeline.settings import AnnotateSettings, FaceSettings

    root = tmp_path_factory.mktemp("inputs")
    shutil.copy(fixtures_dir / "videos/single_face.mp4", root)
    for name in ("0-f15-hao-ph.jpg", "0-f1-su-ph.jpg", "multi_face.jpg"):
        shutil.copy(fixtures_dir / "images" / name, root)
    out = tmp_path_factory.mktemp("out")
    weights = str(fixtures_dir / MANIFEST)
    result = run_annotate([root], out, None, FaceSettings(detector_weights=str(detector_weights),
                                                          landmark_weights=str(landmark_weights)),
                          AnnotateSettings(weights=weights, image_weights=weights, segment_s=0.5, stride_s=0.5,
                                           min_face_frames=4), progress=False)
    return result, {Path(v["video_path"]).name: v for v in result.videos}


def test_the_smile_reads_neutral_then_happy_in_one_track(labelled_run):
    result, videos = labelled_run
    assert result.warning is None
    tl = pq.read_table(videos["single_face.mp4"]["timeline"]).to_pandas().sort_values("start_s")
    assert tl.track_id.nunique() == 1
    assert tl.label.iloc[0] == "Neutral", tl[["start_s", "label", "confidence"]]  # 0-0.5 s: before the smile
    assert (tl[tl.start_s >= 1.0].label == "Happy").all(), tl[["start_s", "label", "confidence"]]
    meta = pq.read_schema(videos["single_face.mp4"]["timeline"]).metadata
    assert meta[b"s2d.crop"] == b"box:1.1@112" and meta[b"s2d.frame_order"] == b"time"


def test_the_labelled_stills_read_right_and_every_group_face_is_labelled(labelled_run):
    _, videos = labelled_run
    label = lambda n: pq.read_table(videos[n]["timeline"]).column("label").to_pylist()  # noqa: E731
    assert label("0-f15-hao-ph.jpg") == ["Happy"]
    assert label("0-f1-su-ph.jpg") == ["Surprise"]
    group = label("multi_face.jpg")
    assert len(group) == 5 and group.count("Happy") >= 4, group  # five smiling young people


def test_the_chain_s_probabilities_are_the_net_s_on_the_faces_it_cut(labelled_run, expression, fixtures_dir):
    """An independent path to the same numbers: the video decoded here with PyAV (RGB), each segment's frames as
    the segment rule picks them from the cache's faces, cut and classified here, the distinct frames averaged: the
    timeline's probabilities within 0.1% of each (relative: the smile's are saturated, 0.9999999 against 1e-7,
    where an absolute tolerance would let BGR frames through). A colour-order, frame or crop mix-up shows here."""
    import av
    import pandas as pd

    from pipeline.classifier import FACEAPI_TO_DFEW
    from oracles import plan_segments
    from s2d_model.faceapi import expression_probs, load_expression_net
    from s2d_model.labels import labels

    result, videos = labelled_run
    v = videos["single_face.mp4"]
    faces = pd.read_parquet(next(Path(result.cache_dir, "faces").glob(f"*/{v['video_id']}.faces.parquet")))
    with av.open(str(fixtures_dir / "videos/single_face.mp4")) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    net = load_expression_net(fixtures_dir / MANIFEST)
    tl = pq.read_table(v["timeline"]).to_pandas()
    segments = plan_segments(faces, 2.4, 0.5, 0.5, min_face_frames=4)
    assert [(s.track_id, s.segment) for s in segments] == list(zip(tl.track_id, tl.segment))
    for seg, (_, row) in zip(segments, tl.iterrows()):
        _, first = np.unique(seg.frame_index, return_index=True)
        crops = np.stack([expression.crop.cut(frames[seg.frame_index[j]], seg.bbox[j], seg.kps5[j]) for j in first])
        want = expression_probs(net, crops).mean(0)[list(FACEAPI_TO_DFEW)]
        got = row[[f"p_{c.lower()}" for c in labels("dfew")]].to_numpy(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-9)


def test_the_manifest_and_report_show_the_crop_and_real_labels(labelled_run):
    result, _ = labelled_run
    m = json.loads((Path(result.out_dir) / "manifest.json").read_text())
    assert m["input"] == {"crop": "box:1.1@112", "frame_order": "time", "precision": {"cpu": "fp32", "cuda": "fp32"}}
    assert m["warning"] is None
    html = (Path(result.out_dir) / "report.html").read_text()
    overview = html[html.index('id="overview"'):html.index('id="videos"')]
    assert "single_face.mp4" in overview and "Neutral 0.0-" in overview and "Happy" in overview
    assert html.index('id="overview"') < html.index('id="run"') and "WARNING" not in html
    assert "{&quot;" not in html and '{"' not in html  # no raw JSON in the cells


def test_a_broken_weights_manifest_fails_before_any_work(tmp_path, fixtures_dir, detector_weights, landmark_weights):
    from pipeline.annotate_run import run_annotate
    from pipeline.settings import AnnotateSettings, FaceSettings
    from s2d_model.faceapi import WeightsFileError

    for name in ("face_expression_model-weights_manifest.json", "face_expression_model.bin"):
        shutil.copy(fixtures_dir / "weights/face-api" / name, tmp_path)
    data = (tmp_path / "face_expression_model.bin").read_bytes()
    (tmp_path / "face_expression_model.bin").write_bytes(data[:-100])
    out = tmp_path / "out"
    with pytest.raises(WeightsFileError, match="face_expression_model.bin"):
        run_annotate([fixtures_dir / "videos/single_face.mp4"], out, None,
                     FaceSettings(detector_weights=str(detector_weights), landmark_weights=str(landmark_weights)),
                     AnnotateSettings(weights=str(tmp_path / "face_expression_model-weights_manifest.json")),
                     progress=False)
    assert not out.exists()


@pytest.mark.parametrize("option", [["--crop", "boxes:1"], ["--image-crop", "box:-2"], ["--frame-order", "reverse"]])
def test_an_unknown_crop_or_frame_order_fails_when_the_command_is_parsed(option, tmp_path, fixtures_dir):
    import subprocess
    import sys

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "cli", "annotate", str(fixtures_dir / "videos/single_face.mp4"),
                        "--out", str(out), "--weights", "faceapi-expression", *option], capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and option[1] in r.stderr and not out.exists(), r.stderr
