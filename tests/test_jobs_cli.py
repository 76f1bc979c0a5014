"""`s2d prepare` -> `s2d train dynamic` -> `s2d evaluate` through the CLI, on real Ray and the fixture videos.

The chain a user follows to train on their own footage: labelled raw videos -> a DFEW-style clip dataset of
aligned faces -> a tiny fine-tuned model -> its metrics -> the same checkpoint as `s2d annotate` weights.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli import app
from media import write_video
from pipeline.align import template
from pipeline.decode import get_decoder

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"s2d {' '.join(map(str, args))} failed:\n{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(scope="module")
def weights_env(detector_weights, landmark_weights):
    mp = pytest.MonkeyPatch()
    mp.setenv("S2D_DETECTOR_WEIGHTS", str(detector_weights))
    mp.setenv("S2D_LANDMARK_WEIGHTS", str(landmark_weights))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def videos(tmp_path_factory, fixtures_dir):
    """Two people-videos per class (the fixture and its mirror image as 'Sad'), a test video, and bad inputs."""
    root = tmp_path_factory.mktemp("raw")
    single = fixtures_dir / "videos" / "single_face.mp4"
    shutil.copy(single, root / "a.mp4")
    shutil.copy(single, root / "b.mp4")
    got = get_decoder("pyav").read_frames(single, np.arange(0, 72, 3))
    mirrored = [np.ascontiguousarray(f[:, ::-1]) for f in got["frames"]]
    write_video(root / "c.mp4", mirrored, fps=10)
    write_video(root / "d.mp4", mirrored[::2], fps=10)  # a shorter track: 12 frames, so 16 slots repeat some
    shutil.copy(fixtures_dir / "videos" / "face_noface.mov", root / "e.mov")
    shutil.copy(fixtures_dir / "videos" / "no_face.mp4", root / "none.mp4")
    (root / "junk.mp4").write_bytes(b"not a video at all")
    (root / "videos.csv").write_text(
        "path,label,split\na.mp4,Happy,train\nb.mp4,Happy,train\nc.mp4,Sad,train\nd.mp4,Sad,train\n"
        "e.mov,Happy,test\nnone.mp4,Sad,train\njunk.mp4,Happy,train\n")
    return root


@pytest.fixture(scope="module")
def prepared(ray_local, weights_env, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "mine"
    result = invoke("prepare", videos / "videos.csv", "--out", out, "--labels", "dfew")
    return out, result.output


def test_prepare_writes_aligned_clips_and_csvs(prepared, detector_weights):
    out, output = prepared
    manifest = json.loads((out / "prepare.json").read_text())
    status = {Path(v["path"]).name: v["status"] for v in manifest["videos"]}
    assert status == {"a.mp4": "ok", "b.mp4": "ok", "c.mp4": "ok", "d.mp4": "ok", "e.mov": "ok",
                      "none.mp4": "no_faces", "junk.mp4": "error"}
    assert "left out: " in output and "junk.mp4" in output and "clips: 5 of 7 videos" in output
    train = (out / "train.csv").read_text().splitlines()
    test = (out / "test.csv").read_text().splitlines()
    assert train[0] == test[0] == "path,label"
    assert sorted(r.split(",")[1] for r in train[1:]) == ["Happy", "Happy", "Sad", "Sad"]
    assert len(test) == 2 and test[1].endswith(",Happy") and not (out / "val.csv").exists()
    assert json.loads((out / "dataset.json").read_text()) == {"crop": "template:0.25@224"} == \
        {"crop": manifest["crop"]}  # the default crop, recorded for training

    from pipeline.detector import FaceDetector

    detector = FaceDetector(detector_weights, long_side=224)
    eyes = template(224)[:2]  # where alignment puts the eyes
    for row in train[1:] + test[1:]:
        frames = sorted((out / row.split(",")[0]).glob("*.jpg"))
        assert [f.name for f in frames] == [f"{i:05d}.jpg" for i in range(1, 17)]
        assert json.loads((frames[0].parent / "clip.json").read_text())["crop"] == "template:0.25@224"
        clip = np.stack([np.asarray(Image.open(f)) for f in frames])  # [16, 224, 224, 3]
        assert clip.shape == (16, 224, 224, 3)
        for found in detector(clip[[0, 15]]):  # the aligned face is found again, eyes where the template puts them
            best = int(np.argmax(found["score"]))
            kps = found["kps5"][best].reshape(5, 2)
            assert np.abs(kps[:2] - eyes).max() < 12, (row, kps[:2], eyes)
    short = next(v for v in manifest["videos"] if v["path"].endswith("d.mp4"))
    assert 8 <= short["track_faces"] < 16 and len(short["frame_index"]) == 16  # 1.2 s at 8 fps: frames repeat
    assert len(set(short["frame_index"])) == short["track_faces"] and short["frame_index"] == sorted(short["frame_index"])


def test_prepare_rerun_keeps_clips_and_reuses_the_face_cache(prepared, videos):
    out, _ = prepared
    stale = next((out / "clips").glob("a-*"))  # as if cut by a face stage with other settings
    info = json.loads((stale / "clip.json").read_text())
    (stale / "clip.json").write_text(json.dumps({**info, "faces_settings_hash": "other"}))
    stamp = {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.jpg") if p.parent != stale}
    result = invoke("prepare", videos / "videos.csv", "--out", out, "--labels", "dfew")
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["clips_kept"] == 4 and manifest["clips_written"] == 1
    assert manifest["faces_from_cache"] == 6  # all but the failed one, which is retried
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.jpg") if p.parent != stale} == stamp
    assert json.loads((stale / "clip.json").read_text()) == info
    assert "(1 written, 4 kept)" in result.output


def test_prepare_rejects_a_bad_label_before_any_work(tmp_path, weights_env, videos):
    csv = tmp_path / "videos.csv"
    csv.write_text(f"path,label\n{videos / 'a.mp4'},Happy\n{videos / 'b.mp4'},Joyful\n")
    result = runner.invoke(app, ["prepare", str(csv), "--out", str(tmp_path / "out"), "--labels", "dfew"])
    assert result.exit_code == 1
    assert f"{csv}:3: unknown label 'Joyful'" in result.output
    assert not (tmp_path / "out").exists()


def test_train_evaluate_and_annotate_weights_from_the_prepared_dataset(prepared, tmp_path, landmark_weights):
    out, _ = prepared
    run = tmp_path / "run"
    result = invoke("train", "dynamic", "--data", out, "--format", "csv", "--labels", "dfew", "--model", "s2d_tiny",
                    "--epochs", "2", "--batch-size", "2", "--workers", "2", "--frame-order", "lexicographic",
                    "--out", run)  # on 2 CPUs this hung
    assert "WARNING: no --init checkpoint" in result.output and "best checkpoint: " in result.output
    assert "frame order lexicographic, crop template:0.25@224 -> " in result.output
    meta = torch.load(run / "best.pth", weights_only=True)["s2d"]
    assert meta["crop"] == "template:0.25@224" and meta["frame_order"] == "lexicographic"  # what it was trained on
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(np.isfinite(r["train_loss"]) for r in rows)
    assert (run / "best.pth").is_file() and (run / "metrics.csv").is_file()

    result = invoke("evaluate", "--data", out, "--format", "csv", "--labels", "dfew", "--checkpoint",
                    run / "best.pth", "--out", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 1 and metrics["war"] in (0.0, 1.0) and "recall per class: Happy " in result.output and "Sad -" in result.output
    assert "frame order: lexicographic (the checkpoint's training order, recorded in it)" in result.output
    assert metrics["frame_order"] == "lexicographic" and metrics["frame_order_why"] == \
        "the checkpoint's training order, recorded in it"
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 0

    from pipeline.classifier import build_model, resolve_classifier

    classifier = resolve_classifier(str(run / "best.pth"), None, str(landmark_weights))  # as `s2d annotate` does
    assert classifier.labels == "dfew"
    assert build_model(classifier).num_classes == 7


@pytest.mark.parametrize("args", [
    ("prepare", "{videos}/videos.csv", "--out", "{tmp}/out", "--crop", "blob@224"),
    ("train", "dynamic", "--data", "{videos}", "--format", "csv", "--out", "{tmp}/out", "--frame-order", "blob@224"),
    ("evaluate", "--data", "{videos}", "--format", "csv", "--checkpoint", "s2d-dfew", "--out", "{tmp}/out",
     "--frame-order", "blob@224"),
], ids=["prepare-crop", "train-frame-order", "evaluate-frame-order"])
def test_an_unknown_crop_or_frame_order_fails_before_any_work(tmp_path, videos, args):
    result = runner.invoke(app, [a.format(videos=videos, tmp=tmp_path) for a in args])
    if "--frame-order" in args:  # a choice: Typer's usage error, exit 2
        assert result.exit_code == 2 and "Invalid value for '--frame-order'" in result.output, result.output
    else:
        assert result.exit_code == 1
        assert len(result.output.splitlines()) == 1 and result.output.startswith("error: unknown ")
    assert "'blob@224'" in result.output
    assert not (tmp_path / "out").exists()


def test_prepare_with_another_crop_redoes_the_clips(prepared, videos):
    out, _ = prepared
    clip = next((out / "clips").glob("a-*"))
    before = np.asarray(Image.open(clip / "00001.jpg"), np.float32)
    invoke("prepare", videos / "videos.csv", "--out", out, "--labels", "dfew", "--crop", "box:1.0@224")
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["clips_kept"] == 0 and manifest["clips_written"] == 5  # none reused: they had another crop
    assert json.loads((out / "dataset.json").read_text()) == {"crop": "box:1@224"}
    assert json.loads((clip / "clip.json").read_text())["crop"] == "box:1@224"
    after = np.asarray(Image.open(clip / "00001.jpg"), np.float32)
    assert after.shape == before.shape == (224, 224, 3) and np.abs(after - before).mean() > 10
